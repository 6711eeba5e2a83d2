"""One bench step of one formulation: the clock, the phase marks on the method's real training step, the runner.

A step = host-to-device copy and batch augmentation of the raw batch, forward, backward, optimiser step. The
fast formulations run the method's own `training_step` (models/methods/) unchanged; their phases are marked
from outside by wrapping the encoder's `tokenize`, the fusion's `fuse` and a forward hook on the projection head
of that one module instance. The straightforward formulation is `models.reference.reference_step`, which marks
its own phases.
"""
from __future__ import annotations

import json
import statistics
import time
from contextlib import contextmanager

from ..config import build_config
from ..errors import UsageError
from .inputs import Batches, autocast_for, device_for, precision_for
from .memory import PeakMemory, in_fresh_process, report

# The fast step fuses the unmasked subsets and the masked views in one pass (`fusion`); the straightforward step
# runs them as separate loops (`fusion_unmasked`, `fusion_masked`).
PHASES = ("augmentation", "encoders", "fusion", "fusion_unmasked", "fusion_masked", "head", "loss", "backward",
          "optimizer")
COARSE = ("augmentation", "forward", "backward", "optimizer")
SPLIT_METHODS = ("infmasking", "comm")
FORMULATIONS = ("fast", "straightforward", "comm", "fast_eager")


class Clock:
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


# ------------------------------------------------------------------------------------------------ phase marks
@contextmanager
def marked_phases(method, mark):
    """While inside, the method's own training step calls `mark` as its encoders, its fusion pass and its head
    end. Only this instance is touched (instance attributes over its bound methods, one forward hook), and all of
    it is removed on the way out, so the timed step runs the model's code unchanged."""
    enc, head = getattr(method, "encoder", None), getattr(method, "head", None)
    if enc is None or head is None or not hasattr(enc, "tokenize") or not hasattr(enc, "fusion"):
        raise ValueError(f"method must be an InfMasking or CoMM module, got {type(method).__name__}")

    def then_mark(fn, name):
        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            mark(name)
            return out
        return call

    enc.tokenize = then_mark(enc.tokenize, "encoders")
    enc.fusion.fuse = then_mark(enc.fusion.fuse, "fusion")
    handle = head.register_forward_hook(lambda module, args, out: mark("head"))
    try:
        yield
    finally:
        handle.remove()
        del enc.fusion.fuse
        del enc.tokenize


def training_step(method, batch: dict, mark=None):
    """The method's real training step (its loss); with `mark`, its phases marked (see `marked_phases`)."""
    if mark is None:
        return method.training_step(batch, 0)
    with marked_phases(method, mark):
        loss = method.training_step(batch, 0)
    mark("loss")
    return loss


def straightforward_step(method, batch: dict, mark=None):
    from infmask.models.reference import reference_step

    return reference_step(method, batch, mark or (lambda name: None))["loss"]


# ---------------------------------------------------------------------------------------------------- runner
class Runner:
    """One formulation: its own module and optimiser, and `forward(batch, mark)` giving the loss; collects
    timings. `phased`: the forward marks its phases (the breakdown), else the breakdown is the coarse one."""

    def __init__(self, name: str, method, forward, phased: bool):
        self.name, self.method, self.forward, self.phased = name, method, forward, phased
        opt = method.configure_optimizers()
        self.opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.step_s, self.model_s, self.cpu_s, self.mem, self.mem_abs = [], [], [], [], []
        self.coarse = {k: [] for k in COARSE}
        self.phases = {}
        self.loss = None

    def step(self, batches, clock, autocast, mem=None, marks: bool = False):
        """One step: (wall s, CPU s, phases, (peak bytes, absolute peak) or None)."""
        clock.start()
        if mem is not None:
            mem.start()
        batch = batches.make()
        clock.mark("augmentation", sync=True)    # always: model_step_s = step_s - augmentation
        with autocast():
            loss = self.forward(batch, clock.mark if marks else None)
        clock.mark("loss" if marks else "forward")   # marked: what follows the loss mark is the step's return
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
        # Without a phase split the timed step's own phases, synchronised at their ends, are the breakdown. With
        # one: on a CPU the timed step's marks cost nothing, so its phases are timed in place; on CUDA a separate
        # step synchronises at every phase end, which the timed step must not do.
        in_place = self.phased and not split_clock.sync_phases
        clock = real_clock if self.phased else split_clock
        wall, cpu, phases, peak = self.step(batches, clock, autocast, mem, marks=in_place)
        peak, peak_abs = peak if peak is not None else (None, None)
        if in_place:
            split = phases
        elif self.phased:
            split = self.step(batches, split_clock, autocast, marks=True)[2]
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
        else:   # methods without a phase split: augmentation, forward, backward, optimiser
            bd = {k: round(md(v), 5) for k, v in self.coarse.items()}
        bd["total"] = round(sum(bd.values()), 5)
        out["breakdown"] = bd
        return out


