"""`infmask bench`: time the training step of a config, phase by phase, against the straightforward formulation.

    infmask bench trifeatures --method infmasking --preset paper --steps 5 --json bench.json

Every formulation runs in this one process on the same batch, interleaved step by step (the order rotates each
step), so a busy machine slows them alike and the ratios stay meaningful; `load_avg` records how busy it was.

Formulations (each its own copy of the same initial weights and its own AdamW):
* fast: the method's own training step (`compute_loss`, backward, optimiser step), as `infmask pretrain` runs it.
* straightforward (InfMasking and CoMM): the reference's computation, `models.step_phases.straightforward_forward`.
* comm (`--compare comm`, the default for InfMasking): CoMM's fast step at the same config, for the cost of masking.
* fast_eager (with trainer.compile=True): the fast step without torch.compile, for the compile speed-up.

A step = host-to-device copy and batch augmentation of the uint8 batch, forward, backward, optimiser step.
`step_s` is the median wall time over `--steps` steps after `--warmup`, synchronising the device only after the
augmentation and at the end of a step. `model_step_s` leaves the augmentation out: it is the same code in every
formulation, and the reference augments in loader workers beside the step.

The breakdown comes from separate instrumented steps that synchronise after every phase (on CPU the
straightforward step needs no separate run: its phases are timed in place). There the fast step fuses the
unmasked subsets and the masked views in two passes instead of one, so its breakdown total is a little above its
`step_s`.

Peak memory: CUDA, torch.cuda.max_memory_allocated during the timed steps (over what was allocated before each
step, and absolute). CPU: freed memory stays resident, so each formulation runs one more step in a fresh
process: the peak resident set during that first step (the kernel's VmHWM mark, reset before it) over the
resident set once the model and the raw batch are built (ru_maxrss growth where VmHWM cannot be reset).

By default the batch is synthetic uint8 data of the config's shape (no dataset needed); `--data` takes the first
batch of the real training loader (downloading and preprocessing like `infmask pretrain`).

`--real-steps N` also trains N steps through the real `infmask pretrain` path and reports its samples/s beside
the bench step's (pipeline/stages/bench_real.py).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from ..config import build_config
from ..errors import UsageError

PHASES = ("augmentation", "encoders", "fusion_unmasked", "fusion_masked", "head", "loss", "backward", "optimizer")
COARSE = ("augmentation", "forward", "backward", "optimizer")
SPLIT_METHODS = ("infmasking", "comm")


# ------------------------------------------------------------------------------------------------------ clock
class _Clock:
    """Wall and process-CPU time of one step and of its phases; `sync` waits for the device at phase ends."""

    def __init__(self, device, sync_phases: bool):
        import torch

        self.cuda = device.type == "cuda"
        self.sync_phases = sync_phases and self.cuda
        self._sync = (lambda: torch.cuda.synchronize(device)) if self.cuda else (lambda: None)

    def start(self):
        self._sync()
        self.phases = {}
        self.t0 = self.last = time.perf_counter()
        self.c0 = time.process_time()

    def mark(self, name: str, sync: bool = False):
        if self.sync_phases or sync:
            self._sync()
        t = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + (t - self.last)
        self.last = t

    def stop(self) -> tuple:
        self._sync()
        t = time.perf_counter()
        if t > self.last and self.phases:   # time after the last mark (the final sync) goes to the last phase
            last = list(self.phases)[-1]
            self.phases[last] += t - self.last
        return t - self.t0, time.process_time() - self.c0


# ----------------------------------------------------------------------------------------------------- memory
class _PeakMemory:
    def __init__(self, device):
        self.device = device
        self.how = None

    def start(self):
        import resource

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated"
            return
        with open("/proc/self/statm") as fh:
            self.base = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/self/clear_refs", "w") as fh:     # "5" resets the peak-RSS mark VmHWM (Linux >= 4.0)
                fh.write("5")
            self.how = "peak RSS during the step (VmHWM) minus RSS before it"
        except OSError:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.how = "ru_maxrss growth during the step (0 once an earlier step peaked higher)"

    def stop(self) -> tuple:
        """(peak bytes over the start, absolute peak bytes or None)."""
        import resource

        import torch

        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            return peak - self.base, peak
        if self.how.startswith("peak RSS"):
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) * 1024
                        return max(0, peak - self.base), peak
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base), None


# ----------------------------------------------------------------------------------------------------- inputs
def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device: unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    return dev


def _precision(cfg, device) -> str:
    import torch

    p = cfg.trainer.precision
    if p == "auto":
        return "bf16-mixed" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "32-true"
    if p == "32":
        return "32-true"
    if p not in ("32-true", "bf16-mixed", "16-mixed", "64-true"):
        raise UsageError(f"trainer.precision={p!r} is not supported by bench; use auto, 32-true, bf16-mixed, "
                         f"16-mixed or 64-true")
    return p


def _autocast(precision: str, device):
    import torch

    if precision == "bf16-mixed":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.float16)
    return nullcontext


class _Batches:
    """Raw batch on the host and the transform that makes an SSL batch of it on the device."""

    def __init__(self, cfg, device, real: bool):
        import torch

        self.device = device
        self.dtype = torch.float64 if cfg.trainer.precision == "64-true" else None
        B = cfg.data.batch_size
        g = torch.Generator().manual_seed(cfg.seed)
        if real:
            from ..workspace import Workspace
            from .data_stages import datamodule_for, ensure_data

            ws = Workspace.open()
            ensure_data(cfg, ws)
            dm = datamodule_for(cfg, ws)
            dm.ssl_inputs = _batch_inputs(cfg)
            dm.setup("fit")
            self.raw = next(iter(dm.train_dataloader()))
            self.transform = dm.transform_batch
            self.source = f"first batch of the {cfg.data.dataset} training loader"
        elif cfg.data.dataset == "trifeatures":
            from infmask.data.trifeatures_datamodule import TrifeaturesDataModule

            S = cfg.data.image_size
            # the config's augmentation, as training applies it (crop scale, blur range)
            dm = TrifeaturesDataModule(Path(os.devnull), batch_size=B, image_size=S, check_integrity=False,
                                       crop_scale=tuple(cfg.data.crop_scale), blur_sigma=tuple(cfg.data.blur_sigma))
            dm.ssl_inputs = _batch_inputs(cfg)
            n = len(cfg.model.modalities)
            self.raw = {"raw": [torch.randint(0, 256, (B, S, S, 3), dtype=torch.uint8, generator=g)
                                for _ in range(n)]}
            self.transform = dm.transform_batch
            self.source = f"synthetic uint8 images {B}x{S}x{S}x3, augmented on the device"
        else:
            from infmask.models.benchmarks import random_inputs

            model = cfg.to_dict()["model"]
            x = random_inputs(model, B, image_size=cfg.data.image_size, generator=g)
            self.raw = {"x": x, "views": [[t + 0.1 * torch.randn(t.shape, generator=g) for t in x]
                                          for _ in range(2)]}
            self.transform = lambda b: b
            self.source = ("synthetic float model inputs (no augmentation measured; --data runs the real "
                           "loader and augmentation)")

    @property
    def raw_bytes(self) -> int:
        import torch

        def size(obj):
            if isinstance(obj, torch.Tensor):
                return obj.numel() * obj.element_size()
            if isinstance(obj, dict):
                return sum(size(v) for v in obj.values())
            if isinstance(obj, (list, tuple)):
                return sum(size(v) for v in obj)
            return 0
        return size(self.raw)

    def make(self) -> dict:
        """Copy the raw batch to the device and transform it (augmentation for SSL batches)."""
        import torch

        def move(obj):
            if isinstance(obj, torch.Tensor):
                return obj.to(self.device, non_blocking=True)
            if isinstance(obj, dict):
                return {k: move(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return type(obj)(move(v) for v in obj)
            return obj
        batch = self.transform(move(self.raw))
        if self.dtype is not None:
            batch = {k: [[t.to(self.dtype) for t in v] for v in vs] if k == "views" else [t.to(self.dtype) for t in vs]
                     for k, vs in batch.items()}
        return batch


def _batch_inputs(cfg) -> tuple:
    """What the method's training step reads from an SSL batch (the real training loop makes only that)."""
    from infmask.models.methods import METHODS

    return METHODS[cfg.method].batch_inputs


