"""`infmask bench`: time the training step of a config, phase by phase, against the straightforward formulation.

    infmask bench trifeatures --method infmasking --preset paper --steps 5 --json bench.json

Every formulation runs in one process on the same batch, interleaved step by step (the order rotates each step),
so a busy machine slows them alike and the ratios stay meaningful; `load_avg` records how busy it was.

Formulations (each its own copy of the same initial weights and its own AdamW):
* fast: the method's own `training_step` (models/methods/), backward, optimiser step, as `infmask pretrain`
  runs them (without Lightning's loop around them: `--real-steps` times that too).
* straightforward (InfMasking and CoMM): the reference's computation, `models.reference.reference_step`.
* comm (`--compare comm`, the default for InfMasking): CoMM's fast step at the same config, for the cost of masking.
* fast_eager (with trainer.compile=True): the fast step without torch.compile, for the compile speed-up.

A step = host-to-device copy and batch augmentation of the uint8 batch, forward, backward, optimiser step.
`step_s` is the median wall time over `--steps` steps after `--warmup`, synchronising the device only after the
augmentation and at the end of a step. `model_step_s` leaves the augmentation out: it is the same code in every
formulation, and the reference augments in loader workers beside the step.

The breakdown: the fast step's phases are marked on the real step from outside (step.py), encoders, `fusion` (the
unmasked subsets and the masked views in one pass), head, loss; the straightforward step marks its own, with the
fusion as two loops (`fusion_unmasked`, `fusion_masked`). On a CPU the phases are timed inside the timed step;
on CUDA in a separate step of each formulation that synchronises after every phase. Methods without a phase split
report augmentation, forward, backward and optimiser.

Peak memory (memory.py): CUDA, the allocator's peak during the timed steps (over what was allocated before each
step, and absolute). CPU: each formulation runs one more step in a fresh process, its peak resident set over the
resident set once the model and the raw batch are built.

By default the batch is synthetic uint8 data of the config's shape (no dataset needed); `--data` takes the first
batch of the real training loader (downloading and preprocessing like `infmask pretrain`).

`--real-steps N` also trains N steps through the real `infmask pretrain` path and reports its samples/s beside
the bench step's (real_loop.py). `--savings` and `--optimisations` measure each saving on its own (studies.py,
loss_study.py).
"""
from .run import bench, format_report, write_json
from .step import PHASES

__all__ = ["PHASES", "bench", "format_report", "write_json"]