def _build(cfg, device, precision: str):
    import torch

    from infmask.models.methods import build_method

    torch.manual_seed(cfg.seed)
    method = build_method(cfg.to_dict()).to(device).train()
    if precision == "64-true":
        method = method.double()
    return method


def shared_overrides(cfg) -> dict:
    """CoMM at the same config: every data/model/trainer value of the InfMasking config that CoMM also reads."""
    d = cfg.to_dict()
    out = {}
    for section in ("data", "model", "optim", "trainer"):
        for k, v in d[section].items():
            out[f"{section}.{k}"] = v
    return out


def make_runner(name: str, cfg, device, precision: str) -> Runner:
    """One formulation, built from cfg.seed: every formulation starts from the same initial weights."""
    if name not in FORMULATIONS:
        raise ValueError(f"unknown formulation {name!r}; valid: {', '.join(FORMULATIONS)}")
    if name == "comm":
        cfg = build_config(cfg.benchmark, "comm", cfg.preset, seed=cfg.seed, overrides=shared_overrides(cfg))
    method = _build(cfg, device, precision)
    phased = cfg.method in SPLIT_METHODS
    if name == "straightforward":
        if not phased:
            raise UsageError(f"no straightforward formulation of {cfg.method}; use --no-baseline")
        return Runner(name, method, lambda b, mark, m=method: straightforward_step(m, b, mark), True)
    if cfg.trainer.compile and name != "fast_eager":
        method.compile_encoders()
    return Runner(name, method, lambda b, mark, m=method: training_step(m, b, mark), phased)


# ------------------------------------------------------------------------------------- memory, fresh process
def memory_child(spec: str) -> None:
    """Entry point of the fresh process `memory_in_subprocess` starts: one step of one formulation, its peak."""
    import torch

    from ..config import Config

    a = json.loads(spec)
    torch.set_num_threads(int(a["threads"]))
    cfg = Config.from_dict(a["cfg"])
    dev = device_for(a["device"])
    precision = precision_for(cfg, dev)
    batches = Batches(cfg, dev, bool(a["real_data"]), a.get("root"))
    runner = make_runner(a["name"], cfg, dev, precision)
    mem = PeakMemory(dev)
    peak, peak_abs = runner.step(batches, Clock(dev, False), autocast_for(precision, dev), mem)[3]
    report({"peak_bytes": peak, "peak_abs_bytes": peak_abs, "how": mem.how})


def memory_in_subprocess(cfg, name: str, device: str, threads: int, real_data: bool, root=None) -> dict:
    """Peak memory of one step of formulation `name`, first step in a fresh process, over the resident set
    once the model and the raw batch are built (so it counts activations, gradients and the optimiser state)."""
    spec = {"cfg": cfg.to_dict(), "name": name, "device": device, "threads": threads, "real_data": real_data,
            "root": None if root is None else str(root)}
    return in_fresh_process("infmask.bench.step:memory_child", spec, name)
