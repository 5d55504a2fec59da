"""The roofline columns of bench: work per call from the ONNX graph, and this machine's ceilings.

Work: FLOPs of every MatMul/Gemm/Conv/ConvTranspose (and their int8 forms) from the graph's
shapes (ONNX shape inference at batch 1: every one of these grows linearly with the batch), and
the bytes of weights (initializers) a call reads. Ceilings, measured in the same run: the best
float32 GEMM numpy's BLAS does on the same GEMM shapes at the same batch (a convolution counted
as its im2col GEMM), and the bandwidth of a large memcpy (bytes read + written per second, as
STREAM's copy counts them). On `--device cuda` the same two ceilings come from the GPU: torch's
float32 matmul (cuBLAS; TF32 only with --tf32) on the same shapes and a device-to-device copy,
timed with CUDA events.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MEMCPY_BYTES = 256 << 20  # far past any CPU cache
GPU_MEMCPY_BYTES = 1 << 30  # far past any GPU's L2
GEMM_BYTES = 64 << 20
CELL_CEILING_S = 0.3  # at most this long per (role, batch) GEMM ceiling; never longer than the cell's timing
BANDWIDTH_S = 0.5  # at most this long for the bandwidth; never longer than the longest cell's timing


@dataclass
class GraphCost:
    """FLOPs per sample, weight bytes per call, and the GEMMs (rows per sample, K, N, count) that do them."""

    flops_per_sample: float = 0.0
    weight_bytes: int = 0
    gemms: list[tuple[int, int, int]] = field(default_factory=list)


def _dims(shape) -> list[int] | None:
    out = []
    for d in shape.dim:
        if not d.HasField("dim_value"):
            return None
        out.append(int(d.dim_value))
    return out


def graph_cost(path: str | Path) -> GraphCost:
    """FLOPs per sample and weight bytes of the ONNX graph at `path` (external data is not loaded)."""
    import onnx
    from onnx import helper, shape_inference

    model = onnx.load(str(path), load_external_data=False)
    for inp in model.graph.input:  # batch axis -> 1
        dims = inp.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    g = shape_inference.infer_shapes(model, data_prop=True).graph
    shapes: dict[str, list[int] | None] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        shapes[vi.name] = _dims(vi.type.tensor_type.shape)
    cost = GraphCost()
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
        item = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        cost.weight_bytes += math.prod(init.dims) * item
    for node in g.node:
        gemm = _node_gemm(node, shapes)
        if gemm is not None:
            rows, k, n = gemm
            cost.flops_per_sample += 2.0 * rows * k * n
            cost.gemms.append(gemm)
    return cost


def _attr(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _node_gemm(node, shapes) -> tuple[int, int, int] | None:
    """(rows per sample, K, N) of the GEMM a node does (its im2col form for convolutions), else None."""
    op = node.op_type
    ins = list(node.input)
    get = shapes.get
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"):
        a, b = (get(ins[0]), get(ins[3])) if op == "QLinearMatMul" else (get(ins[0]), get(ins[1]))
        if not a or not b:
            return None
        if op == "Gemm":
            m, k = (a[1], a[0]) if _attr(node, "transA", 0) else (a[0], a[1])
            n = b[0] if _attr(node, "transB", 0) else b[1]
            return m, k, n
        return math.prod(a[:-1]) if len(a) > 1 else 1, a[-1], b[-1]
    if op == "MatMulNBits":  # weight-only int8/int4: K and N are attributes
        a = get(ins[0])
        return (math.prod(a[:-1]) if a and len(a) > 1 else 1), _attr(node, "K", 0), _attr(node, "N", 0)
    if op in ("Conv", "QLinearConv", "ConvTranspose"):
        x, w = (get(ins[0]), get(ins[3])) if op == "QLinearConv" else (get(ins[0]), get(ins[1]))
        y = get(node.output[0])
        if not x or not w or not y:
            return None
        kernel = math.prod(w[2:])
        # with groups g: Conv weights are (Cout, Cin/g, k...), ConvTranspose's (Cin, Cout/g, k...), so the
        # shapes below already carry the 1/g
        if op == "ConvTranspose":  # every input pixel scatters Cin x (Cout/g * kernel)
            return math.prod(x[2:]), w[0], w[1] * kernel
        return math.prod(y[2:]), w[1] * kernel, w[0]  # (output pixels, Cin/g * kernel, Cout)
    return None


@contextlib.contextmanager
def blas_threads(threads: int):
    """numpy's BLAS on `threads` threads (threadpoolctl when installed); yields a description of the BLAS."""
    try:
        import threadpoolctl
    except ImportError:
        yield "numpy BLAS at its default thread count (install threadpoolctl to match --threads)"
        return
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        info = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        yield "; ".join(f"{i['internal_api']} {i.get('version')} ({i.get('architecture')}), "
                        f"{i['num_threads']} threads" for i in info) or "numpy BLAS not found by threadpoolctl"


