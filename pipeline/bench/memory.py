"""Peak memory: one probe for every bench measurement, and the fresh process that CPU figures need.

CUDA: torch.cuda.max_memory_allocated over the measured stretch, minus what was allocated at its start (and the
absolute peak). CPU: freed memory stays resident, so one measurement would hide the next one's peak; each runs
first in a fresh process, where the figure is the peak resident set during the stretch (the kernel's VmHWM mark,
reset at its start) minus the resident set at its start (ru_maxrss growth where VmHWM cannot be reset).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_REPORT = "INFMASK_MEMORY "
VMHWM = "peak RSS during the step (VmHWM) minus RSS before it"
MAXRSS = "ru_maxrss growth during the step (0 once an earlier step peaked higher)"
CUDA = "torch.cuda.max_memory_allocated"


class PeakMemory:
    """`start()` before the measured stretch, `stop()` after it; `how` says what the figure is."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.how = None

    def start(self) -> None:
        import resource

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.how = CUDA
            return
        with open("/proc/self/statm") as fh:
            self.base = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        try:
            with open("/proc/self/clear_refs", "w") as fh:     # "5" resets the peak-RSS mark VmHWM (Linux >= 4.0)
                fh.write("5")
            self.how = VMHWM
        except OSError:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB
            self.how = MAXRSS

    def stop(self) -> tuple:
        """(peak bytes over the start, absolute peak bytes or None)."""
        import resource

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return max(0, peak - self.base), peak
        if self.how == VMHWM:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) * 1024
                        return max(0, peak - self.base), peak
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base), None


def in_fresh_process(function: str, spec: dict, what: str) -> dict:
    """Call `function` ("module:name", taking `spec` as JSON text) in a fresh Python process, in this working
    directory and environment, and return the dict it passed to `report`."""
    module, name = function.split(":")
    code = f"import sys; from {module} import {name}; {name}(sys.argv[1])"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(spec, default=str)], capture_output=True,
                         text=True, check=False)
    for line in res.stdout.splitlines()[::-1]:
        if line.startswith(_REPORT):
            return json.loads(line[len(_REPORT):])
    raise RuntimeError(f"memory measurement of {what} failed:\n{res.stderr[-2000:]}")


def report(result: dict) -> None:
    """The fresh process's answer to `in_fresh_process` (one tagged line: the rest of stdout may be noise)."""
    print(_REPORT + json.dumps(result), flush=True)
