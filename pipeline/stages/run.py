"""`infmask run BENCHMARK`: every stage in order (download, preprocess, pretrain, probe, report), skipping what
is done. Benchmarks whose table needs several data variants (Trifeatures: unbiased runs for redundancy and
uniqueness, biased runs for synergy) declare them as `run_variants` in their config file."""
from __future__ import annotations

import time

from ..config import benchmark_spec, build_config, methods_of
from ..errors import UsageError
from ..store import ResultsStore
from ..workspace import Workspace


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def run_cli(args) -> int:
    spec = benchmark_spec(args.benchmark)
    methods = _split(args.methods) or methods_of(spec)
    try:
        seeds = [int(s) for s in _split(args.seeds)]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got '{args.seeds}'") from None
    variants = spec.get("run_variants") or [{}]
    # validate everything before any work starts (and before any file is written)
    # seed-major order: an interrupted run leaves complete tables with fewer seeds, not missing columns
    configs = [build_config(args.benchmark, m, args.preset, seed=s, overrides={**v, **_ov(args.overrides)})
               for s in seeds for v in variants for m in methods]
    # an override of a variant's key (e.g. data.biased=false) makes the variants one run, trained once
    configs = list({c.run_id: c for c in configs}.values())
    if getattr(args, "print_config", False):
        return _print_configs(args, methods, variants, seeds)
    ws = Workspace.open(args.root)
    ResultsStore(ws.db_path)  # a damaged store stops the run here, not after the data is prepared
    shape = [f"{len(methods)} method{'s' * (len(methods) != 1)}"]
    n_variants = len(configs) // max(1, len(methods) * len(seeds))
    shape += [f"{n_variants} data variants"] if n_variants > 1 else []
    shape += [f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"]
    runs = f"{len(configs)} run{'s' * (len(configs) != 1)}"
    print(f"infmask run {args.benchmark}: {runs} ({' × '.join(shape)}), preset {args.preset}, "
          f"workspace {ws.root}; each run is pretrained, then probed; the table comes last", flush=True)
    from .data_stages import ensure_data

    t0 = time.time()
    if not args.as_job:  # the jobs it starts find the data ready
        for cfg in {c.data.__repr__(): c for c in configs}.values():
            ensure_data(cfg, ws)
    jobs = _start_jobs(args) if args.jobs > 1 else []
    if jobs:  # SIGTERM outside training (which saves and raises on its own) still stops the jobs, via finally
        import signal

        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        held = _walk(configs, ws, args.force)
        if held is None or args.as_job:  # a DDP worker rank; or a job, whose starter finishes what others hold
            return 0
        _finish_held(held, ws)
        for job in jobs:
            if job.wait():
                print(f"job {job.number} stopped with exit code {job.returncode}; its runs were finished here "
                      "(see its lines above)", flush=True)
    finally:
        for job in jobs:  # only when this command stops early: they save a checkpoint and exit on SIGTERM
            job.stop()
        for job in jobs:
            job.wait()  # their last lines (e.g. where the state was saved) reach this terminal
    print(f"all {len(configs)} runs done in {time.time() - t0:.0f} s")
    table = spec.get("table")
    if table:
        from .report import report_table

        report_table(ws, table)
    # one line on what this preset's table can and cannot show (e.g. the demo's: redundancy yes, synergy no)
    if note := (spec.get("preset_notes") or {}).get(args.preset):
        print(note, flush=True)
    from ..tracking import sync_hint

    if hint := sync_hint(ws):
        print(hint)
    return 0


def _pretrain_and_probe(cfg, ws, force: bool) -> str:
    """'done', 'held' (another process holds the run: several `infmask run` share a grid through the run locks)
    or 'worker' (a DDP rank that is not rank 0)."""
    from ..run_lock import RunInProgress
    from .pretrain import pretrain
    from .probe import probe

    try:
        res = pretrain(cfg, ws, force=force)
        if res.status == "worker":
            return "worker"
        probe(res.run_dir / "checkpoints" / f"{cfg.probe.checkpoint}.ckpt", ws, force=force or not res.skipped)
    except RunInProgress:
        return "held"
    return "done"


def _walk(configs, ws, force: bool):
    """Each run in turn; returns those another process held (None in a DDP rank other than 0)."""
    held = []
    for i, cfg in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {cfg.run_id} ({'biased' if cfg.data.biased else 'unbiased'}"
              f" data, preset {cfg.preset})", flush=True)
        status = _pretrain_and_probe(cfg, ws, force)
        if status == "worker":
            return None
        if status == "held":
            print(f"{cfg.run_id}: another process holds it; moving on, back to it at the end", flush=True)
            held.append(cfg)
    return held


def _finish_held(held: list, ws) -> None:
    """Wait for each run another process held, then finish it: skipped when that process made it, resumed when
    it died mid-run. Not forced: the process that held it has just made it."""
    from ..run_lock import wait_until_free

    while held:
        cfg = held.pop(0)
        wait_until_free(ws, cfg.run_id)
        if _pretrain_and_probe(cfg, ws, False) == "held":  # taken again meanwhile
            held.append(cfg)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


class _Job:
    """One more `infmask run` over the same grid, its lines prefixed on this terminal."""

    def __init__(self, number: int, argv: list[str]):
        import subprocess
        import sys
        import threading

        self.number = number
        self.proc = subprocess.Popen([sys.executable, "-m", "infmask", *argv], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()

    def _echo(self) -> None:
        for line in self.proc.stdout:
            print(f"job {self.number}: {line}", end="", flush=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()

    def wait(self) -> int:
        self.returncode = self.proc.wait()
        self.reader.join()
        return self.returncode


def _start_jobs(args) -> list:
    """`--jobs N` starts N-1 more `infmask run` over the same grid, each with its own threads: on a small CPU two
    single-threaded runs side by side get through more steps than one run with two threads. They share the work
    through the run locks, like W&B agents share a sweep; this command finishes whatever they leave."""
    argv = ["run", args.benchmark, "--preset", args.preset, "--seeds", args.seeds or "", "--root", str(args.root),
            "--threads", str(args.threads), "--as-job"]
    argv += ["--methods", args.methods] if args.methods else []
    argv += list(args.overrides or [])
    print(f"{args.jobs} runs at a time, {args.threads} thread{'s' * (args.threads != 1)} each", flush=True)
    return [_Job(k, argv) for k in range(2, args.jobs + 1)]


def _print_configs(args, methods, variants, seeds) -> int:
    """One YAML document per (method, data variant), at the first seed (the others differ only in `seed`)."""
    from ..config_sources import resolved_yaml
    from .show_config import header

    docs = []
    for v in variants:
        for m in methods:
            what = header("run", args, [args.benchmark, "--preset", args.preset, *args.overrides])
            what += f": method {m}" + "".join(f", {k}={val}" for k, val in v.items())
            what += f", seeds {','.join(map(str, seeds))} (seed {seeds[0]} shown)" if seeds else ""
            docs.append(resolved_yaml(args.benchmark, m, args.preset, seed=seeds[0] if seeds else None,
                                      overrides=_ov(args.overrides), variant=v, header=what))
    print("---\n".join(docs), end="")
    return 0


def _ov(overrides) -> dict:
    from ..config import parse_overrides

    return parse_overrides(list(overrides or []))
