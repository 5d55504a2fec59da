"""Is the machine too busy for a speed-up to mean anything? The evidence of one bench cell.

On a shared machine one side can lose far more than the other: torch's intra-op threads wait
for each other at every operator, so when another process holds a core they collapse (a 0.2 ms
decoder took 33 ms), while onnxruntime's keep going; the ratio then says 282x. So each cell
records the other processes' runnable threads against the CPUs this process may use, how far
each side's round medians disagree, and, when either looks wrong, each side's speed with one
thread (the control); a side slower on its threads than on one has collapsed, and no headline
speed-up is taken from it.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

COLLAPSE = 1.3  # a side's p50 on its threads / its one-thread p50 above this: its threads collapsed
ROUND_SPREAD = 3.0  # a side's slowest round median / its fastest above this: the rounds disagree
READS = 5  # reads of the run queue per sample, READ_GAP_S apart; their median is kept
READ_GAP_S = 0.002


def cpus_available() -> int:
    """The CPUs this process may run on (its affinity mask; all of them where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def others_runnable(proc: Path = Path("/proc")) -> int | None:
    """Threads of other processes running or waiting for a CPU right now: the kernel's `procs_running`
    (/proc/stat) less this process's threads in state R. None where /proc is not Linux's."""
    try:
        running = next(int(line.split()[1]) for line in (proc / "stat").read_text().splitlines()
                       if line.startswith("procs_running "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    ours = 0
    for task in (proc / "self" / "task").glob("*/stat"):
        try:
            state = task.read_text().rsplit(")", 1)[1].split()[0]  # the name may hold spaces and ')'
        except (OSError, IndexError):
            continue
        ours += state == "R"
    return max(0, running - ours)


def sample_others(reads: int = READS, gap_s: float = READ_GAP_S) -> int | None:
    """The median of `reads` reads of `others_runnable` (a passing spike is not contention)."""
    seen = []
    for i in range(reads):
        if i:
            time.sleep(gap_s)
        n = others_runnable()
        if n is None:
            return None
        seen.append(n)
    return int(statistics.median(seen))


def round_spread(round_p50: list[float | None]) -> float | None:
    """The slowest round median over the fastest; None with fewer than two rounds.

    >>> round_spread([1.0, None, 4.0, 2.0])
    4.0
    """
    vals = [v for v in round_p50 if v is not None and v > 0]
    return max(vals) / min(vals) if len(vals) >= 2 else None


def busy(others: int | None, threads: int, cpus: int) -> bool:
    """Other processes' runnable threads and ours do not fit on the CPUs we may use."""
    return others is not None and others + threads > cpus


def needs_control(others: int | None, threads: int, cpus: int, spreads: dict[str, float | None]) -> bool:
    """Measure each side on one thread too: the machine is busy or some side's rounds disagree, and the
    sides run on more than one thread (on one there is nothing to collapse)."""
    disagree = any(s is not None and s > ROUND_SPREAD for s in spreads.values())
    return threads > 1 and (busy(others, threads, cpus) or disagree)


def verdict(others: list[int | None], threads: int, cpus: int, spreads: dict[str, float | None],
            p50: dict[str, float], one_thread_p50: dict[str, float] | None) -> dict[str, Any]:
    """One cell's contention record: the evidence, the sides that collapsed, and whether its figures are
    unreliable (any reason at all). `others`: the samples of other processes' runnable threads
    (before and after the cell's timing)."""
    seen = [n for n in others if n is not None]
    worst = max(seen) if seen else None
    reasons = []
    if busy(worst, threads, cpus):
        reasons.append(f"{worst} runnable threads of other processes on {cpus} CPUs (and {threads} of ours)")
    for side, s in spreads.items():
        if s is not None and s > ROUND_SPREAD:
            reasons.append(f"{side}'s round medians span {s:.1f}x")
    collapsed = {}
    for side, t1 in (one_thread_p50 or {}).items():
        if side in p50 and t1 > 0 and p50[side] / t1 > COLLAPSE:
            collapsed[side] = p50[side] / t1
            reasons.append(f"{side} ran {collapsed[side]:.1f}x slower on {threads} threads than on 1")
    return {"others_runnable": seen, "cpus": cpus, "threads": threads,
            "round_spread": {k: v for k, v in spreads.items() if v is not None},
            "one_thread_p50": one_thread_p50, "collapsed": sorted(collapsed), "reasons": reasons,
            "unreliable": bool(reasons)}
