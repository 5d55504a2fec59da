"""Timing several sides fairly on a shared machine: alternating rounds, every run timed on its own.

One harness for `bigmodel bench`, `bigmodel tune` and the scripts in benchmarks/: each side (a
backend, torch, a numpy GEMM) runs in short rounds, the sides taking turns in a new seeded random
order every round, so a busy spell, a frequency change or another side's still-spinning worker
threads hit every side alike instead of whichever happened to be measured then. Figures are
statistics over all of a side's runs (bench and tune report the median).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

MAX_RUNS_PER_SLICE = 50_000  # a slice of a very fast side stops here (a bound on memory, not on time)


def split_runs(total: int, rounds: int) -> list[int]:
    """`total` runs spread over `rounds` rounds as evenly as they go (earlier rounds take the remainder).

    >>> split_runs(7, 3)
    [3, 2, 2]
    """
    q, r = divmod(total, rounds)
    return [q + (i < r) for i in range(rounds)]


def alternate(sides: dict[str, Callable[[], Any]], rounds: int, seconds: float | None = None, *,
              runs: int | None = None, warmup: int = 3, min_runs: int = 3, seed: int = 0,
              failed: dict[str, BaseException] | None = None,
              per_round: dict[str, list[float | None]] | None = None) -> dict[str, list[float]]:
    """Every run's seconds per side: `rounds` rounds, each side once per round for ~`seconds` (or `runs`
    runs in all, spread over the rounds), in a new random order each round (seeded).

    Each side first runs `warmup` untimed calls. A slice of `seconds` runs until that much time has
    passed (at least ceil(min_runs / rounds) runs, at most MAX_RUNS_PER_SLICE), so a side whose first
    calls were slow still gets its share of the time. With `failed` (a dict), a side that raises is
    dropped from the later rounds and its exception stored there under its name; without it the
    exception propagates. With `per_round` (a dict), each side's median of every round is stored
    there (None for a round it did not run), for `paired_ratio`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1; got {rounds}")
    if (seconds is None) == (runs is None):
        raise ValueError("give seconds per round or runs in all, not both")
    clock = time.perf_counter_ns
    times: dict[str, list[float]] = {k: [] for k in sides}
    live = dict(sides)

    def guarded(name: str, step: Callable[[], None]) -> None:
        if failed is None:
            step()
            return
        try:
            step()
        except Exception as e:  # a backend failing mid-measurement (memory, a profile) stops only itself
            failed[name] = e
            live.pop(name, None)

    for name, fn in list(live.items()):
        def warm(fn=fn) -> None:
            for _ in range(warmup):
                fn()
        guarded(name, warm)
    shares = split_runs(runs, rounds) if runs is not None else None
    floor = max(1, -(-min_runs // rounds))
    budget = int((seconds or 0.0) * 1e9)
    order = random.Random(seed)
    for i in range(rounds):
        names = list(live)
        order.shuffle(names)
        for name in names:
            out = times[name]
            before = len(out)

            def slice_(fn=live[name], out=out, i=i) -> None:
                if shares is not None:
                    for _ in range(shares[i]):
                        t0 = clock()
                        fn()
                        out.append((clock() - t0) / 1e9)
                    return
                start = clock()
                for k in range(1, MAX_RUNS_PER_SLICE + 1):
                    t0 = clock()
                    fn()
                    t1 = clock()
                    out.append((t1 - t0) / 1e9)
                    if k >= floor and t1 - start >= budget:
                        break
            guarded(name, slice_)
            if per_round is not None:
                per_round.setdefault(name, [None] * i).append(statistics.median(out[before:]) if len(out) > before
                                                              else None)
        if per_round is not None:
            for name in sides:
                per_round.setdefault(name, [])
                per_round[name] += [None] * (i + 1 - len(per_round[name]))
    return times


def paired_ratio(per_round: dict[str, list[float | None]], base: str, other: str) -> float | None:
    """Median over the rounds both ran of base's round median / other's: each pair of medians comes from
    runs made within a fraction of a second, so a machine that switches speed (a busy spell, another
    VM, a clock change) moves both alike and the ratio keeps still where a ratio of overall medians
    jumps with the share of slow rounds each side happened to get. None without a common round.

    >>> paired_ratio({"a": [4.0, 8.0, None], "b": [1.0, 4.0, 2.0]}, "a", "b")
    3.0
    """
    pairs = [a / b for a, b in zip(per_round.get(base, ()), per_round.get(other, ()), strict=False)
             if a is not None and b is not None and b > 0]
    return statistics.median(pairs) if pairs else None


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    """The median of each side's runs (sides without runs left out)."""
    return {k: statistics.median(v) for k, v in times.items() if v}
