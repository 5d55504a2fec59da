"""Big-model export: a GAN whose MLP generator holds >= 2.5 GiB of fp32 weights, through `export_bundle`.

Each stage runs in a fresh Python process so its peak RSS (getrusage ru_maxrss) is its own:

1. make      build the GAN (generator and discriminator both ~2.56 GiB with the default 5 x 13000 hidden
             layers; weights drawn directly, no training) and save a bigmodel checkpoint;
2. torch     torch.onnx's own exporter alone on the generator (external data): the baseline;
3. fp32      `export_bundle(run)`: every role to ONNX with external data, checker, the fp32 check
             against PyTorch (max abs <= 1e-5), manifest. Goal: peak RSS <= 1.5x the weights;
4. int8      `export_bundle(run, precision="int8", int8_mode=MODE)` for each of --int8-modes
             (default `weights`: int8 weight-only MatMulNBits; `dynamic` is the standard-ops alternative);
5. latency   batch-1 generator inference in onnxruntime (CPU), fp32 and each int8 bundle interleaved:
             median ms, the int8 speed-up (goal >= 3x in each of --runs fresh processes: batch 1 is
             bound by memory bandwidth), the GB/s of weights read, and fp32 against the floor set by
             this machine's memory bandwidth, measured in the same process (a 1 GiB memcpy, bytes
             read + written per second): weight bytes / that rate (goal: fp32 within 1.3x of it).

    python benchmarks/big_export.py [--hidden 13000] [--layers 5] [--int8-modes weights,dynamic]
                                    [--workdir DIR] [--keep] [--latency-only KEPT_DIR] [--runs 3]

Needs ~6 GiB of memory for the fp32 stage, ~9 GiB for int8, and ~14 GB of disk in --workdir.
About 4 minutes on an idle 2-vCPU machine with the default modes, 7 with `weights,dynamic`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

GIB = 1024**3
RSS_GOAL = 1.5
SPEEDUP_GOAL = 3.0
FLOOR_GOAL = 1.3  # fp32 batch-1 median / (weight bytes / memcpy bandwidth)

MAKE = """
import math, torch
from bigmodel.data import load_data
from bigmodel.models import create_model
from bigmodel.models.checkpoint import save_checkpoint
spec = load_data("mnist-5k").spec
with torch.device("meta"):
    # no spectral norm: its power-iteration vectors are buffers that to_empty leaves unset (NaN logits);
    # the generator, which this script times, has none either way
    model = create_model("gan", "mlp", spec, hidden=HIDDEN, spectral_norm=False)
model = model.to_empty(device="cpu")
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):  # PyTorch's default init range, drawn directly (no kaiming pass)
            bound = 1 / math.sqrt(m.in_features)
            m.weight.uniform_(-bound, bound, generator=g)
            m.bias.uniform_(-bound, bound, generator=g)
        elif hasattr(m, "reset_parameters") and not list(m.children()):
            m.reset_parameters()  # BatchNorm: unit scale, zero shift, fresh running statistics
save_checkpoint(RUN + "/checkpoint.pt", {"family": "gan", "arch": "mlp", "config": model.config.to_dict(),
                "data_spec": spec.to_dict(), "state_dict": model.state_dict(), "epoch": 0})
gen = sum(p.numel() * p.element_size() for p in model.generator.parameters())
total = sum(p.numel() * p.element_size() for p in model.parameters())
RESULT = {"generator_bytes": gen, "total_bytes": total}
"""

TORCH = """
import torch
from bigmodel.export.bundle import load_model
from bigmodel.models.base import Decode
model, _ = load_model(__import__("pathlib").Path(RUN + "/checkpoint.pt"))
gen = Decode(model.generator).eval()
del model
BASE = rss()
t = time.perf_counter()
z = torch.zeros(2, 100)
torch.onnx.export(gen, (z,), RUN + "/torch_only/generator.onnx", input_names=["z"], output_names=["x", "logits"],
                  dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True, external_data=True)