# ---------------------------------------------------------------------------------------------------- runners
class _Runner:
    """One formulation: its own module, optimiser and forward functions; collects timings."""

    def __init__(self, name: str, method, forward_real, forward_split, split_is_real: bool):
        self.name, self.method = name, method
        opt = method.configure_optimizers()
        self.opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.forward_real, self.forward_split, self.split_is_real = forward_real, forward_split, split_is_real
        self.step_s, self.model_s, self.cpu_s, self.mem, self.mem_abs = [], [], [], [], []
        self.coarse = {k: [] for k in COARSE}
        self.phases = {}
        self.loss = None

    def _step(self, batches, clock, forward, autocast, mem=None):
        clock.start()
        if mem is not None:
            mem.start()
        batch = batches.make()
        clock.mark("augmentation", sync=True)    # always: model_step_s = step_s - augmentation
        with autocast():
            out = forward(batch, clock.mark)
        clock.mark("forward")
        loss = out["loss"]
        loss.backward()
        clock.mark("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        clock.mark("optimizer")
        wall, cpu = clock.stop()
        self.loss = float(loss.detach())
        peak = mem.stop() if mem is not None else None
        return wall, cpu, dict(clock.phases), peak

    def run(self, batches, real_clock, split_clock, autocast, mem, record: bool):
        # without a phase-split forward the real step's own (synchronised) phases are the breakdown
        clock = real_clock if self.forward_split is not None else split_clock
        wall, cpu, phases, peak = self._step(batches, clock, self.forward_real, autocast, mem)
        peak, peak_abs = peak if peak is not None else (None, None)
        if self.split_is_real and not split_clock.sync_phases:
            split = phases
        elif self.forward_split is not None:
            split = self._step(batches, split_clock, self.forward_split, autocast)[2]
        else:
            split = None
        if not record:
            return
        self.step_s.append(wall)
        self.model_s.append(wall - phases.get("augmentation", 0.0))
        self.cpu_s.append(cpu)
        if peak is not None:
            self.mem.append(peak)
        if peak_abs is not None:
            self.mem_abs.append(peak_abs)
        forward = sum(v for k, v in phases.items() if k not in ("augmentation", "backward", "optimizer"))
        for k, v in (("augmentation", phases.get("augmentation", 0.0)), ("forward", forward),
                     ("backward", phases.get("backward", 0.0)), ("optimizer", phases.get("optimizer", 0.0))):
            self.coarse[k].append(v)
        if split is not None:
            for k, v in split.items():
                self.phases.setdefault(k, []).append(v)

    def summary(self, batch_size: int) -> dict:
        md = statistics.median
        step = md(self.step_s)
        out = {"step_s": round(step, 5), "model_step_s": round(md(self.model_s), 5),
               "step_cpu_s": round(md(self.cpu_s), 5),
               "samples_per_s": round(batch_size / step, 3),
               "steps_s": [round(t, 5) for t in self.step_s],
               "last_loss": self.loss}
        if self.mem:
            out["peak_mem_mib"] = round(max(self.mem) / 2 ** 20, 1)
        if self.mem_abs:
            out["peak_mem_abs_mib"] = round(max(self.mem_abs) / 2 ** 20, 1)
        if self.phases:
            bd = {k: round(md(self.phases[k]), 5) for k in PHASES if k in self.phases}
            bd["total"] = round(sum(bd.values()), 5)
            out["breakdown"] = bd
        else:   # methods without a phase split: augmentation, forward, backward, optimiser
            out["breakdown"] = {k: round(md(v), 5) for k, v in self.coarse.items()}
            out["breakdown"]["total"] = round(sum(out["breakdown"].values()), 5)
        return out


def _build(cfg, device, precision: str):
    import torch

    from infmask.models.methods import build_method

    torch.manual_seed(cfg.seed)
    method = build_method(cfg.to_dict()).to(device).train()
    if precision == "64-true":
        method = method.double()
    return method


def _compile_encoders(method):
    """trainer.compile: the CNN/sequence encoders through torch.compile (static shapes; the fusion's masked
    passes change shape with the subset and are left eager)."""
    import torch

    if hasattr(method, "compile_encoders"):
        method.compile_encoders()
        return method
    enc = method.encoder if hasattr(method, "encoder") else None      # the straightforward formulation's model
    if enc is None:
        return method
    for i in range(len(enc.encoders)):
        enc.encoders[i] = torch.compile(enc.encoders[i])
    return method


def make_runner(name: str, cfg, device, precision: str) -> "_Runner":
    """One formulation, built from cfg.seed: every formulation starts from the same initial weights."""
    from infmask.models import step_phases

    if name == "comm":
        cfg = build_config(cfg.benchmark, "comm", cfg.preset, seed=cfg.seed, overrides=_shared_overrides(cfg))
    method = _build(cfg, device, precision)
    split_ok = cfg.method in SPLIT_METHODS
    if name == "straightforward":
        if not split_ok:
            raise UsageError(f"no straightforward formulation of {cfg.method}; use --no-baseline")
        fwd = (lambda b, mark, m=method: step_phases.straightforward_forward(m, b, mark))
        return _Runner(name, method, fwd, fwd, split_is_real=True)
    if name not in ("fast", "comm", "fast_eager"):
        raise ValueError(f"unknown formulation {name!r}")
    if cfg.trainer.compile and name != "fast_eager":
        _compile_encoders(method)
    split = (lambda b, mark, m=method: step_phases.fast_forward(m, b, mark)) if split_ok else None
    return _Runner(name, method, lambda b, mark, m=method: m.compute_loss(b), split, split_is_real=False)


def _shared_overrides(cfg) -> dict:
    """CoMM at the same config: every data/model/trainer value of the InfMasking config that CoMM also reads."""
    d = cfg.to_dict()
    out = {}
    for section in ("data", "model", "optim", "trainer"):
        for k, v in d[section].items():
            out[f"{section}.{k}"] = v
    return out


def memory_child(spec: str) -> None:
    """Entry point of the fresh process `memory_in_subprocess` starts: one step of one formulation, its peak."""
    import torch

    from ..config import Config

    a = json.loads(spec)
    torch.set_num_threads(int(a["threads"]))
    cfg = Config.from_dict(a["cfg"])
    dev = _device(a["device"])
    precision = _precision(cfg, dev)
    batches = _Batches(cfg, dev, bool(a["real_data"]))
    runner = make_runner(a["name"], cfg, dev, precision)
    mem = _PeakMemory(dev)
    _, _, _, (peak, peak_abs) = runner._step(batches, _Clock(dev, False), runner.forward_real,
                                             _autocast(precision, dev), mem)
    print("INFMASK_MEMORY " + json.dumps({"peak_bytes": peak, "peak_abs_bytes": peak_abs, "how": mem.how}))


def memory_in_subprocess(cfg, name: str, device: str, threads: int, real_data: bool) -> dict:
    """Peak memory of one step of formulation `name`, first step in a fresh process, over the resident set
    once the model and the raw batch are built (so it counts activations, gradients and the optimiser state)."""
    import subprocess

    spec = json.dumps({"cfg": cfg.to_dict(), "name": name, "device": device, "threads": threads,
                       "real_data": real_data}, default=str)
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = "import sys; from infmask.stages.bench import memory_child; memory_child(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, env=env, cwd=root,
                         check=False)
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith("INFMASK_MEMORY "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"memory measurement of {name} failed:\n{res.stderr[-2000:]}")


