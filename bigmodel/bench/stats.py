"""Warm-latency statistics and speed-ups: pure functions over lists of seconds."""

from __future__ import annotations

import math
from typing import Any

from bigmodel.errors import InputError

NOISY_CV = 0.10  # warm-latency coefficient of variation above which the table warns
STAT_KEYS = ("p50", "p90", "p99", "mean", "min", "max", "cv")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an ascending list; q in [0, 100]."""
    if not sorted_values:
        raise InputError("percentile of an empty list")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(seconds: list[float]) -> dict[str, float]:
    """Warm statistics of per-run latencies (seconds): p50, p90, p99, mean, min, max, cv, n.

    cv = population standard deviation / mean (0 for one run).

    >>> summarize([1.0, 2.0, 3.0, 4.0])["p50"]
    2.5
    """
    if not seconds:
        raise InputError("no timings to summarize")
    s = sorted(float(v) for v in seconds)
    n = len(s)
    mean = sum(s) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in s) / n)
    return {"p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99), "mean": mean,
            "min": s[0], "max": s[-1], "cv": std / mean if mean > 0 else 0.0, "n": n}


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Set each result's `speedup_vs_torch` = torch p50 / its p50 for the same (role, batch); None without torch;
    and `speedup_vs_best_torch` = the p50 of the fastest torch-side form there (eager, CUDA graphs, torch.compile,
    AOTInductor: named in `best_torch`) / its p50.

    Results that carry `round_p50` (each round's median, bench's alternating rounds) also get
    `speedup_paired_vs_torch`: the median over rounds of torch's round median / theirs.
    """
    from bigmodel.bench.adapters import TORCH_BACKENDS
    from bigmodel.bench.timing import paired_ratio

    torch_rows = {(r["role"], r["batch"]): r for r in results if r["backend"] == "torch"}
    best: dict[tuple[str, int], dict[str, Any]] = {}  # the fastest torch-side form of each (role, batch)
    for r in results:
        cell = (r["role"], r["batch"])
        if r["backend"] in TORCH_BACKENDS and r["warm"]["p50"] > 0 and (
                cell not in best or r["warm"]["p50"] < best[cell]["warm"]["p50"]):
            best[cell] = r
    for r in results:
        b = best.get((r["role"], r["batch"]))
        r["best_torch"] = b["backend"] if b is not None else None
        r["speedup_vs_best_torch"] = b["warm"]["p50"] / r["warm"]["p50"] if b is not None and r["warm"]["p50"] > 0 \
            else None
        t = torch_rows.get((r["role"], r["batch"]))
        if r["backend"] == "torch":
            r["speedup_vs_torch"] = 1.0
        else:
            r["speedup_vs_torch"] = t["warm"]["p50"] / r["warm"]["p50"] if t is not None and r["warm"]["p50"] > 0 \
                else None
        if "round_p50" in r:
            r["speedup_paired_vs_torch"] = None if t is None or "round_p50" not in t else \
                paired_ratio({"torch": t["round_p50"], "this": r["round_p50"]}, "torch", "this")
        if "contention" in r:
            withhold_collapsed(r, r["contention"])


def withhold_collapsed(r: dict[str, Any], cell: dict[str, Any] | None) -> None:
    """A result of a cell measured under contention: `unreliable` set; no speed-up where torch or this
    backend collapsed (slower on its threads than on one: `speedup_withheld` says which), and the ratio
    of the one-thread controls in `speedup_one_thread_vs_torch` where both sides have one."""
    cell = cell or {}
    r["unreliable"] = bool(cell.get("unreliable"))
    one = cell.get("one_thread_p50") or {}
    r["speedup_one_thread_vs_torch"] = one["torch"] / one[r["backend"]] \
        if r["backend"] != "torch" and "torch" in one and one.get(r["backend"]) else None
    gone = [b for b in ("torch", r["backend"]) if b in cell.get("collapsed", ())]
    r["speedup_withheld"] = None
    if gone and r["backend"] != "torch":
        r["speedup_withheld"] = f"{' and '.join(dict.fromkeys(gone))} collapsed on {cell['threads']} threads"
        r["speedup_vs_torch"] = r["speedup_paired_vs_torch"] = None