RESULT = {"seconds": time.perf_counter() - t, "weights": sum(p.numel() * 4 for p in gen.parameters())}
"""

EXPORT = """
from bigmodel.export import ExportOptions, export_bundle
import bigmodel.export.bundle, bigmodel.export.precision, onnxruntime
BASE = rss()
t = time.perf_counter()
r = export_bundle(RUN + "/checkpoint.pt", ExportOptions(out=OUT, force=True, **OPTS))
RESULT = {"seconds": time.perf_counter() - t, "roles": {x.role: {"bytes": x.bytes, "seconds": x.seconds,
          "max_abs_err": max(x.max_abs_err.values())} for x in r.roles}, "quality": r.quality}
"""

LATENCY = """
import numpy as np, onnxruntime as ort, statistics
from pathlib import Path
paths = {name: Path(RUN) / ("bundle-" + name) / "generator.onnx" for name in NAMES}
sessions = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for name, p in paths.items()}
z = np.random.default_rng(0).standard_normal((1, 100), dtype=np.float32)
for s in sessions.values():
    for _ in range(3):
        s.run(None, {"z": z})
times = {name: [] for name in sessions}
for i in range(ITERS):  # interleaved, order alternating: load on a shared machine hits all alike
    for name in (NAMES if i % 2 == 0 else NAMES[::-1]):
        t = time.perf_counter()
        sessions[name].run(None, {"z": z})
        times[name].append(time.perf_counter() - t)