# ------------------------------------------------------------------------------------------------- extras
def _median_time(fn, reps: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fusion_savings(method, batches, device, reps: int = 3) -> dict:
    """Forward + backward seconds of the fusion alone on one token table, removing the reference's costs one at
    a time: (a) its Python loops over copies, subsets and views; (b) one batched pass, masked views for every
    subset; (c) masked views of the full set only; (d) + shared mask token with log-multiplicity bias and a
    CLS-only last layer (the fast path). (a) and (b)-(d) compute the same outputs for the full set."""
    import torch

    from infmask.models.fusion import keep_count, random_keep_mask

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    enc = method.encoder
    fusion = enc.fusion
    batch = batches.make()
    with torch.no_grad():
        tokens, _, lengths, sizes = enc.tokenize(batch["views"])
    tokens = tokens.detach().requires_grad_(True)
    subset_pos = []
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    subsets = enc.subsets()
    for s in subsets:
        subset_pos.append(None if len(s) == enc.n_modalities else
                          [p for m in s for p in range(offsets[m], offsets[m + 1])])
    T, rho, rnd = enc.num_mask, enc.mask_ratio, enc.keep_rounding

    def jobs(ids):
        out = []
        for i in ids:
            sl = [lengths[m] for m in subsets[i]]
            out.append((subset_pos[i], random_keep_mask(T, tokens.shape[0], sl, rho, rnd, device=device),
                        sum(keep_count(n, rho, rnd) for n in sl)))
        return out

    all_ids, full_id = list(range(len(subsets))), [len(subsets) - 1]

    def loops():
        B = sizes[0]
        total = 0
        for c in range(len(sizes)):
            x = tokens[c * B:(c + 1) * B]
            for i, pos in enumerate(subset_pos):
                seq = x if pos is None else x[:, pos]
                total = total + fusion._run_reference(seq, None).square().sum()
                sl = [lengths[m] for m in subsets[i]]
                for t in range(T):
                    k = random_keep_mask(1, B, sl, rho, rnd, device=device)[0].unsqueeze(-1).to(seq.dtype)
                    total = total + fusion._run_reference(seq * k + fusion.mask_token * (1 - k), None).square().sum()
        total.backward()

    def batched(ids, fast):
        def run():
            z, zm = fusion.fuse(tokens, None, subset_pos, jobs(ids), fast=fast)
            (sum(t.square().sum() for t in z) + sum(t.square().sum() for t in zm)).backward()
        return run

    L = tokens.shape[1]
    K = sum(keep_count(n, rho, rnd) for n in lengths)
    rows = {
        "a_reference_loops": loops,
        "b_batched_all_subsets": batched(all_ids, False),
        "c_batched_full_set_only": batched(full_id, False),
        "d_fast_shared_mask_token_cls_only": batched(full_id, True),
    }
    out = {"tokens_full_set": L, "kept_tokens_full_set": K, "masked_view_sequence": {"straightforward": L + 1,
                                                                                     "fast": K + 2},
           "views_per_copy": T, "subsets": len(subsets)}
    for k, fn in rows.items():
        out[k + "_s"] = round(_median_time(fn, reps, sync), 5)
    out["speedup_a_over_d"] = round(out["a_reference_loops_s"] / out["d_fast_shared_mask_token_cls_only_s"], 2)
    return out


def loss_savings(method, device, reps: int = 5) -> dict:
    """The loss alone at this config's sizes: closed form vs explicit per-sample covariance (forward+backward)."""
    from infmask.models.benchmarks import loss_timing_report

    m = method.hparams_model
    rep = loss_timing_report(batch_sizes=(int(method.cfg["data"]["batch_size"]),), P=int(m["head_out"]),
                             T=int(m["num_mask"]), n=len(m["modalities"]), device=str(device), repeats=reps)
    return rep["rows"][0]


def optimisations(cfg, method, batches, device, reps: int = 3) -> dict:
    """Each optimisation on its own, measured here: batch vs per-sample augmentation, uint8 vs float32 batches,
    channels_last encoders, bf16 autocast (time and loss parity)."""
    import torch

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    out = {}
    # batch augmentation on the device vs one sample at a time (the reference augments per sample)
    raw = batches.raw.get("raw") if isinstance(batches.raw, dict) else None
    if raw is not None:
        moved = {"raw": [t.to(device) for t in raw]}

        def per_sample():
            for t in moved["raw"]:
                for _ in range(2):
                    for i in range(t.shape[0]):
                        batches.transform({"raw": [t[i:i + 1]]})
        out["augmentation"] = {"batched_s": round(_median_time(lambda: batches.transform(moved), reps, sync), 5),
                               "per_sample_s": round(_median_time(per_sample, 1, sync), 5)}
        out["augmentation"]["speedup"] = round(out["augmentation"]["per_sample_s"] / out["augmentation"]["batched_s"],
                                               2)
        images = [t for t in moved["raw"] if t.ndim == 4 and t.dtype == torch.uint8]
        if images:
            # one image view: our batched ops (crop+flip as one grid_sample, no host sync) vs kornia's
            from infmask.data.augment import ImageSSLAugment

            size = int(getattr(cfg.data, "image_size", images[0].shape[-2]))
            scale = tuple(getattr(cfg.data, "crop_scale", (0.08, 1.0)))
            res = {"images": f"{tuple(images[0].shape)} uint8"}
            for impl in ImageSSLAugment.IMPLS:
                aug = ImageSSLAugment(size, scale=scale, impl=impl).to(device)
                res[f"{impl}_s"] = round(_median_time(lambda: aug(images[0]), reps, sync), 5)
                if device.type == "cuda":
                    res[f"{impl}_host_syncs"] = _count_syncs(lambda: aug(images[0]))
            res["speedup"] = round(res["kornia_s"] / res["fast_s"], 2)
            out["augmentation_impl"] = res
        u8 = sum(t.numel() * t.element_size() for t in raw)
        out["uint8_batch"] = {"uint8_bytes": u8, "float32_bytes": 4 * u8, "ratio": 4.0}
        if device.type == "cuda":
            host = [t.pin_memory() for t in raw]
            hostf = [t.float().pin_memory() for t in raw]
            out["uint8_batch"]["h2d_uint8_s"] = round(_median_time(lambda: [t.to(device, non_blocking=True)
                                                                            for t in host], reps, sync), 6)
            out["uint8_batch"]["h2d_float32_s"] = round(_median_time(lambda: [t.to(device, non_blocking=True)
                                                                              for t in hostf], reps, sync), 6)
    # channels_last CNN encoders: encoder forward + backward on one augmented batch
    enc = getattr(method, "encoder", None)
    batch = batches.make()
    cnn = [i for i, m in enumerate(cfg.model.modalities) if m.get("encoder") in ("alexnet", "resnet18")]
    if enc is not None and cnn:
        from infmask.models.encoders import build_encoder

        i = cnn[0]
        spec = cfg.model.modalities[i]
        x = torch.cat([batch["views"][0][i], batch["views"][1][i]])
        res = {}
        for cl in (False, True):
            e = build_encoder(spec["encoder"], channels_last=cl, **(spec.get("encoder_kwargs") or {})).to(device)
            e.load_state_dict(getattr(enc.encoders[i], "_orig_mod", enc.encoders[i]).state_dict())
            res["channels_last" if cl else "contiguous"] = round(
                _median_time(lambda: e(x).sum().backward(), reps, sync), 5)
        res["speedup"] = round(res["contiguous"] / res["channels_last"], 2)
        res["encoder"] = f"{spec['encoder']} on {tuple(x.shape)}"
        out["channels_last"] = res
    # bf16 autocast: step forward + backward time and the loss on the same weights, batch and masks
    if cfg.method in SPLIT_METHODS:
        from infmask.models import step_phases

        def loss_with(ctx, seed=0):
            torch.manual_seed(seed)
            with ctx:
                return step_phases.fast_forward(method, batch)["loss"]

        def run(ctx):
            def f():
                method.zero_grad(set_to_none=True)
                loss_with(ctx).backward()
            return f
        fp32 = float(loss_with(nullcontext()).detach())
        bf16 = float(loss_with(torch.autocast(device_type=device.type, dtype=torch.bfloat16)).detach())
        res = {"loss_fp32": fp32, "loss_bf16": bf16, "loss_rel_diff": abs(bf16 - fp32) / max(abs(fp32), 1e-12),
               "fp32_s": round(_median_time(run(nullcontext()), reps, sync), 5),
               "bf16_s": round(_median_time(run(torch.autocast(device_type=device.type, dtype=torch.bfloat16)),
                                            reps, sync), 5),
               "loss_in_float32": "the losses upcast their inputs and run with autocast off (models/losses.py)"}
        res["speedup"] = round(res["fp32_s"] / res["bf16_s"], 2)
        out["bf16_autocast"] = res
        method.zero_grad(set_to_none=True)
        if device.type == "cuda":
            out["host_syncs_per_forward_backward"] = _count_syncs(lambda: run(nullcontext())())
    return out


def _count_syncs(fn) -> dict:
    """CUDA: the host-device synchronisations one call makes (torch's sync debug mode), by source line."""
    import warnings

    import torch

    fn()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = {}
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            key = f"{Path(w.filename).name}:{w.lineno}"
            where[key] = where.get(key, 0) + 1
    return {"count": sum(where.values()), "where": where}


# --------------------------------------------------------------------------------------------------- main
def _host() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def bench(cfg, *, steps: int = 5, warmup: int = 1, baseline: bool = True, compare: str = "auto",
          device: str = "auto", threads: int | None = None, real_data: bool = False, savings: bool = False,
          extras: bool = False, memory: bool = True, real_steps: int = 0, log=print) -> dict:
    import torch

    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if real_steps:
        from .bench_real import check

        check(cfg, real_steps)
    if compare not in ("auto", "comm", "none"):
        raise UsageError(f"--compare must be auto, comm or none, got {compare!r}")
    dev = _device(device)
    precision = _precision(cfg, dev)
    compare_comm = compare == "comm" or (compare == "auto" and cfg.method == "infmasking")
    if compare_comm and cfg.method != "infmasking":
        raise UsageError("--compare comm compares InfMasking with CoMM: use --method infmasking")
    baseline = baseline and cfg.method in SPLIT_METHODS
    load_start = _loadavg()
    batches = _Batches(cfg, dev, real_data)
    names = ["fast"] + (["straightforward"] if baseline else []) + (["comm"] if compare_comm else [])
    if cfg.trainer.compile:     # the same fast step without torch.compile, for the compile speed-up
        names.append("fast_eager")
    runners = [make_runner(n, cfg, dev, precision) for n in names]
    autocast = _autocast(precision, dev)
    # CUDA: the allocator's peak, in this process. CPU: freed memory stays resident, so one formulation's peak
    # would hide the next one's; each is measured in a fresh process after the timing (see module docstring).
    real_clock, split_clock, mem = _Clock(dev, False), _Clock(dev, True), _PeakMemory(dev)
    B = cfg.data.batch_size
    log(f"bench {cfg.benchmark}/{cfg.method}/{cfg.preset}: B={B}, {dev}, {precision}, "
        f"{torch.get_num_threads()} threads, formulations: {', '.join(names)}")
    t_all = time.perf_counter()
    for i in range(warmup + steps):
        k = i % len(runners)
        for r in runners[k:] + runners[:k]:
            r.run(batches, real_clock, split_clock, autocast, mem if dev.type == "cuda" else None,
                  record=i >= warmup)
        if i >= warmup:
            log(f"  step {i - warmup + 1}/{steps}: " +
                ", ".join(f"{r.name} {r.step_s[-1]:.3f} s" for r in runners))
    if dev.type != "cuda" and memory:
        for r in runners:
            log(f"  peak memory of {r.name} (fresh process) ...")
            peak = memory_in_subprocess(cfg, r.name, str(dev), torch.get_num_threads(), real_data)
            r.mem.append(peak["peak_bytes"])
            mem.how = peak["how"]
    real = None
    if real_steps:      # the real training loop, with the bench step timed between its steps
        from .bench_real import real_loop

        fast = runners[0]
        real = real_loop(cfg, steps=real_steps, warmup=max(1, warmup), device=dev, bench_steps=steps, log=log,
                         bench_step=lambda: fast._step(batches, real_clock, fast.forward_real, autocast)[:2])
    res = {"benchmark": cfg.benchmark, "method": cfg.method, "preset": cfg.preset, "config_hash": cfg.config_hash(),
           "batch_size": B, "image_size": cfg.data.image_size, "embed_dim": cfg.model.embed_dim,
           "num_mask": cfg.model.num_mask, "n_layers": cfg.model.n_layers, "steps": steps, "warmup": warmup,
           "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else _host(),
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "precision": precision, "channels_last": bool(cfg.model.channels_last),
           "compile": bool(cfg.trainer.compile), "fast_fusion": bool(cfg.model.fast_fusion),
           "mask_all_subsets": bool(cfg.model.mask_all_subsets), "data": batches.source,
           "raw_batch_bytes": batches.raw_bytes, "peak_mem_method": mem.how, "phases": list(PHASES)}
    for r in runners:
        res[r.name] = r.summary(B)
    if "straightforward" in res:
        f, s = res["fast"], res["straightforward"]
        res["ratio"] = round(s["step_s"] / f["step_s"], 3)
        res["ratio_cpu_time"] = round(s["step_cpu_s"] / f["step_cpu_s"], 3)
        res["throughput_ratio"] = round(f["samples_per_s"] / s["samples_per_s"], 3)
        res["ratio_model"] = round(s["model_step_s"] / f["model_step_s"], 3)
    if "comm" in res:
        res["infmasking_over_comm"] = round(res["fast"]["step_s"] / res["comm"]["step_s"], 3)
        res["infmasking_over_comm_cpu_time"] = round(res["fast"]["step_cpu_s"] / res["comm"]["step_cpu_s"], 3)
        res["infmasking_over_comm_model"] = round(res["fast"]["model_step_s"] / res["comm"]["model_step_s"], 3)
    if "fast_eager" in res:
        res["compile_speedup"] = round(res["fast_eager"]["step_s"] / res["fast"]["step_s"], 3)
    if real is not None:
        from .bench_real import compare as compare_real

        res["real_loop"] = real
        compare_real(res, B)
    if savings and cfg.method == "infmasking":
        log("  fusion savings ...")
        res["fusion_savings"] = fusion_savings(runners[0].method, batches, dev)
        res["loss_savings"] = loss_savings(runners[0].method, dev)
    if extras:
        log("  optimisations ...")
        res["optimisations"] = optimisations(cfg, runners[0].method, batches, dev)
    res["seconds"] = round(time.perf_counter() - t_all, 2)
    res["load_avg"] = {"start": load_start, "end": _loadavg()}
    return res


def format_report(res: dict) -> str:
    names = [n for n in ("fast", "straightforward", "comm", "fast_eager") if n in res]
    lines = [f"{res['benchmark']}/{res['method']}/{res['preset']}  B={res['batch_size']}  {res['device']} "
             f"({res['device_name']})  {res['precision']}  threads={res['threads']}  load={res['load_avg']}",
             f"data: {res['data']}"]
    head = f"{'':<18}" + "".join(f"{n:>17}" for n in names)
    lines.append(head)
    rows = [("step (s)", "step_s"), ("  w/o augment. (s)", "model_step_s"), ("step CPU time (s)", "step_cpu_s"),
            ("samples/s", "samples_per_s"),
            ("peak mem (MiB)", "peak_mem_mib")]
    for label, key in rows:
        lines.append(f"{label:<18}" + "".join(f"{res[n].get(key, '-'):>17}" for n in names))
    lines.append("breakdown (s, phases synchronised):")
    for p in PHASES + ("total",):
        vals = [res[n].get("breakdown", {}).get(p) for n in names]
        if any(v is not None for v in vals):
            lines.append(f"  {p:<16}" + "".join(f"{'-' if v is None else v:>17}" for v in vals))
    if "ratio" in res:
        lines.append(f"straightforward / fast step time: {res['ratio']}x (CPU time {res['ratio_cpu_time']}x; "
                     f"without the augmentation both share: {res['ratio_model']}x)")
    if "infmasking_over_comm" in res:
        lines.append(f"InfMasking / CoMM step time: {res['infmasking_over_comm']}x "
                     f"(CPU time {res['infmasking_over_comm_cpu_time']}x; without augmentation "
                     f"{res['infmasking_over_comm_model']}x)")
    if "compile_speedup" in res:
        lines.append(f"torch.compile (encoders) speed-up: {res['compile_speedup']}x")
    if "real_loop" in res:
        from .bench_real import format_real

        lines.append(format_real(res["real_loop"]))
    for key in ("fusion_savings", "loss_savings", "optimisations"):
        if key in res:
            lines.append(f"{key}: {json.dumps(res[key])}")
    return "\n".join(lines)


def _write_json(path: str, res: dict) -> None:
    from ..workspace import atomic_write_bytes

    text = json.dumps(res, indent=1, default=str) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    atomic_write_bytes(Path(path), text.encode(), check=lambda tmp: json.loads(tmp.read_text()))  # verified first


def bench_cli(args) -> int:
    cfg = build_config(args.benchmark, args.method, args.preset, seed=getattr(args, "seed", None),
                       overrides=list(args.overrides or []))
    to_stdout = args.json == "-"
    log = (lambda s: print(s, file=sys.stderr)) if to_stdout else print
    res = bench(cfg, steps=args.steps, warmup=args.warmup, baseline=not args.no_baseline,
                compare=getattr(args, "compare", "auto"), device=getattr(args, "device", "auto"),
                threads=getattr(args, "threads", None), real_data=bool(getattr(args, "data", False)),
                savings=bool(getattr(args, "savings", False)), extras=bool(getattr(args, "optimisations", False)),
                memory=not getattr(args, "no_memory", False), real_steps=getattr(args, "real_steps", 0) or 0,
                log=log)
    log(format_report(res))
    if args.json:
        _write_json(args.json, res)
        if not to_stdout:
            print(f"wrote {args.json}")
    return 0
