"""What the benchmarks print about the machine they ran on, and how they time calls
(shared by the bench scripts)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None where there is no such file)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


CPU_PER_WALL: list[float] = []  # this process, per timed call
FOREIGN: list[float] = []  # cores used by other processes during each timed call


def _busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (``/proc/stat``; 0 where unavailable)."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class Meter:
    """Wall time, this process's CPU per wall second and the cores other processes used
    meanwhile (machine busy time minus ours): above ~0.2 the timing is not clean."""

    def __enter__(self) -> Meter:
        self.b0, self.o0, self.t0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        own = _own_seconds() - self.o0
        self.cpu_per_wall = own / self.wall
        self.foreign = max(0.0, (_busy_seconds() - self.b0 - own) / self.wall)


def timed(fn: Callable[[], Any], repeats: int, slow_s: float = 5.0) -> tuple[float, Any]:
    """Best of ``repeats`` wall times (one run if the first takes more than ``slow_s``)."""
    best, out, meter = float("inf"), None, None
    for i in range(repeats):
        with Meter() as m:
            out = fn()
        if m.wall < best:
            best, meter = m.wall, m
        if i == 0 and best > slow_s:
            break
    assert meter is not None
    CPU_PER_WALL.append(meter.cpu_per_wall)
    FOREIGN.append(meter.foreign)
    return best, out


def spread(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices out of ``range(n)`` (all of them if ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, k).round().astype(int)]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def finish(results: dict[str, Any], threads: int, t_start: float, json_path: Path | None) -> None:
    """Print how clean the timings were and the total; write the JSON results if asked."""
    import json

    worst = max(FOREIGN, default=0.0)
    print(
        f"cpu/wall of the timed calls in this process: {min(CPU_PER_WALL, default=0):.2f}-"
        f"{max(CPU_PER_WALL, default=0):.2f} with {threads} threads; other processes used at "
        f"most {worst:.2f} cores during a timed call"
        + ("; WARNING: timings inflated by other processes, re-run" if worst > 0.2 else ""),
        flush=True,
    )
    results["cpu_per_wall"] = CPU_PER_WALL
    results["other_cores"] = FOREIGN
    results["loadavg_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - t_start
    print(
        f"\ntotal {results['seconds']:.0f}s; load average at end {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, default=str))
