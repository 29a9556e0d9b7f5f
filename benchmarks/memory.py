"""Resident and peak memory of this process, the extra peak of a block of code, and measurements
run in a fresh interpreter (whose peak belongs to that measurement alone)."""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from types import TracebackType
from typing import Any

RESULT_TAG = "RESULT "


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over ``exec`` from the forked parent, so a
    child started by a large process would report the parent's peak.
    """
    return _status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS, where ``/proc/self/clear_refs`` allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Hand the C heap's free memory back to the system (glibc's ``malloc_trim``; elsewhere nothing), so
    that what a measured block allocates shows as new resident memory instead of reusing freed pages."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class ExtraPeak:
    """Peak memory inside a ``with`` block over what was in use when it began: resident memory on
    the CPU, the CUDA caching allocator's allocations on a GPU. ``extra`` is ``None`` where the
    CPU's peak mark could not be reset (it would include earlier peaks).

    Resident memory counts the pages of code and libraries that the block runs for the first
    time too (several MiB for a first training step): run the same work once before the block
    to leave them out.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.cuda = device.startswith("cuda")
        self.extra: int | None = None
        self._torch: Any = None

    def __enter__(self) -> ExtraPeak:
        gc.collect()
        if self.cuda:
            import torch

            self._torch = torch
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = torch.cuda.memory_allocated()
        else:
            trim_heap()
            self._reset = reset_peak_rss()
            self._before = rss_bytes()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.cuda:
            self._torch.cuda.synchronize()
            self.extra = self._torch.cuda.max_memory_allocated() - self._before
        elif self._reset:
            self.extra = peak_rss_bytes() - self._before


def report(result: dict[str, Any]) -> None:
    """Print ``result`` as the line :func:`run_child` reads back."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter and return the result it :func:`report`-ed."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(script)} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(
            f"{os.path.basename(script)} {' '.join(args)} printed no result:\n{proc.stdout}\n{proc.stderr}"
        )
    return json.loads(lines[-1][len(RESULT_TAG) :])
