"""`infmask` (also `python -m infmask`): parse, resolve the config, call one stage function.

Exit codes: 0 success; 1 a run failed (e.g. non-finite loss, crashed trial); 2 bad input (unknown benchmark,
key, value, missing or corrupt file: the message names the problem and the valid choices); 3 nothing to report
(empty results store); 128+N killed by signal N after saving state (SIGTERM: 143).
"""
from __future__ import annotations

import argparse
import os
import sys

from infmask.models.method_registry import METHOD_NAMES

from .errors import EXIT_USAGE, InfmaskError, UsageError
from .stages import STAGE_FUNCTIONS, run_stage
from .workspace import resolve_root

STAGES = tuple(STAGE_FUNCTIONS)   # the one table of stages, in the order `--help` lists them
METHOD_HELP = " | ".join(METHOD_NAMES)     # from the method registry, which imports no torch

EPILOG = """stages, in order: download -> preprocess -> pretrain -> probe -> report (each runnable alone and idempotent).
`run` does them all; `trial` is the unit a W&B sweep agent runs (pretrain + probe of one config; `infmask
--benchmark=B ...` without a stage is a trial too, as W&B's default sweep command starts it); `sweep` runs a
sweep file here with W&B's own sweep engine; `bench` times the training step; `config` prints the resolved config
with each key's source (also `--print-config` on pretrain, run and trial).
Config overrides: key=value or --key=value (e.g. model.mask_ratio=0.5 --model.temperature=0.2).
Workspace: --root, or $INFMASK_ROOT, default ./workspace. W&B: offline unless WANDB_MODE says otherwise."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, like every other bad input
        self.exit(EXIT_USAGE, f"infmask: error: {message}\n")


class _Version(argparse.Action):
    """--version: the package version and, in a git checkout, `git describe` (the code_version runs record)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .tracking import code_version

        print(f"infmask {code_version()}")
        parser.exit(0)


def _add_print_config(p):
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML, each key's source) and exit without training")


def _add_root(p):
    p.add_argument("--root", default=None, help="workspace root (default: $INFMASK_ROOT or ./workspace)")


THREADS_HELP = ("CPU threads for torch (and for the processes it starts); 1 when other jobs share the cores, where "
                "more threads wait for each other (default: torch's)")


def _add_threads(p):
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)


def _set_threads(n: int) -> None:
    """Before torch is imported where possible: OpenMP reads its thread count once. Exported, so DDP ranks, the
    probe and notebook kernels started from here use the same count."""
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[key] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _check_jobs(args) -> None:
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs > 1 and args.force:
        raise UsageError("--force cannot be combined with --jobs (each job would retrain the runs the others made); "
                         "rerun with --jobs 1 --force, or without --force")
    if args.jobs > 1 and args.threads is None:
        args.threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)


def _add_run_args(p, benchmark=True):
    if benchmark:
        p.add_argument("benchmark", help="benchmark name (see `infmask download --list`)")
    p.add_argument("--method", default="infmasking", help=METHOD_HELP)
    p.add_argument("--preset", default="cpu", help="paper | cpu | smoke, or one the benchmark adds (default: cpu)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default 42)")
    p.add_argument("--force", action="store_true", help="redo even if already done")
    _add_overrides(p)


OVERRIDE_STAGES = ("preprocess", "pretrain", "run", "bench", "config")