src = np.ones(GIB // 4, np.float32)
dst = np.empty_like(src)
copies = []
for _ in range(5):
    t = time.perf_counter()
    np.copyto(dst, src)
    copies.append(time.perf_counter() - t)
del src, dst
RESULT = {"memcpy_gbs": 2 * GIB / min(copies) / 1e9}
RESULT.update({name: {"median_s": statistics.median(ts), "min_s": min(ts),
                 "weight_bytes": sum(f.stat().st_size for f in paths[name].parent.glob("generator.onnx*")),
                 "paired": statistics.median(a / b for a, b in zip(times["fp32"], ts, strict=True))}
          for name, ts in times.items()})
"""

PRELUDE = """
import json, resource, sys, time
GIB = 1024**3
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
BASE = 0
"""

EPILOGUE = """
RESULT["peak_rss"] = rss()
RESULT["base_rss"] = BASE
print("@@RESULT@@" + json.dumps(RESULT))
"""


def stage(code: str, **values) -> dict:
    """Run `code` in a fresh interpreter with `values` bound as globals; returns its RESULT dict."""
    header = "".join(f"{k} = {v!r}\n" for k, v in values.items())
    script = PRELUDE + header + textwrap.dedent(code) + EPILOGUE
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"stage failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@"))
    return json.loads(line.removeprefix("@@RESULT@@"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=13000, help="width of each hidden layer")
    ap.add_argument("--layers", type=int, default=5, help="number of hidden layers")
    ap.add_argument("--iters", type=int, default=20, help="timed batch-1 runs per precision")
    ap.add_argument("--workdir", type=Path, default=None, help="where the work folder goes (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--int8-modes", default="weights",
                    help="comma-separated int8 modes to export and time: weights, dynamic, static")
    ap.add_argument("--latency-only", type=Path, default=None, help="only time the bundles of a kept work folder")
    ap.add_argument("--runs", type=int, default=3, help="latency stages, each in a fresh process; goals must hold "
                    "in every one")
    args = ap.parse_args()
    if args.latency_only:
        names = ("fp32", *sorted(p.name.removeprefix("bundle-") for p in args.latency_only.glob("bundle-int8*")))
        latency_runs(str(args.latency_only), args.iters, names, args.runs)
        return
    run = tempfile.mkdtemp(prefix="big_export.", dir=args.workdir)
    Path(run, "torch_only").mkdir()
    hidden = (args.hidden,) * args.layers
    print(f"work folder: {run}")

    t = time.perf_counter()
    made = stage(MAKE, HIDDEN=hidden, RUN=run)
    gen, total = made["generator_bytes"], made["total_bytes"]
    print(f"make:   GAN mlp hidden {args.layers} x {args.hidden}: generator {gen / GIB:.2f} GiB, discriminator "
          f"{(total - gen) / GIB:.2f} GiB, total {total / GIB:.2f} GiB fp32 ({time.perf_counter() - t:.0f}s)")

    base = stage(TORCH, RUN=run)
    print(f"torch:  torch.onnx.export alone, generator: {base['seconds']:.1f}s, peak RSS "
          f"{base['peak_rss'] / GIB:.2f} GiB = {base['peak_rss'] / gen:.2f}x its weights "
          f"(RSS before export {base['base_rss'] / GIB:.2f} GiB, model loaded)")

    fp32 = stage(EXPORT, RUN=run, OUT=f"{run}/bundle-fp32", OPTS={})
    ratio = fp32["peak_rss"] / total
    print(f"fp32:   export_bundle, both roles: {fp32['seconds']:.1f}s, peak RSS {fp32['peak_rss'] / GIB:.2f} GiB = "
          f"{ratio:.2f}x the weights (goal <= {RSS_GOAL}x: {'met' if ratio <= RSS_GOAL else 'MISSED'}; RSS after "
          f"imports {fp32['base_rss'] / GIB:.2f} GiB)")
    for role, r in fp32["roles"].items():
        print(f"        {role}: {r['bytes'] / GIB:.2f} GiB ONNX+data, {r['seconds']:.1f}s, "
              f"max |onnx - torch| {r['max_abs_err']:.2e}")

    modes = [m for m in args.int8_modes.split(",") if m]
    for mode in modes:
        int8 = stage(EXPORT, RUN=run, OUT=f"{run}/bundle-int8-{mode}", OPTS={"precision": "int8", "int8_mode": mode})
        print(f"int8:   export_bundle --precision int8 --int8-mode {mode}: {int8['seconds']:.1f}s, peak RSS "
              f"{int8['peak_rss'] / GIB:.2f} GiB")
        for role, q in int8["quality"].items():
            print(f"        {role}: {int8['roles'][role]['bytes'] / GIB:.2f} GiB, vs fp32 max {q['max_abs']:.3g} "
                  f"mean {q['mean_abs']:.3g}" + (f" PSNR {q['psnr_db']:.1f} dB" if "psnr_db" in q else ""))

    latency_runs(run, args.iters, ("fp32", *(f"int8-{m}" for m in modes)), args.runs)
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)


def latency_runs(run: str, iters: int, names: tuple[str, ...], runs: int) -> None:
    """`runs` latency stages in fresh processes; the goals are met only when met in every one."""
    verdicts = [report_latency(stage(LATENCY, RUN=run, ITERS=iters, NAMES=names), i + 1) for i in range(runs)]
    print(f"goals met in {sum(verdicts)} of {runs} runs (int8 >= {SPEEDUP_GOAL}x fp32 for the best int8 mode, "
          f"fp32 <= {FLOOR_GOAL}x the bandwidth floor)")


def report_latency(lat: dict, run: int = 1) -> bool:
    """Print one latency stage; True when its goals are met."""
    bandwidth = lat["memcpy_gbs"]
    lat = {name: r for name, r in lat.items() if isinstance(r, dict)}  # not the stage's RSS figures
    print(f"run {run}: memcpy {bandwidth:.1f} GB/s (read + write)")
    for name, r in lat.items():
        print(f"batch 1 {name}: median {r['median_s'] * 1e3:.1f} ms (min {r['min_s'] * 1e3:.1f}), weights "
              f"{r['weight_bytes'] / GIB:.2f} GiB -> {r['weight_bytes'] / r['median_s'] / 1e9:.1f} GB/s read")
    best = 0.0
    for name, r in lat.items():
        if name == "fp32":
            continue
        speedup = lat["fp32"]["median_s"] / r["median_s"]
        best = max(best, speedup)
        print(f"{name} speed-up at batch 1: {speedup:.2f}x (ratio of medians; median of paired ratios "
              f"{r['paired']:.2f}x; goal >= {SPEEDUP_GOAL}x: {'met' if speedup >= SPEEDUP_GOAL else 'MISSED'})")
    fp32 = lat["fp32"]
    floor = fp32["weight_bytes"] / (bandwidth * 1e9)
    ratio = fp32["median_s"] / floor
    print(f"fp32 batch 1 vs the bandwidth floor ({fp32['weight_bytes'] / GIB:.2f} GiB at {bandwidth:.1f} GB/s = "
          f"{floor * 1e3:.1f} ms): {ratio:.2f}x (goal <= {FLOOR_GOAL}x: {'met' if ratio <= FLOOR_GOAL else 'MISSED'})")
    return best >= SPEEDUP_GOAL and ratio <= FLOOR_GOAL


if __name__ == "__main__":
    main()
