"""Cold start: the torch-free runtime against the PyTorch path, each in fresh processes.

runtime: `from bigmodel.runtime import load` + `load(bundle, device="cpu")` + the first `decode`.
torch:   `import torch` + build the model from the run's checkpoint.pt (`torch.load(weights_only=True)`)
         + the first forward of the same role (decoder / generator) on the same codes.

Each side runs in `--runs` fresh interpreters (alternating, so drift in the machine's speed hits
both alike). Printed per side: the median time measured inside the process from its first line to
the first output (import + load + first inference) and the best run of it, the median wall time
of the whole process (interpreter start and exit included), and the median peak RSS (VmHWM).
Goals: runtime <= 0.3 s, >= 5x faster than the torch path, peak RSS <= 100 MB.

    python benchmarks/cold_start.py [BUNDLE] [--runs 7] [--threads N]

Without BUNDLE, a default VAE (MLP) is trained for one epoch and exported into a temporary folder.
The bundle's run directory (its parent, holding checkpoint.pt) serves the torch side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 0.3
GOAL_RATIO = 5.0
GOAL_RSS_MB = 100.0

RUNTIME = r"""
import time
t0 = time.perf_counter()
from bigmodel.runtime import load
import numpy as np
m = load({bundle!r}, device="cpu", threads={threads})
x = m.decode(np.zeros((1, m.latent_dim), np.float32))
t1 = time.perf_counter()
import json, sys
{peak}
print(json.dumps({{"seconds": t1 - t0, "rss_mb": peak_mb(), "torch_imported": "torch" in sys.modules,
                  "shape": list(x.shape)}}))
"""

TORCH = r"""
import time
t0 = time.perf_counter()
import torch
{threads_line}
from bigmodel.models.checkpoint import load_checkpoint, model_from_checkpoint
model = model_from_checkpoint(load_checkpoint({checkpoint!r})).eval()
role = model.role_module(model.image_role)
with torch.inference_mode():
    x = role(torch.zeros(1, model.config.latent_dim))[0]  # (images, logits)
t1 = time.perf_counter()
import json
{peak}
print(json.dumps({{"seconds": t1 - t0, "rss_mb": peak_mb(), "shape": list(x.shape)}}))
"""


# Peak RSS of this process image: VmHWM from /proc (ru_maxrss would include the parent's size at the
# fork that spawned us: Linux carries the high-water mark across exec).
PEAK = r"""
def peak_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""


def default_bundle(folder: str) -> Path:
    """Train the default VAE (MLP) for one epoch and export it; returns the bundle folder."""
    from bigmodel.export import export_bundle
    from bigmodel.training.loop import TrainSettings, train

    result = train(TrainSettings(family="vae", arch="mlp", epochs=1, out=str(Path(folder) / "vae")))
    return export_bundle(result.out).bundle


def bundle_from_args(bundle: str | None, tmp: str) -> Path:
    if bundle:
        return Path(bundle)
    print("no bundle given: training a default VAE (MLP) for 1 epoch and exporting it ...", file=sys.stderr)
    return default_bundle(tmp)


def run_child(code: str) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="0")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", help="bundle folder (default: train + export a VAE MLP)")
    ap.add_argument("--runs", type=int, default=7, help="fresh processes per side (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="threads for both sides (default: library defaults)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bigmodel-cold-") as tmp:
        bundle = bundle_from_args(args.bundle, tmp).resolve()
        checkpoint = bundle.parent / "checkpoint.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"{checkpoint} not found: the torch side needs the bundle's run directory")
        rt_code = RUNTIME.format(bundle=str(bundle), threads=args.threads, peak=PEAK)
        th_line = f"torch.set_num_threads({args.threads})" if args.threads else ""
        th_code = TORCH.format(checkpoint=str(checkpoint), threads_line=th_line, peak=PEAK)
        run_child(rt_code), run_child(th_code)  # warm the page cache; not counted
        rt, th = [], []
        for i in range(args.runs):
            pair = [(rt, rt_code), (th, th_code)]
            for store, code in pair if i % 2 == 0 else pair[::-1]:
                store.append(run_child(code))
    if any(r["torch_imported"] for r in rt):
        raise SystemExit("the runtime side imported torch")

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    r_s, t_s = med(rt, "seconds"), med(th, "seconds")
    r_w, t_w = med(rt, "wall"), med(th, "wall")
    r_m, t_m = med(rt, "rss_mb"), med(th, "rss_mb")
    print(f"bundle: {bundle}   runs: {args.runs} fresh processes per side   python {sys.version.split()[0]}")
    print(f"{'path':<10}{'import+load+first (s)':>24}{'best of runs (s)':>18}{'process wall (s)':>18}"
          f"{'peak RSS (MB)':>15}")
    for name, rows, s, w, mb in (("runtime", rt, r_s, r_w, r_m), ("torch", th, t_s, t_w, t_m)):
        print(f"{name:<10}{s:>24.3f}{min(r['seconds'] for r in rows):>18.3f}{w:>18.3f}{mb:>15.1f}")
    checks = [
        (f"runtime import+load+first <= {GOAL_SECONDS} s", f"{r_s:.3f} s", r_s <= GOAL_SECONDS),
        (f"torch / runtime >= {GOAL_RATIO:.0f}x (in-process)", f"{t_s / r_s:.1f}x", t_s / r_s >= GOAL_RATIO),
        (f"torch / runtime >= {GOAL_RATIO:.0f}x (process wall)", f"{t_w / r_w:.1f}x", t_w / r_w >= GOAL_RATIO),
        (f"runtime peak RSS <= {GOAL_RSS_MB:.0f} MB", f"{r_m:.1f} MB", r_m <= GOAL_RSS_MB),
    ]
    for goal, got, ok in checks:
        print(f"  {goal:<42} {got:>10}  {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