def _add_overrides(p, what="config overrides"):
    # Collected from the unknown arguments (see main), so they may come before or after options, in both forms
    # W&B agents pass: key=value (${args_no_hyphens}) and --key=value (${args}).
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"{what}, e.g. model.mask_ratio=0.5")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="infmask", description="InfMasking reproduction pipeline.", epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the version (and git describe) and exit")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("download", help="fetch or generate a dataset into the workspace")
    p.add_argument("dataset", nargs="?", help="dataset or benchmark name")
    p.add_argument("--list", action="store_true", help="show every dataset: generated, downloadable or credentialed")
    p.add_argument("--data-seed", type=int, default=42, help="generation seed for generated datasets")
    p.add_argument("--base-url", default=None, help="mirror to download from instead of the registry URLs")
    p.add_argument("--force", action="store_true")
    _add_root(p)

    p = sub.add_parser("preprocess", help="build the canonical arrays a benchmark trains on")
    p.add_argument("benchmark")
    p.add_argument("--preset", default="paper", help="preset whose data settings to use (default: paper)")
    p.add_argument("--force", action="store_true")
    _add_overrides(p, "data.* overrides")
    _add_root(p)

    p = sub.add_parser("pretrain", help="self-supervised pretraining of one config and seed (resumable)")
    _add_run_args(p)
    _add_print_config(p)
    _add_threads(p)
    _add_root(p)

    p = sub.add_parser("probe", help="linear probes on a pretrained run (its checkpoint carries its config)")
    p.add_argument("run", help="run id, run directory, or checkpoint path")
    p.add_argument("--checkpoint", choices=("best", "last"), default=None, help="default: the run's probe.checkpoint")
    p.add_argument("--force", action="store_true")
    _add_threads(p)
    _add_root(p)

    p = sub.add_parser("report", help="paper tables from the results store (mean ± sample std over seeds)",
                       description="Tables are built from the runs made outside sweeps unless --sweep says "
                                   "otherwise; --preset, --tag and --group narrow the runs (comma-separated or "
                                   "repeated). The footnote of each table says which runs it read.")
    p.add_argument("--table", default=None, help="trifeatures | multibench | multibench3 | mmimdb | all")
    p.add_argument("--sweep", default=None,
                   help="report sweep ID (or all): best config, test mean ± std, heat map; with --table, the "
                        "table is built from that sweep's trials")
    p.add_argument("--benchmark", default=None, help="with --sweep: all sweeps of this benchmark")
    p.add_argument("--preset", action="append", default=None, help="tables: only runs of this preset")
    p.add_argument("--tag", action="append", default=None, help="tables: only runs with this tag (tracking.tags)")
    p.add_argument("--group", action="append", default=None,
                   help="tables: only this group (benchmark/method/hash as in W&B, or a config hash prefix)")
    p.add_argument("--no-wandb", action="store_true", help="do not log the table to W&B")
    _add_root(p)

    p = sub.add_parser("run", help="every stage in order for a benchmark, skipping what is done")
    p.add_argument("benchmark")
    p.add_argument("--methods", default=None, help="comma-separated (default: all of the benchmark's methods)")
    p.add_argument("--seeds", default="42,43,44", help="comma-separated seeds (default 42,43,44)")
    p.add_argument("--preset", default="cpu", help="paper | cpu | smoke, or one the benchmark adds (default: cpu)")
    p.add_argument("--force", action="store_true")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, sharing the cores (--threads each, default: the cores / jobs); on a "
                        "2-core CPU, 2 single-threaded runs get through the grid faster than 1 run on 2 threads")
    p.add_argument("--as-job", action="store_true", help=argparse.SUPPRESS)  # set on the runs --jobs starts
    _add_overrides(p)
    _add_print_config(p)
    _add_threads(p)
    _add_root(p)

    p = sub.add_parser("trial", help="pretrain + probe one config: the program a W&B sweep agent runs")
    p.add_argument("argv", nargs=argparse.REMAINDER,
                   help="--benchmark=B --method=M --preset=P --seed=S and any config keys, as a W&B agent passes them")
    _add_print_config(p)
    _add_root(p)

    p = sub.add_parser("config", help="print the resolved config of a benchmark as YAML, with each key's source")
    p.add_argument("benchmark", help="benchmark name (see `infmask download --list`)")
    p.add_argument("--method", default="infmasking", help=METHOD_HELP)
    p.add_argument("--preset", default="cpu", help="paper | cpu | smoke, or one the benchmark adds (default: cpu)")
    p.add_argument("--seed", type=int, default=None, help="run seed (default 42)")
    _add_overrides(p)

    p = sub.add_parser("sweep", help="run a W&B sweep file here with the embedded runner")
    p.add_argument("file")
    p.add_argument("--count", type=int, default=None, help="at most this many new trials")
    p.add_argument("--workers", type=int, default=1, help="trials at once (one GPU each where several exist)")
    p.add_argument("--sweep-id", default=None, help="resume this sweep (default: derived from the file)")
    _add_root(p)

    p = sub.add_parser("bench", help="time the training step against the straightforward formulation")
    p.add_argument("benchmark")
    p.add_argument("--method", default="infmasking")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", default=None, nargs="?", const="-", help="write JSON (to a file, or - for stdout)")
    p.add_argument("--no-baseline", action="store_true", help="skip the straightforward formulation")
    p.add_argument("--compare", default="auto", choices=("auto", "comm", "none"),
                   help="also time CoMM at the same config (auto: for infmasking)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default: auto)")
    _add_threads(p)
    p.add_argument("--data", action="store_true", help="time on the real training loader's first batch")
    p.add_argument("--savings", action="store_true", help="also time the fusion's exact savings one by one")
    p.add_argument("--optimisations", action="store_true",
                   help="also measure batch augmentation, uint8 batches, channels_last and bf16 one by one")
    p.add_argument("--no-memory", action="store_true", help="CPU: skip the peak-memory runs (one process each)")
    p.add_argument("--real-steps", type=int, default=0, metavar="N",
                   help="also train N steps through the real pretrain path (loader, callbacks, W&B offline) and "
                        "report its samples/s beside the bench step's")
    _add_overrides(p)
    _add_root(p)

    p = sub.add_parser("agent-script", help="print a shell script starting one wandb agent per visible GPU")
    p.add_argument("sweep_path", help="entity/project/sweep_id from `wandb sweep`")
    p.add_argument("--count", type=int, default=None)

    p = sub.add_parser("notebooks", help="execute the result notebooks on a workspace and render HTML")
    _add_root(p)
    return parser


