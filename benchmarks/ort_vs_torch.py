"""onnxruntime through bigmodel's runtime against PyTorch eager, and against a numpy matmul, in one run.

For the default MLP VAE decoder and GAN generator (`create_model(family)`, random weights from a
fixed seed: weights do not change the speed of a dense MLP), each is exported with
`bigmodel.export.export_bundle` and loaded with `bigmodel.runtime.load(..., backend="ort-cpu",
threads=T)`; torch runs the same module eagerly (eval, `torch.inference_mode()`,
`torch.set_num_threads(T)`). Rounds alternate torch, onnxruntime and numpy at each batch size
(`bigmodel.bench.timing.alternate`, the harness `bigmodel bench` and `tune` use) so drift on a
shared machine hits all three alike; each side's figure is the median over all its runs. Beside
each speed-up the "paired rounds" figure is the median over rounds of torch's round median / the
runtime's (`bigmodel.bench.timing.paired_ratio`, bench's `speedup_paired_vs_torch`): steadier when
the machine switches speed for a while, as this 2-vCPU one does. Goals (2 CPU cores, T = 2):

    onnxruntime vs torch eager, batch 1    >= 2.5x   (torch p50 / runtime p50), Model.run and Model.decode
    onnxruntime vs torch eager, batch 256  >= 1.3x
    onnxruntime GFLOP/s at batch 1024      >= 75% of numpy's float32 matmuls of the same FLOP count
    Model.decode vs a bare session.run on the same session, batch 1   <= 1.05 (p50 ratio, calls interleaved)

The same bundles then go through `bigmodel bench`'s harness (`run_bench`, torch and ort-cpu, same
threads, the same rounds and seconds per round) in the same process, and both speed-ups are printed
side by side: both alternate short rounds (this script among all its sides, bench between torch and
ort-cpu) and both time `Model.run` (every output of the role) against the role's PyTorch module.

FLOPs per sample are 2 * sum(in * out) over the Linear layers (bias and activations not
counted). numpy's figure is the same chain of GEMMs, (B, in) @ (in, out) per layer, float32, on
OpenBLAS with T threads (threadpoolctl); a single square matmul of the same FLOP count is printed
beside it. If OPENBLAS_CORETYPE is set (some machines pin an old kernel that way), numpy is slower
than it can be: run this script with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` to compare
against its best kernel; the kernel in use is printed.

    python benchmarks/ort_vs_torch.py [--threads 2] [--rounds 10] [--round-seconds 0.15] [--families vae,gan]
                                      [--batch-sizes 1,256,1024]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {1: 2.5, 256: 1.3}  # batch -> minimum speed-up over torch eager
GFLOPS_GOAL = 0.75  # of numpy's GEMM chain, at batch 1024
DECODE_OVERHEAD = 1.05  # Model.decode p50 / session.run p50 (the image output only), batch 1
IMAGE_ROLE = {"vae": "decoder", "ae": "decoder", "aae": "decoder", "gan": "generator"}


def make_bundle(family: str, folder: Path):
    """Random-weight default MLP model of `family`, its checkpoint and exported bundle in `folder`."""
    import torch

    from bigmodel.export import ExportOptions, export_bundle
    from bigmodel.models import create_model
    from bigmodel.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model(family, "mlp").eval()
    save_checkpoint(folder / "checkpoint.pt", {
        "family": family, "arch": "mlp", "config": model.config.to_dict(), "data_spec": model.data.to_dict(),
        "state_dict": model.state_dict(), "epoch": 0, "settings": {}})
    bundle = export_bundle(folder / "checkpoint.pt", ExportOptions(out=folder / "bundle", probes=8)).bundle
    return model, bundle


def family_bundles(families: str, tmp: str):
    """(family, image role, model, bundle) for each comma-separated family, made by `make_bundle` under `tmp`."""
    for family in families.split(","):
        folder = Path(tmp) / family
        folder.mkdir()
        model, bundle = make_bundle(family, folder)
        yield family, IMAGE_ROLE[family], model, bundle


def linear_shapes(module) -> list[tuple[int, int]]:
    import torch

    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def timed(fn, n: int) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t = clock()
        fn()
        out.append((clock() - t) / 1e9)
    return out


def identity_session(dim: int, threads: int):
    """An onnxruntime session of a graph that only copies its input: the fixed cost of one call."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["z"], ["y"])], "identity",
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def anatomy_sides(runtime, role: str, name: str, z: np.ndarray, module, zt) -> dict:
    """Extra timings at batch 1 that show where the time goes, measured in the same rounds."""
    import torch

    session = runtime.backend.sessions[role]
    empty = identity_session(z.shape[1], runtime.backend.threads)
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]

    def torch_linears():
        with torch.inference_mode():
            h = zt
            for m in layers:
                h = torch.nn.functional.linear(h, m.weight, m.bias)

    image = [runtime.manifest.roles[role].outputs[0].name]
    return {"session": lambda: session.run(None, {name: z}),
            "session_image": lambda: session.run(image, {name: z}), "identity": lambda: empty.run(None, {"z": z}),
            "torch_linears": torch_linears}


