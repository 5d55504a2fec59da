"""What a person reads: the screen table's rows and the latency/throughput PNG."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel.errors import InputError


def write_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: per role, p50 latency vs batch (log-log) and throughput vs batch, one line per backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        from bigmodel.errors import missing_package

        raise missing_package("matplotlib", "train", "bench --plot") from e
    import io

    from bigmodel.fileio import atomic_write_bytes

    results = report["results"]
    roles = list(dict.fromkeys(r["role"] for r in results)) or ["(none)"]
    backends = list(dict.fromkeys(r["backend"] for r in results))
    fig, axes = plt.subplots(len(roles), 3, figsize=(16, 3.8 * len(roles)), squeeze=False)
    s = report["settings"]
    for row, role in zip(axes, roles, strict=True):
        for name in backends:
            pts = sorted((r["batch"], r["warm"]["p50"], r["throughput"], r["speedup_vs_torch"]) for r in results
                         if r["role"] == role and r["backend"] == name)
            if not pts:
                continue
            b, p50, thr, ups = zip(*pts, strict=True)
            style = {"marker": "o", "linestyle": "--" if name == "torch" else "-", "label": name}
            row[0].plot(b, [v * 1e3 for v in p50], **style)
            line = row[1].plot(b, thr, **style)[0]
            for x, y, up in zip(b, thr, ups, strict=True):
                if name != "torch" and up is not None:
                    row[1].annotate(f"{up:.1f}x", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                                    color=line.get_color())
            pct = sorted((r["batch"], r["roofline"]["gflops_pct"]) for r in results if r["role"] == role
                         and r["backend"] == name and (r.get("roofline") or {}).get("gflops_pct") is not None)
            if pct:
                row[2].plot(*zip(*pct, strict=True), **style)
        row[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency (ms)",
                   title=f"{role}: latency (lower is better)")
        row[1].set(xscale="log", yscale="log", xlabel="batch size", ylabel="samples / s",
                   title=f"{role}: throughput (higher is better)")
        row[2].set(xscale="log", xlabel="batch size", ylabel="% of the GEMM ceiling",
                   title=f"{role}: GFLOP/s as % of the best GEMM of its precision")
        row[2].axhline(100, color="grey", linewidth=0.8, linestyle=":")
        batches = sorted({r["batch"] for r in results if r["role"] == role})
        row[1].margins(x=0.08, y=0.12)  # room for the speed-up labels
        for ax in row:
            if batches:
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
    m = report["machine"]
    where = m["gpu"]["name"] if s["device"] == "cuda" and m.get("gpu") else m.get("cpu", "")
    busy = m.get("load_average_1m")
    busy = f"; load average {busy:.1f} on {m.get('logical_cpus')} CPUs" if busy and busy > (m.get("logical_cpus")
                                                                                            or 1) else ""
    fig.suptitle(f"bigmodel bench: {s['family']}/{s['arch']} {s['precision']} on {s['device']} ({where}, "
                 f"{s['threads']} threads{busy}); labels: speed-up over torch eager", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def parse_list(text: str | None, kind: type = str, what: str = "list") -> tuple | None:
    """'a,b,c' -> ('a', 'b', 'c') (or ints); None or '' -> None."""
    if text is None or not text.strip():
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return tuple(kind(t) for t in items)
    except ValueError as e:
        raise InputError(f"{what}: expected a comma-separated list of {kind.__name__}s; got {text!r}") from e


@dataclass
class TableRow:
    backend: str
    role: str
    batch: int
    cells: list[str] = field(default_factory=list)
    noisy: bool = False


def table_rows(report: dict[str, Any]) -> list[TableRow]:
    """The screen table: one row per result, times in ms, speed-ups as 1.00x."""
    rows = []
    for r in report["results"]:
        w, c = r["warm"], r["cold"]
        rows.append(TableRow(r["backend"], r["role"], r["batch"], [
            r["backend"], r["role"], str(r["batch"]), _ms(c["load_s"]), _ms(first_seconds(r)),
            _ms(w["p50"]), _ms(w["p90"]), _ms(w["p99"]), f"{w['cv'] * 100:.1f}%" + (" !" if r["noisy"] else ""),
            f"{r['throughput']:,.0f}" if r["throughput"] else "-", speed_cell(r), best_torch_cell(r),
            *_roofline_cells(r.get("roofline")),
        ], r["noisy"]))
    return rows


def first_seconds(r: dict[str, Any]) -> float:
    """The table's first-run time: the first run plus any Inductor build just before it (bench times that in
    prepare_s, as build_s): what the first call of a fresh process costs with torch.compile, or with aoti built
    on the spot."""
    c = r["cold"]
    return c["first_run_s"] + (c.get("build_s") or 0.0)


def best_torch_cell(r: dict[str, Any]) -> str:
    """'0.85x': the fastest torch-side form's p50 over this row's ('1.00x' on that form's own row)."""
    speed = r.get("speedup_vs_best_torch")
    mark = " ?" if r.get("unreliable") and r["backend"] != r.get("best_torch") else ""
    return (f"{speed:.2f}x" if speed is not None else "-") + mark


def speed_cell(r: dict[str, Any]) -> str:
    """'2.53x'; '2.53x ?' measured under contention; '- ?' withheld (a side collapsed); '-' without torch.
    torch's own row stays '1.00x' (the baseline, not a speed-up)."""
    speed = r["speedup_vs_torch"]
    mark = " ?" if r.get("unreliable") and r["backend"] != "torch" else ""
    return (f"{speed:.2f}x" if speed is not None else "-") + mark


def contention_lines(report: dict[str, Any]) -> list[str]:
    """Plain lines under the table: why cells are marked '?', which speed-ups were withheld, and the
    one-thread comparison in their place; nothing when every cell was measured on a quiet machine."""
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for r in report["results"]:
        if r.get("unreliable"):
            cells.setdefault((r["role"], r["batch"]), r["contention"])
    if not cells:
        return []
    lines = ["'?': measured while the machine was busy, so these speed-ups are unreliable; rerun on a quiet machine "
             "(or with --threads 1):"]
    for (role, batch), c in cells.items():
        lines.append(f"  {role} batch {batch}: {'; '.join(c['reasons'])}")
    for r in report["results"]:
        if r.get("speedup_withheld"):
            one = r.get("speedup_one_thread_vs_torch")
            alt = f"; with one thread each, {r['backend']} is {one:.2f}x torch" if one is not None else ""
            lines.append(f"  {r['backend']} {r['role']} batch {r['batch']}: no speed-up shown, "
                         f"{r['speedup_withheld']}{alt}")
    return lines


def _roofline_cells(roof: dict[str, Any] | None) -> list[str]:
    """'GFLOP/s (% of the GEMM ceiling)' and 'GB/s of weights (% of memcpy bandwidth)'."""
    if not roof:
        return ["-", "-"]

    def cell(value: float, pct: float | None) -> str:
        return f"{value:,.1f}" + (f" ({pct:.0f}%)" if pct is not None else "")

    return [cell(roof["gflops"], roof["gflops_pct"]), cell(roof["weights_gbs"], roof["bandwidth_pct"])]


TABLE_COLUMNS = ("backend", "role", "batch", "load ms", "first ms", "p50 ms", "p90 ms", "p99 ms", "cv",
                 "samples/s", "vs torch", "vs best", "GFLOP/s (%GEMM)", "GB/s (%bw)")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:,.0f}"