def _trial_options(args, argv: list[str]) -> list[str]:
    """`trial` passes everything else to the config (an agent's `${args}` or `${args_no_hyphens}`, which may come
    first and swallow what follows): take its own options, --root and --print-config, out wherever they are."""
    rest = []
    it = iter(argv)
    for a in it:
        if a == "--print-config":
            args.print_config = True
        elif a == "--root":
            args.root = next(it, None)
            if not args.root:
                raise argparse.ArgumentError(None, "--root needs a directory")
        elif a.startswith("--root="):
            args.root = a.split("=", 1)[1]
        elif a != "--":
            rest.append(a)
    return rest


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # A program gets its own W&B service, as `wandb agent` gives its children: an inherited WANDB_SERVICE
        # would attach us to the parent's service, which still holds the streams of any child killed earlier
        # ("run ID ... is in use" when a killed run resumes).
        os.environ.pop("WANDB_SERVICE", None)
        argv = list(sys.argv[1:])
        # W&B records the command line of every run it starts (and `wandb sync` uploads it): a mirror's
        # credentials (--base-url http://user:PASS@host, ?token=...) must not be in it.
        from infmask.data.urls import redact_text

        sys.argv[1:] = [redact_text(a) for a in argv]
    argv = list(argv)
    if argv and argv[0] not in STAGES and "=" in argv[0]:
        # No stage, and the first argument is a config key (`--benchmark=mosi` or `benchmark=mosi`): an agent's
        # argv under W&B's default command, `${env} ${interpreter} ${program} ${args}`. That is a trial.
        argv = ["trial", *argv]
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if args.stage == "trial":  # an agent's argv, all of it: --benchmark=... --model.x=...
            args.argv, extra = _trial_options(args, list(args.argv or []) + extra), []
        if extra:
            bad = [a for a in extra if "=" not in a or not a.lstrip("-").split("=")[0]]
            if args.stage not in OVERRIDE_STAGES or bad:
                parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
            args.overrides = list(args.overrides or []) + extra
    except argparse.ArgumentError as e:
        print(f"infmask: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # argparse's own errors and --help
        return int(e.code or 0)
    if hasattr(args, "root"):
        # The only reading of $INFMASK_ROOT: every stage takes the workspace as args.root from here on (processes
        # it starts, sweep trials and DDP ranks, get it through their own command line or environment).
        args.root = resolve_root(args.root)
    os.environ.setdefault("WANDB_MODE", "offline")  # offline by default; syncable later with `wandb sync`
    os.environ.setdefault("WANDB_SILENT", "true")   # our own lines say where runs are and how to sync them
    from .config import ConfigError
    from infmask.data.registry import UnknownDatasetError
    try:
        if args.stage == "run":
            _check_jobs(args)
        if getattr(args, "threads", None) is not None:
            _set_threads(args.threads)
        return run_stage(args.stage, args)
    except (UsageError, ConfigError, UnknownDatasetError) as e:
        print(f"infmask {args.stage}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except InfmaskError as e:
        print(f"infmask {args.stage}: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