def _best(fn, seconds: float, min_runs: int = 3) -> float:
    """The fastest of repeated runs (after one warm-up), for about `seconds`."""
    fn()
    best = math.inf
    clock = time.perf_counter
    stop = clock() + seconds
    runs = 0
    while runs < min_runs or clock() < stop:
        t = clock()
        fn()
        best = min(best, clock() - t)
        runs += 1
    return best


def timed_rows(rows: int, batch: int, k: int, n: int) -> int:
    """Rows of the (rows * batch, k) x (k, n) GEMM that a ceiling times.

    A GEMM with more rows than fit in GEMM_BYTES per operand is timed on GEMM_BYTES' worth of rows:
    its rate has long saturated there, and a conv's im2col matrix at batch 1024 needs GBs.
    """
    return min(rows * batch, max(1, GEMM_BYTES // (4 * max(k, n))))


def gemm_ceiling(cost: GraphCost, batch: int, threads: int, seconds: float = 0.3) -> float | None:
    """GFLOP/s of the best float32 GEMMs numpy's BLAS does on the graph's GEMM shapes at `batch`.

    Each shape is timed with `threads` BLAS threads and with 1, and the faster counts: on a shared
    machine a 2-thread OpenBLAS call sometimes waits a scheduler tick for its second thread, every time.
    """
    if not cost.gemms:
        return None
    rng = np.random.default_rng(0)
    total_s = 0.0
    flops = 0.0
    for rows, k, n in cost.gemms:
        m = timed_rows(rows, batch, k, n)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        best = math.inf
        for t in sorted({threads, 1}, reverse=True):
            with blas_threads(t):
                best = min(best, _best(lambda a=a, b=b, c=c: np.matmul(a, b, out=c), seconds / len(cost.gemms) / 2))
        total_s += best
        flops += 2.0 * m * k * n
    return flops / total_s / 1e9


def memcpy_bandwidth(nbytes: int = MEMCPY_BYTES, seconds: float = 0.5) -> float:
    """GB/s of one large memcpy, counting bytes read + written."""
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / _best(lambda: np.copyto(dst, src), seconds) / 1e9


def _best_torch(fn, seconds: float, device, min_runs: int = 3) -> float:
    """`_best` for work queued on a torch device: CUDA events on a GPU (each run synchronized), else the clock."""
    import torch

    if device.type != "cuda":
        return _best(fn, seconds, min_runs)
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best, runs, stop = math.inf, 0, time.perf_counter() + seconds
    while runs < min_runs or time.perf_counter() < stop:
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
        runs += 1
    return best


def torch_gemm_ceiling(cost: GraphCost, batch: int, device, tf32: bool = False, seconds: float = 0.3) -> float | None:
    """GFLOP/s of torch's float32 matmuls on the graph's GEMM shapes at `batch` on a torch device (cuBLAS on a GPU)."""
    import torch

    if not cost.gemms:
        return None
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    total_s, flops = 0.0, 0.0
    with _tf32(tf32):
        for rows, k, n in cost.gemms:
            m = timed_rows(rows, batch, k, n)
            a = torch.randn(m, k, device=device, generator=gen)
            b = torch.randn(k, n, device=device, generator=gen)
            c = torch.empty(m, n, device=device)
            total_s += _best_torch(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), seconds / len(cost.gemms), device)
            flops += 2.0 * m * k * n
    return flops / total_s / 1e9


def torch_copy_bandwidth(device, nbytes: int = GPU_MEMCPY_BYTES, seconds: float = 0.5) -> float:
    """GB/s of one large copy within a torch device's memory, counting bytes read + written."""
    import torch

    device = torch.device(device)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_torch(lambda: dst.copy_(src), seconds, device) / 1e9


@contextlib.contextmanager
def _tf32(allow: bool):
    """torch's fp32 matmuls with or without TF32, as bench's --tf32 asks; restored afterwards."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def start_ceilings(bundle: Path, manifest, roles, threads: int, device: str = "cpu", device_id: int = 0,
                   tf32: bool = False) -> dict[str, Any]:
    """The roofline record of a bench run: each role's work per call; ceilings are added as they are measured."""
    costs = {role: graph_cost(Path(bundle) / manifest.roles[role].file) for role in roles}
    out: dict[str, Any] = {
        "costs": {role: {"flops_per_sample": c.flops_per_sample, "weight_bytes": c.weight_bytes,
                         "gemms": [list(g) for g in c.gemms]} for role, c in costs.items()},
        "gemm_gflops": {role: {} for role in roles}, "memcpy_gbs": None, "blas": None, "threads": threads,
        "device": "cpu" if device == "cpu" else f"cuda:{device_id}", "tf32": tf32}
    if device == "cpu":
        out["method"] = ("GEMM: right after each (role, batch) cell and for as long as it was timed (at most "
                         "0.3 s, at least 3 runs), the best of repeated numpy float32 matmuls on "
                         "each graph GEMM's shape at that batch, with --threads BLAS threads or 1, whichever is faster "
                         "(convolutions as im2col GEMMs; at most 64 MiB per operand), summed over the graph; "
                         "bandwidth: a 256 MiB memcpy at the end (at most 0.5 s), bytes read + written per second")
        with blas_threads(threads) as blas:
            out["blas"] = blas
    else:
        try:
            import torch
        except ImportError:
            out["note"] = "GPU ceilings are measured with torch, which is not installed here: the % columns stay empty"
            return out
        out["method"] = ("GEMM: right after each (role, batch) cell and for as long as it was timed (at most 0.3 s, at "
                         "least 3 runs), the best of repeated torch float32 matmuls "
                         f"(cuBLAS, TF32 {'on' if tf32 else 'off'}) on the GPU on each graph GEMM's shape at that "
                         "batch, timed with CUDA events (convolutions as im2col GEMMs; at most 64 MiB per operand), "
                         "summed over the graph; bandwidth: a 1 GiB copy within the GPU's memory at the end (at most "
                         "0.5 s), bytes read + written per second")
        out["blas"] = f"torch {torch.__version__} cuBLAS on {torch.cuda.get_device_name(device_id)}"
    return out


def measure_cell(ceilings: dict[str, Any], role: str, batch: int, seconds: float = CELL_CEILING_S) -> None:
    """The GEMM ceiling of one (role, batch), measured now on the bench's device."""
    if ceilings.get("note"):
        return
    c = ceilings["costs"][role]
    cost = GraphCost(c["flops_per_sample"], c["weight_bytes"], [tuple(g) for g in c["gemms"]])
    device = ceilings.get("device", "cpu")
    ceilings["gemm_gflops"][role][str(batch)] = (
        gemm_ceiling(cost, batch, ceilings["threads"], seconds) if device == "cpu"
        else torch_gemm_ceiling(cost, batch, device, ceilings.get("tf32", False), seconds))


def measure_bandwidth(ceilings: dict[str, Any], seconds: float = BANDWIDTH_S) -> None:
    if ceilings.get("note"):
        return
    device = ceilings.get("device", "cpu")
    ceilings["memcpy_gbs"] = (memcpy_bandwidth(seconds=seconds) if device == "cpu"
                              else torch_copy_bandwidth(device, seconds=seconds))


def add_roofline(results: list[dict[str, Any]], ceilings: dict[str, Any]) -> None:
    """Each result gets `roofline`: GFLOP/s and GB/s of weights read, and each as % of its ceiling."""
    bandwidth = ceilings.get("memcpy_gbs")
    for r in results:
        cost = ceilings["costs"].get(r["role"])
        p50 = r["warm"]["p50"]
        if cost is None or not p50:
            continue
        gflops = cost["flops_per_sample"] * r["batch"] / p50 / 1e9
        ceiling = ceilings["gemm_gflops"].get(r["role"], {}).get(str(r["batch"]))
        gbs = cost["weight_bytes"] / p50 / 1e9
        r["roofline"] = {"gflops": gflops, "gemm_ceiling_gflops": ceiling,
                         "gflops_pct": 100 * gflops / ceiling if ceiling else None,
                         "weights_gbs": gbs, "bandwidth_pct": 100 * gbs / bandwidth if bandwidth else None}


def ceiling_lines(ceilings: dict[str, Any] | None) -> list[str]:
    """What the % columns are percentages of, one line each."""
    if not ceilings:
        return []
    if ceilings.get("note"):
        return [ceilings["note"]]
    gpu = ceilings.get("device", "cpu") != "cpu"
    where, blas = ("GPU", "torch") if gpu else ("CPU", "numpy BLAS")
    lines = [f"ceilings measured in this run: {'device copy' if gpu else 'memcpy'} {ceilings['memcpy_gbs']:.1f} GB/s "
             f"(read + write; weights read faster than that, over 100%, come from the {where}'s caches); "
             f"{blas}: {ceilings['blas']}"]
    for role, per_batch in ceilings["gemm_gflops"].items():
        lines.append(f"  best float32 GEMM{' (TF32)' if gpu and ceilings.get('tf32') else ''} on the {role}'s "
                     "shapes: " + ", ".join(
            f"{v:.1f} GFLOP/s @ {b}" for b, v in per_batch.items() if v is not None))
    return lines