def print_anatomy(p50: dict[str, float]) -> None:
    us = {k: v * 1e6 for k, v in p50.items()}
    print(f"{'':15s}batch 1, where the time goes (p50 us): runtime.run {us['ort']:.1f} (input and output checks, "
          f"staged bindings) vs onnxruntime's own session.run {us['session']:.1f} ({us['ort'] - us['session']:+.1f}); "
          f"of session.run, the fixed cost of any call (an Identity graph) is {us['identity']:.1f}")
    print(f"{'':15s}torch eager {us['torch']:.1f} = its 3 Linear calls {us['torch_linears']:.1f} + ReLU/Unflatten/"
          f"Sigmoid {us['torch'] - us['torch_linears']:.1f}; numpy's 3 GEMVs on the same shapes {us['numpy']:.1f}")


def bench_side_by_side(bundle, role: str, batches: list[int], threads: int, ours: dict[int, float],
                       rounds: int, seconds: float) -> None:
    """`bigmodel bench`'s harness on the same bundle and threads, with this script's rounds: its speed-ups
    beside this script's (bench alternates torch and ort-cpu only; this script, every side above)."""
    from bigmodel.bench import BenchSettings, run_bench

    report = run_bench(bundle, BenchSettings(backends=("torch", "ort-cpu"), roles=(role,), batch_sizes=tuple(batches),
                                             threads=threads, duration=rounds * seconds, rounds=rounds,
                                             roofline=False))
    bench = {r["batch"]: (r["speedup_vs_torch"], r["speedup_paired_vs_torch"]) for r in report["results"]
             if r["backend"] == "ort-cpu"}
    print(f"{'':15s}bigmodel bench harness, same bundle: " + ", ".join(
        f"batch {b} {bench[b][0]:.2f}x, paired {bench[b][1]:.2f}x (this script {ours[b][0]:.2f}x, paired "
        f"{ours[b][1]:.2f}x)" for b in batches if b in bench and b in ours))


def alternate(sides: dict, rounds: int, seconds: float) -> tuple[dict[str, float], dict[str, float], dict]:
    """Each side in turn, `rounds` times, ~`seconds` each (bench's harness): (median, 10th percentile, each
    round's median) per side."""
    from bigmodel.bench.timing import alternate as harness

    per_round: dict[str, list[float | None]] = {}
    times = harness(sides, rounds, seconds, warmup=5, min_runs=5 * rounds, per_round=per_round)
    return ({k: statistics.median(v) for k, v in times.items()},
            {k: float(np.percentile(v, 10)) for k, v in times.items()}, per_round)


