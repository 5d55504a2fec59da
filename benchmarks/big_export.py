"""Big-model export: a GAN whose MLP generator holds >= 2.5 GiB of fp32 weights, through `export_bundle`.

Each stage runs in a fresh Python process so its peak RSS (getrusage ru_maxrss) is its own:

1. make      build the GAN (generator and discriminator both ~2.56 GiB with the default 5 x 13000 hidden
             layers; weights drawn directly, no training) and save a bigmodel checkpoint;
2. torch     torch.onnx's own exporter alone on the generator (external data): the baseline;
3. fp32      `export_bundle(run)`: every role to ONNX with external data, checker, the fp32 check
             against PyTorch (max abs <= 1e-5), manifest. Goal: peak RSS <= 1.5x the weights;
4. int8      `export_bundle(run, precision="int8", int8_mode=MODE)` for each of --int8-modes
             (default `weights`: int8 weight-only MatMulNBits; `dynamic` is the standard-ops alternative);
5. latency   batch-1 `Model.decode` of each bundle (bigmodel.runtime, ort-cpu), fp32 and each int8
             interleaved: median ms, the int8 speed-up (goal >= 3x in each of --runs fresh processes:
             batch 1 is bound by memory bandwidth), the GB/s of weights read, and fp32 against the
             floor set by this machine's memory bandwidth, measured in the same iterations: weight
             bytes / the fastest of a 1 GiB memcpy (bytes read + written per second) and read-only
             sums of it on 1 and on all cores (goal: fp32 within 1.3x). Both goals are judged on the
             median of per-iteration ratios (every side runs once per iteration, so a busy spell on
             a shared machine hits both terms of a ratio alike); the ratio of medians is printed too.

    python benchmarks/big_export.py [--hidden 13000] [--layers 5] [--int8-modes weights,dynamic]
                                    [--workdir DIR] [--keep] [--latency-only KEPT_DIR] [--runs 3]

Needs ~6 GiB of memory for the fp32 stage, ~13 GiB for int8 (weights mode: 12.6 GiB peak RSS measured),
~6 GiB for the latency stage (fp32 + int8 sessions and two 1 GiB arrays), and ~14 GB of disk in --workdir.
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
import numpy as np, os, statistics, threading
from pathlib import Path
from bigmodel.runtime import load
from bigmodel.runtime.backends.ort import physical_cores
bundles = {name: Path(RUN) / ("bundle-" + name) for name in NAMES}
models = {name: load(b, backend="ort-cpu", verify=False) for name, b in bundles.items()}  # bigmodel's sessions
threads = physical_cores()
z = np.random.default_rng(0).standard_normal((1, 100), dtype=np.float32)
# the bandwidth sides move 1 GiB: a memcpy (read + write counted, as STREAM's copy does) and read-only
# sums (no writes) on one thread and on every core, each thread summing its share (reductions release the GIL)
src = np.ones(GIB // 4, np.float32)
dst = np.empty_like(src)
parts = np.array_split(src, threads)

def read_all():
    ts = [threading.Thread(target=np.add.reduce, args=(p,)) for p in parts]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

moved = {"memcpy": 2 * GIB, "read_1": GIB, "read_" + str(threads): GIB}
sides = {**{name: (lambda m=m: m.decode(z)) for name, m in models.items()}, "memcpy": lambda: np.copyto(dst, src),
         "read_1": lambda: np.add.reduce(src), "read_" + str(threads): read_all}
for fn in sides.values():
    for _ in range(2):
        fn()
times = {k: [] for k in sides}
order = list(sides)
for i in range(ITERS):  # every side once per iteration, order alternating: load hits all alike
    for k in (order if i % 2 == 0 else order[::-1]):
        t = time.perf_counter()
        sides[k]()
        times[k].append(time.perf_counter() - t)
# per iteration, the fastest rate any bandwidth side reached then
rate = [max(moved[k] / times[k][i] for k in moved) for i in range(ITERS)]
smaps = open("/proc/self/smaps_rollup").read()
RESULT = {"bandwidth_gbs": {k: moved[k] / statistics.median(times[k]) / 1e9 for k in moved},
          "bandwidth_best_gbs": {k: moved[k] / min(times[k]) / 1e9 for k in moved}, "threads": threads,
          "thp": open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip(),
          "anon_huge_gib": int(smaps.split("AnonHugePages:")[1].split()[0]) * 1024 / GIB,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}
for name in models:
    w = sum(f.stat().st_size for f in bundles[name].glob("generator.onnx*"))
    ts = times[name]
    RESULT[name] = {"median_s": statistics.median(ts), "min_s": min(ts), "weight_bytes": w,
                    "paired": statistics.median(a / b for a, b in zip(times["fp32"], ts, strict=True)),
                    "floor_paired": statistics.median(t / (w / r) for t, r in zip(ts, rate, strict=True)),
                    "floor_s": statistics.median(w / r for r in rate)}
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
    rates, best_rates = lat["bandwidth_gbs"], lat["bandwidth_best_gbs"]
    memory = (f"THP {lat['thp']}, {lat['anon_huge_gib']:.2f} GiB in huge pages"
              + (f", GLIBC_TUNABLES={lat['glibc_tunables']}" if lat.get("glibc_tunables") else ""))
    lat = {name: r for name, r in lat.items() if isinstance(r, dict) and "median_s" in r}
    print(f"run {run}: bandwidth GB/s, median (best) of the runs interleaved with the models': "
          + ", ".join(f"{k} {v:.1f} ({best_rates[k]:.1f})" for k, v in rates.items()) + f"; {memory}")
    for name, r in lat.items():
        print(f"batch 1 {name}: median {r['median_s'] * 1e3:.1f} ms (min {r['min_s'] * 1e3:.1f}), weights "
              f"{r['weight_bytes'] / GIB:.2f} GiB -> {r['weight_bytes'] / r['median_s'] / 1e9:.1f} GB/s read")
    best = 0.0
    for name, r in lat.items():
        if name == "fp32":
            continue
        speedup = r["paired"]
        best = max(best, speedup)
        print(f"{name} speed-up at batch 1: {speedup:.2f}x (median of the per-iteration fp32/{name} ratios; ratio "
              f"of medians {lat['fp32']['median_s'] / r['median_s']:.2f}x; goal >= {SPEEDUP_GOAL}x: "
              f"{'met' if speedup >= SPEEDUP_GOAL else 'MISSED'})")
    fp32 = lat["fp32"]
    ratio = fp32["floor_paired"]
    print(f"fp32 batch 1 vs the bandwidth floor ({fp32['weight_bytes'] / GIB:.2f} GiB at the fastest bandwidth side "
          f"of the same iteration; median floor {fp32['floor_s'] * 1e3:.1f} ms): {ratio:.2f}x (median of the "
          f"per-iteration ratios; ratio of medians {fp32['median_s'] / fp32['floor_s']:.2f}x; goal <= {FLOOR_GOAL}x: "
          f"{'met' if ratio <= FLOOR_GOAL else 'MISSED'})")
    return best >= SPEEDUP_GOAL and ratio <= FLOOR_GOAL


if __name__ == "__main__":
    main()
