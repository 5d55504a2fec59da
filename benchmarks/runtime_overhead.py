"""Runtime overhead: `Model.decode` against a bare onnxruntime `session.run` on the same file.

Both sides run the bundle's decoder (or generator) .onnx with the same session options (bigmodel's:
graph optimization ALL, the same intra-op threads) on the same float32 codes. By default the bare
side calls `session.run` on the very InferenceSession the Model holds, so the difference is only
what the wrapper adds (input checks: dtype, shape, batch, finiteness; the call path);
`--separate-session` builds a second session from the same file instead (two thread pools then
compete for the cores, which adds noise on small machines). Calls of the two sides are randomly
interleaved one by one, so drift in the machine's speed hits both alike; each call is timed on
its own. Printed per batch size: median and 10th-percentile per-call time of each side, the
ratio of the medians (the goal: the wrapper adds at most 5%, ratio <= 1.05) and the ratio of the
10th percentiles (what is left when other processes are not stealing the cores: on a busy machine
the medians of multi-threaded batches mostly measure the scheduler).

    python benchmarks/runtime_overhead.py [BUNDLE] [--batches 1 256] [--seconds 6] [--threads N] [--method encode]

`--method encode` times `Model.encode` on float32 images in the data range against the encoder's
bare `session.run` instead (the image path: its range check is one min and one max).

Without BUNDLE, a default VAE (MLP) is trained for one epoch and exported into a temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cold_start import bundle_from_args  # noqa: E402

GOAL = 1.05


def interleaved(sides: dict, arg, seconds: float, seed: int = 0) -> dict[str, list[float]]:
    """Per-call seconds of each side, calls randomly interleaved until `seconds` have passed."""
    rng = np.random.default_rng(seed)
    names = list(sides)
    times: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    end = clock() + seconds
    while clock() < end:
        for i in rng.integers(len(names), size=200):
            name = names[i]
            fn = sides[name]
            t0 = clock()
            fn(arg)
            times[name].append(clock() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", nargs="?", help="bundle folder (default: train + export a VAE MLP)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--seconds", type=float, default=6.0, help="measuring time per batch size")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--separate-session", action="store_true", help="bare side on its own InferenceSession")
    ap.add_argument("--method", choices=("decode", "encode"), default="decode",
                    help="decode: codes -> images (default); encode: images -> codes")
    args = ap.parse_args()

    import onnxruntime as ort

    from bigmodel.runtime import load
    from bigmodel.runtime.backends.ort import session_options

    with tempfile.TemporaryDirectory(prefix="bigmodel-overhead-") as tmp:
        bundle = bundle_from_args(args.bundle, tmp)
        model = load(bundle, backend="ort-cpu", threads=args.threads)
        role = "encoder" if args.method == "encode" else "decoder" if "decoder" in model.roles else "generator"
        ours = model.encode if args.method == "encode" else model.decode
        spec = model.manifest.roles[role]
        session = model.backend.sessions[role]
        if args.separate_session:
            session = ort.InferenceSession(str(bundle / spec.file), session_options(ort, model.backend.threads),
                                           providers=["CPUExecutionProvider"])
        in_name, out_names = spec.inputs[0].name, [spec.outputs[0].name]  # what decode/encode return

        def bare(z):
            out = session.run(out_names, {in_name: z})[0]
            return out if args.method == "decode" else out.astype(np.float32, copy=False)

        which = "its own session" if args.separate_session else "the Model's own session"
        print(f"bundle: {bundle}  role: {role}  onnxruntime {ort.__version__}  threads: {model.backend.threads}  "
              f"bare side: {which}")
        print(f"{'batch':>6}{'bare median (us)':>18}{args.method + ' median (us)':>20}{'bare p10':>10}"
              f"{args.method + ' p10':>12}{'ratio':>8}{'p10 ratio':>11}  goal: ratio <= {GOAL:.2f}")
        rng = np.random.default_rng(0)
        for batch in args.batches:
            if args.method == "encode":
                z = rng.random((batch, *model.data_shape), dtype=np.float32)
            else:
                z = rng.standard_normal((batch, model.latent_dim), dtype=np.float32)
            np.testing.assert_array_equal(ours(z), bare(z))
            interleaved({"bare": bare, "ours": ours}, z, min(1.0, args.seconds / 5))  # warm-up
            t = interleaved({"bare": bare, "ours": ours}, z, args.seconds, seed=batch)
            mb, mo = statistics.median(t["bare"]), statistics.median(t["ours"])
            pb, po = np.percentile(t["bare"], 10), np.percentile(t["ours"], 10)
            ratio = mo / mb
            print(f"{batch:>6}{mb * 1e6:>18.1f}{mo * 1e6:>20.1f}{pb * 1e6:>10.1f}{po * 1e6:>12.1f}{ratio:>8.3f}"
                  f"{po / pb:>11.3f}  {'met' if ratio <= GOAL else 'MISSED'}  "
                  f"({len(t['bare'])} + {len(t['ours'])} calls)")


if __name__ == "__main__":
    main()