def decode_overhead(decode, bare, seconds: float) -> tuple[float, float]:
    """Model.decode / bare session.run on the same session at batch 1: (p50 ratio, p10 ratio).

    The calls of the two sides are randomly interleaved one by one (runtime_overhead.py's method), so
    a busy spell hits both alike: the rounds of a few hundred ms that the speed-ups use leave a few
    percent of drift between two sides that differ by a few microseconds.
    """
    from runtime_overhead import interleaved

    sides = {"decode": lambda _: decode(), "bare": lambda _: bare()}
    interleaved(sides, None, min(1.0, seconds / 4))  # warm-up
    t = interleaved(sides, None, seconds, seed=1)
    return (statistics.median(t["decode"]) / statistics.median(t["bare"]),
            float(np.percentile(t["decode"], 10) / np.percentile(t["bare"], 10)))


def parse_args(doc: str, batch_sizes: str, rounds: int = 5, round_seconds: float = 0.3
               ) -> tuple[argparse.Namespace, list[int]]:
    """The options this script and benchmarks/engines.py share: (args, batch sizes)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=rounds, help="alternating rounds per batch size")
    ap.add_argument("--round-seconds", type=float, default=round_seconds, help="seconds per side per round")
    ap.add_argument("--families", default="vae,gan")
    ap.add_argument("--batch-sizes", default=batch_sizes)
    ap.add_argument("--overhead-seconds", type=float, default=4.0, help="Model.decode vs session.run, batch 1")
    args = ap.parse_args()
    return args, [int(b) for b in args.batch_sizes.split(",")]


def main() -> int:
    args, batches = parse_args(__doc__, "1,256,1024", rounds=10, round_seconds=0.15)
    threads = args.threads

    import threadpoolctl
    import torch

    from bigmodel.bench.timing import paired_ratio
    from bigmodel.runtime import load

    torch.set_num_threads(threads)
    blas = threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
          f"load average {os.getloadavg()[0]:.2f}; python {platform.python_version()}")
    print(f"versions: torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, "
          f"numpy {np.__version__}")
    print(f"threads: {threads} for torch, onnxruntime and numpy; numpy BLAS: "
          + "; ".join(f"{i['internal_api']} {i.get('version')} kernel {i.get('architecture')} "
                      f"threads {i['num_threads']}" for i in info))
    coretype = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    print(f"OPENBLAS env: {coretype or 'unset'}" + (" (numpy runs a pinned kernel; see the docstring)"
                                                     if coretype else ""))
    print("weights: random (seed 0); a dense MLP's speed does not depend on their values\n")

    missed = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, role, model, bundle in family_bundles(args.families, tmp):
            module = model.role_module(role).eval()
            speedups: dict[int, float] = {}
            shapes = linear_shapes(module)
            flops = 2 * sum(i * o for i, o in shapes)
            runtime = load(bundle, backend="ort-cpu", device="cpu", threads=threads)
            name = runtime.manifest.roles[role].inputs[0].name
            weights = [np.ascontiguousarray(np.random.default_rng(1).standard_normal((i, o), dtype=np.float32))
                       for i, o in shapes]
            print(f"{family} {role}: Linear layers {' -> '.join([str(shapes[0][0])] + [str(o) for _, o in shapes])}"
                  f", {flops / 1e6:.2f} MFLOP per sample")
            for batch in batches:
                z = np.random.default_rng(batch).standard_normal((batch, model.config.latent_dim), dtype=np.float32)
                zt = torch.from_numpy(z)
                acts = [np.random.default_rng(2).standard_normal((batch, i), dtype=np.float32) for i, _ in shapes]
                side = round((flops * batch / 2) ** (1 / 3))
                sq_a = np.random.default_rng(3).standard_normal((side, side), dtype=np.float32)

                def run_torch(zt=zt, module=module):
                    with torch.inference_mode():
                        return module(zt)

                def run_ort(feeds={name: z}, runtime=runtime, role=role):  # noqa: B006 (bound per cell, read-only)
                    return runtime.run(role, feeds)

                def run_numpy(acts=acts, weights=weights):
                    for a, w in zip(acts, weights, strict=True):
                        np.matmul(a, w)

                def run_square(a=sq_a):
                    np.matmul(a, a)

                sides = {"torch": run_torch, "ort": run_ort, "numpy": run_numpy, "square": run_square,
                         "decode": lambda z=z, runtime=runtime: runtime.decode(z)}
                if batch == 1:
                    sides.update(anatomy_sides(runtime, role, name, z, module, zt))
                p50, p10, per_round = alternate(sides, args.rounds, args.round_seconds)
                speedup = p50["torch"] / p50["ort"]
                paired = paired_ratio(per_round, "torch", "ort")
                speedups[batch] = (speedup, paired)
                gflops = {k: flops * batch / p50[k] / 1e9 for k in ("torch", "ort", "numpy")}
                gflops["square"] = 2 * side**3 / p50["square"] / 1e9
                line = (f"  batch {batch:5d}: torch {p50['torch'] * 1e3:9.3f} ms  "
                        f"onnxruntime {p50['ort'] * 1e3:9.3f} ms  speed-up {speedup:5.2f}x "
                        f"(p10s: {p10['torch'] / p10['ort']:.2f}x, paired rounds: {paired:.2f}x)")
                if batch in GOALS:
                    ok = speedup >= GOALS[batch]
                    line += f"  goal >= {GOALS[batch]}x: {'met' if ok else 'MISSED'}"
                    if not ok:
                        missed.append(f"{family} batch {batch} speed-up {speedup:.2f}x < {GOALS[batch]}x")
                print(line)
                print(f"{'':15s}GFLOP/s: onnxruntime {gflops['ort']:6.1f}  torch {gflops['torch']:6.1f}  "
                      f"numpy same GEMMs {gflops['numpy']:6.1f}  numpy square {side}x{side} {gflops['square']:6.1f}")
                if batch >= 256:
                    best = max(gflops["numpy"], gflops["square"])
                    print(f"{'':15s}ceiling: the best float32 GEMM measured here runs at {best:.1f} GFLOP/s and torch "
                          f"reaches {gflops['torch']:.1f}, so no runtime can beat torch by more than "
                          f"{best / gflops['torch']:.2f}x at this batch")
                if batch == 1:
                    print_anatomy(p50)
                    dec = p50["torch"] / p50["decode"]
                    over, over10 = decode_overhead(sides["decode"], sides["session_image"], args.overhead_seconds)
                    print(f"{'':15s}Model.decode: {p50['decode'] * 1e6:.1f} us, {dec:.2f}x torch (paired rounds "
                          f"{paired_ratio(per_round, 'torch', 'decode'):.2f}x; goal >= "
                          f"{GOALS[1]}x: {'met' if dec >= GOALS[1] else 'MISSED'}); / bare session.run "
                          f"{over:.3f}, p10s {over10:.3f} (calls interleaved one by one; goal <= {DECODE_OVERHEAD}: "
                          f"{'met' if over <= DECODE_OVERHEAD else 'MISSED'})")
                    if dec < GOALS[1]:
                        missed.append(f"{family} batch 1 Model.decode speed-up {dec:.2f}x < {GOALS[1]}x")
                    if over > DECODE_OVERHEAD:
                        missed.append(f"{family} batch 1 Model.decode / session.run {over:.3f} > {DECODE_OVERHEAD}")
                if batch == 1024:
                    ratio = gflops["ort"] / gflops["numpy"]
                    ok = ratio >= GFLOPS_GOAL
                    print(f"{'':15s}onnxruntime / numpy (same GEMMs) = {ratio:.2f}; / numpy square = "
                          f"{gflops['ort'] / gflops['square']:.2f}  (goal >= {GFLOPS_GOAL:.2f} of numpy: "
                          f"{'met' if ok else 'MISSED'})")
                    if not ok:
                        missed.append(f"{family} batch 1024 GFLOP/s ratio {ratio:.2f} < {GFLOPS_GOAL}")
            getattr(runtime, "close", lambda: None)()
            bench_side_by_side(bundle, role, batches, threads, speedups, args.rounds, args.round_seconds)
            print()
    blas.restore_original_limits()
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
          + ("  (busy machine: figures are unreliable)" if os.getloadavg()[0] > (os.cpu_count() or 1) else ""))
    print("goals: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
