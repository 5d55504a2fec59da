"""Reduced precision against fp32 on the CPU backends: does int8 / bf16 pay, per batch, and how close to its ceiling?

For the VAE decoder and the GAN generator (bigmodel's MLP defaults, trained 3 epochs here unless
--runs has them), one bundle each is exported with every precision verified (`--precision
fp32,int8,bf16`; bf16 only where the CPU has bf16 arithmetic). Every (backend, precision) the bundle
can run is timed through the runtime (`Model.run`, what applications call) in alternating rounds in
this one process, so a busy spell on a shared machine hits all of them alike. Printed per batch:
p50 ms of each form, each reduced form's speed-up over fp32 on the same backend, the best verified
reduced form against the best fp32 form (any backend), the share of the graph's GEMM FLOPs each
engine runs in int8 (read at export from onnxruntime's optimized / OpenVINO's executed graph), and
the best reduced form's GOP/s as % of its ceiling (the best int8 or bf16 GEMM an installed library
runs on the same shapes, measured now: bigmodel.bench.roofline). At batch 256 and up, onnxruntime's own
profile of the int8 session splits its time: the integer kernels (and their GOP/s against the ceiling)
and each float operator type around them.

    python benchmarks/precision_speed.py [--runs DIR] [--batches 1,16,256,1024] [--seconds 0.6] [--json F]

Goal (issue 21): best verified reduced >= 2x best fp32 at batch 256 and 1024, never slower than fp32
at 1 and 16, within 80% of its ceiling at 1024. The "fastest" column is what load(...,
precision="fastest") would pick from a tune table measured like this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

CASES = (("vae", "decoder"), ("gan", "generator"))
BACKENDS = ("ort-cpu", "ov-cpu")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def bundle_for(runs: Path, family: str, precisions: str) -> Path:
    """runs/FAMILY trained (3 epochs) and exported with every precision, once; reused when present."""
    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.export.options import split_precisions
    from bigmodel.training.loop import TrainSettings, train

    run = runs / family
    if not (run / "checkpoint.pt").is_file():
        train(TrainSettings(family=family, epochs=3, out=str(run), device="cpu"))
    bundle = run / "bundle-forms"
    if not (bundle / "manifest.json").is_file():
        primary, forms = split_precisions(precisions)
        export_bundle(run / "checkpoint.pt", ExportOptions(out=bundle, precision=primary, forms=forms))
    return bundle


def measure(bundle: Path, role: str, batches: list[int], threads: int, seconds: float, rounds: int) -> dict:
    """p50 seconds per (batch, 'backend:precision'), the int8 shares, and the ceilings per batch."""
    from bigmodel.bench.adapters import role_inputs
    from bigmodel.bench.roofline import bf16_gemm_ceiling, gemm_ceiling, graph_cost, int8_gemm_ceiling
    from bigmodel.bench.timing import alternate
    from bigmodel.errors import BackendUnavailable
    from bigmodel.manifest import read_manifest
    from bigmodel.runtime import load

    manifest = read_manifest(bundle)
    models, skipped = {}, {}
    for backend in BACKENDS:
        for precision in manifest.precisions:
            try:
                models[f"{backend}:{precision}"] = load(bundle, backend=backend, precision=precision, threads=threads)
            except BackendUnavailable as e:
                skipped[f"{backend}:{precision}"] = str(e)
    cost = graph_cost(bundle / manifest.roles[role].file)
    out = {"p50_s": {}, "ceilings": {}, "skipped": skipped, "gflop_per_sample": cost.flops_per_sample / 1e9,
           "int8_share": (manifest.forms["int8"].quality.get(role, {}).get("int8_flops_share", {})
                          if "int8" in manifest.forms else {})}
    for batch in batches:
        feeds = role_inputs(manifest, role, batch, seed=0)
        sides = {k: (lambda m=m, feeds=feeds: m.run(role, feeds)) for k, m in models.items()}
        times = alternate(sides, rounds, seconds / rounds, min_runs=3 * rounds)
        out["p50_s"][batch] = {k: statistics.median(t) for k, t in times.items()}
        out["ceilings"][batch] = {"fp32": gemm_ceiling(cost, batch, threads),
                                  "int8": int8_gemm_ceiling(cost, batch, threads),
                                  "bf16": bf16_gemm_ceiling(cost, batch, threads)}
        print(f"  {role} batch {batch} measured (load {load_average()})", file=sys.stderr, flush=True)
    for m in models.values():
        m.close()
    if "int8" in manifest.forms:
        out["ort_split_us"] = {b: ort_time_split(bundle, role, b, threads) for b in batches if b >= 256}
    return out


def ort_time_split(bundle: Path, role: str, batch: int, threads: int, runs: int = 50) -> dict:
    """Where ort-cpu's int8 time goes at `batch`: mean us per run in integer kernels and in each float op type,
    from onnxruntime's own profile of the session bigmodel's runtime creates (same options, same graph)."""
    import json
    import tempfile

    from bigmodel.bench.adapters import role_inputs
    from bigmodel.export.executed import ORT_INT8_OPS
    from bigmodel.manifest import read_manifest
    from bigmodel.runtime.backends.ort import disabled_optimizers, import_ort, session_options

    ort = import_ort()
    manifest = read_manifest(bundle).form("int8")
    feeds = role_inputs(manifest, role, batch, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        opts = session_options(ort, threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "split")
        session = ort.InferenceSession(str(bundle / manifest.roles[role].file), opts,
                                       providers=["CPUExecutionProvider"],
                                       disabled_optimizers=disabled_optimizers("int8"))
        for _ in range(5 + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    split: dict[str, float] = {}
    kernel_events = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    for e in kernel_events[-runs * len({x["name"] for x in kernel_events}):]:  # the last `runs` runs
        op = e["args"]["op_name"]
        key = "int8 kernels" if op in ORT_INT8_OPS else op
        split[key] = split.get(key, 0.0) + e["dur"] / runs
    return split


def rows(result: dict) -> list[dict]:
    """One row per batch: ms per form, speed-ups, the best reduced form and its % of ceiling."""
    table = []
    for batch, p50 in result["p50_s"].items():
        fp32 = {k: v for k, v in p50.items() if k.endswith(":fp32")}
        reduced = {k: v for k, v in p50.items() if not k.endswith(":fp32")}
        best32 = min(fp32, key=fp32.get)
        row = {"batch": batch, "ms": {k: v * 1e3 for k, v in p50.items()}, "best_fp32": best32,
               "vs_own_fp32": {k: p50[k.split(":")[0] + ":fp32"] / v for k, v in reduced.items()
                               if k.split(":")[0] + ":fp32" in p50},
               "fastest": min(p50, key=p50.get)}
        if reduced:
            best = min(reduced, key=reduced.get)
            ceiling = result["ceilings"][batch].get(best.split(":")[1])
            achieved = result["gflop_per_sample"] * batch / reduced[best]  # GOP/s
            row.update(best_reduced=best, reduced_vs_best_fp32=fp32[best32] / reduced[best],
                       achieved_gops=achieved, ceiling_gops=ceiling,
                       pct_of_ceiling=100 * achieved / ceiling if ceiling else None)
        table.append(row)
    return table


def print_table(name: str, result: dict, table: list[dict]) -> None:
    keys = sorted({k for r in table for k in r["ms"]})
    share = ", ".join(f"{b} {v:.0%}" for b, v in result["int8_share"].items()) or "no int8 form"
    print(f"\n{name}: {result['gflop_per_sample'] * 1e3:.2f} MFLOP/sample; int8 share of GEMM FLOPs: {share}")
    print("| batch | " + " | ".join(f"{k} ms" for k in keys)
          + " | best reduced | vs best fp32 | % of its ceiling | fastest |")
    print("|---:|" + "---:|" * len(keys) + "---|---:|---:|---|")
    for r in table:
        cells = [f"{r['ms'][k]:.3f}" + (f" ({r['vs_own_fp32'][k]:.2f}x)" if k in r["vs_own_fp32"] else "")
                 if k in r["ms"] else "-" for k in keys]
        pct = f"{r['pct_of_ceiling']:.0f}%" if r.get("pct_of_ceiling") is not None else "n/a"
        print(f"| {r['batch']} | " + " | ".join(cells)
              + f" | {r.get('best_reduced', '-')} | {r.get('reduced_vs_best_fp32', float('nan')):.2f}x | {pct} "
              f"| {r['fastest']} |")
    for k, why in result["skipped"].items():
        print(f"  (not run: {k}: {why[:140]})")
    for batch, split in result.get("ort_split_us", {}).items():
        ceiling = result["ceilings"][batch].get("int8")
        kernels = split.get("int8 kernels", 0.0)
        int8_flops = result["gflop_per_sample"] * result["int8_share"].get("ort-cpu", 1.0)  # what the kernels do
        rate = int8_flops * batch / (kernels * 1e-6) if kernels else None
        at = f" ({rate:.0f} GOP/s, {100 * rate / ceiling:.0f}% of the ceiling)" if rate and ceiling else ""
        rest = ", ".join(f"{k} {v:.0f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1])
                         if k != "int8 kernels")
        print(f"  ort-cpu:int8 batch {batch}, onnxruntime's profile (us per run): int8 kernels {kernels:.0f}{at}; "
              f"the rest {sum(split.values()) - kernels:.0f}: {rest}")


def goals(table: list[dict]) -> list[str]:
    """The issue's goals, each met or not, from one role's rows."""
    out = []
    for r in table:
        x = r.get("reduced_vs_best_fp32")
        if x is None:
            continue
        if r["batch"] >= 256:
            out.append(f"batch {r['batch']}: best reduced {x:.2f}x best fp32 (goal >= 2x): "
                       + ("met" if x >= 2 else "NOT met"))
        else:
            out.append(f"batch {r['batch']}: best reduced {x:.2f}x best fp32 (goal: not slower): "
                       + ("met" if x >= 1 else "NOT met"))
        if r["batch"] == 1024 and r.get("pct_of_ceiling") is not None:
            out.append(f"batch 1024: {r['pct_of_ceiling']:.0f}% of the {r['best_reduced'].split(':')[1]} ceiling "
                       "(goal >= 80%): " + ("met" if r["pct_of_ceiling"] >= 80 else "NOT met"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("/tmp/bigmodel-precision-speed"))
    ap.add_argument("--batches", default="1,16,256,1024")
    ap.add_argument("--seconds", type=float, default=0.6, help="timed seconds per form and batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from bigmodel.runtime.backends.openvino import bf16_reason
    from bigmodel.runtime.backends.ort import physical_cores
    from bigmodel.runtime.tuning import cpu_model

    precisions = "fp32,int8,bf16" if bf16_reason() is None else "fp32,int8"
    threads = physical_cores()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {threads} threads, {platform.python_version()}; "
          f"load average at start: {load_average()}")
    report = {"machine": cpu_model(), "threads": threads, "load_start": load_average(), "cases": {}}
    for family, role in CASES:
        bundle = bundle_for(args.runs, family, precisions)
        result = measure(bundle, role, batches, threads, args.seconds, args.rounds)
        table = rows(result)
        print_table(f"{family} {role} ({bundle})", result, table)
        for line in goals(table):
            print("  " + line)
        report["cases"][f"{family} {role}"] = {"result": result, "rows": table}
    report["load_end"] = load_average()
    print(f"\nload average at end: {report['load_end']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
