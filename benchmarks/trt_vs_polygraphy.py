"""Our TensorRT runner against NVIDIA Polygraphy's TrtRunner on the same engine files and inputs.

    python benchmarks/trt_vs_polygraphy.py BUNDLE [--batch 5] [--atol 1e-6]

For every engine in BUNDLE's manifest: the role through `bigmodel.runtime.load(backend="tensorrt")`
and through `polygraphy.backend.trt.TrtRunner(EngineFromBytes(...))`, same seeded inputs; prints
the max absolute difference per output and exits 1 when any exceeds --atol (2 when TensorRT or
Polygraphy is missing). Needs an NVIDIA GPU, TensorRT and polygraphy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def compare(bundle: Path, batch: int = 5, seed: int = 0) -> list[tuple[str, str, float]]:
    """(role, output, max |ours - polygraphy|) for every output of every engine in the bundle."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from bigmodel.runtime import load

    model = load(bundle, backend="tensorrt")
    rows = []
    try:
        for role, spec in model.manifest.roles.items():
            engine = model.backend.engines[role]
            rng = np.random.default_rng([seed, batch])
            feeds = {t.name: rng.random([batch if d == "batch" else d for d in t.shape], dtype=np.float32)
                     .astype(t.dtype) for t in spec.inputs}
            ours = model.run(role, feeds)
            with TrtRunner(EngineFromBytes(BytesFromPath(str(bundle / engine.file)))) as runner:
                theirs = runner.infer(feeds)
            for t in spec.outputs:
                diff = np.abs(ours[t.name].astype(np.float64) - np.asarray(theirs[t.name], np.float64))
                rows.append((role, t.name, float(diff.max())))
    finally:
        model.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--atol", type=float, default=1e-6)
    args = ap.parse_args()
    try:
        rows = compare(args.bundle, args.batch)
    except ImportError as e:
        print(f"cannot compare: {e}", file=sys.stderr)
        return 2
    worst = 0.0
    for role, name, diff in rows:
        print(f"{role}.{name}: max |ours - polygraphy| = {diff:.3g}")
        worst = max(worst, diff)
    ok = worst <= args.atol
    print(f"{'PASS' if ok else 'FAIL'}: worst {worst:.3g} (atol {args.atol:g}) over {len(rows)} outputs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
