"""onnxruntime session options at batch 1: bigmodel's choice against the alternatives, in one run.

For the default MLP VAE decoder and GAN generator (random weights from seed 0, exported as
`benchmarks/ort_vs_torch.py` does), one InferenceSession per option set is made from the same
.onnx, each a change to bigmodel's own options (`bigmodel.runtime.backends.ort.session_options`:
every graph optimization, T intra-op threads, spinning on), plus torch eager for scale. A bare
`session.run` of the image output is timed on each at batch 1 in alternating rounds (the harness of
`bigmodel bench`, `bigmodel.bench.timing`); printed per option: median, 10th percentile, time
relative to bigmodel's options (ratio of medians, and the paired figure: the median over rounds of
the two round medians' ratio, which moves less when the machine changes speed for a while).

    python benchmarks/ort_options.py [--threads 2] [--rounds 20] [--round-seconds 0.1] [--families vae,gan]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ort_vs_torch import family_bundles  # noqa: E402  (the same bundles as the torch comparison)

# option set -> (intra-op threads: None = T, session config entries, graph optimization level or None)
VARIANTS = {
    "bigmodel": (None, {}, None),
    "one thread": (1, {}, None),
    "spinning off": (None, {"session.intra_op.allow_spinning": "0"}, None),
    "prepacking off": (None, {"session.disable_prepacking": "1"}, None),
    "ORT_ENABLE_EXTENDED": (None, {}, "ORT_ENABLE_EXTENDED"),
    "ORT_ENABLE_BASIC": (None, {}, "ORT_ENABLE_BASIC"),
    "dynamic_block_base 4": (None, {"session.dynamic_block_base": "4"}, None),
    "denormals as zero": (None, {"session.set_denormal_as_zero": "1"}, None),
    "spin_duration_us 1000": (None, {"session.intra_op.spin_duration_us": "1000"}, None),
    "spin_duration_us 10000": (None, {"session.intra_op.spin_duration_us": "10000"}, None),
}


def session(ort, path: Path, threads: int, variant: tuple):
    """A CPU session of `path` with bigmodel's options changed as `variant` says."""
    from bigmodel.runtime.backends.ort import session_options

    count, entries, level = variant
    opts = session_options(ort, count or threads)
    if level:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    for key, value in entries.items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--round-seconds", type=float, default=0.1)
    ap.add_argument("--families", default="vae,gan")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from bigmodel.bench.timing import alternate, paired_ratio
    from bigmodel.manifest import read_manifest

    torch.set_num_threads(args.threads)
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}; {args.threads} threads; load average "
          f"{os.getloadavg()[0]:.2f}; {args.rounds} rounds of {args.round_seconds} s per side")
    with tempfile.TemporaryDirectory() as tmp:
        for family, role, model, bundle in family_bundles(args.families, tmp):
            spec = read_manifest(bundle).roles[role]
            z = np.random.default_rng(1).standard_normal((1, model.config.latent_dim), dtype=np.float32)
            feeds, image = {spec.inputs[0].name: z}, [spec.outputs[0].name]
            module, zt = model.role_module(role).eval(), torch.from_numpy(z)

            def run_torch(module=module, zt=zt):
                with torch.inference_mode():
                    return module(zt)

            sides = {"torch eager": run_torch}
            for name, variant in VARIANTS.items():
                s = session(ort, bundle / spec.file, args.threads, variant)
                sides[name] = lambda s=s, feeds=feeds, image=image: s.run(image, feeds)
            per_round: dict[str, list[float | None]] = {}
            times = alternate(sides, args.rounds, args.round_seconds, warmup=20, min_runs=5 * args.rounds,
                              per_round=per_round)
            base = statistics.median(times["bigmodel"])
            print(f"\n{family} {role}, batch 1 (load average {os.getloadavg()[0]:.2f}):")
            for name, t in times.items():
                p50 = statistics.median(t)
                print(f"  {name:24s} p50 {p50 * 1e6:7.1f} us  p10 {np.percentile(t, 10) * 1e6:7.1f} us  "
                      f"time / bigmodel's {p50 / base:5.2f}  paired {paired_ratio(per_round, name, 'bigmodel'):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
