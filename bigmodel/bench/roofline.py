"""The roofline columns of bench: work per call from the ONNX graph, and this machine's ceilings.

Work: FLOPs of every MatMul/Gemm/Conv/ConvTranspose (and their int8 forms) from the graph's
shapes (ONNX shape inference at batch 1: every one of these grows linearly with the batch), and
the bytes of weights (initializers) a call reads. Ceilings, measured in the same run: the best
float32 GEMM numpy's BLAS does on the same GEMM shapes at the same batch (a convolution counted
as its im2col GEMM), and the bandwidth of a large memcpy (bytes read + written per second, as
STREAM's copy counts them). On `--device cuda` the same two ceilings come from the GPU: torch's
float32 matmul (cuBLAS; TF32 only with --tf32) on the same shapes and a device-to-device copy,
timed with CUDA events.

Reduced precision: the rows running an int8 or bf16 bundle (fp16 on a GPU) are measured against that
precision's own GEMM ceiling on the same shapes (`int8_gemm_ceiling`: the best of torch._int_mm and
onnxruntime's MatMulInteger / DynamicQuantizeMatMul; `bf16_gemm_ceiling`: torch bf16 matmuls), the
torch side, which runs the float32 reference, against float32's.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.threads import torch_threads

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
    per_node: dict[str, float] = field(default_factory=dict)  # node name -> FLOPs per sample


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
            cost.per_node[node.name] = cost.per_node.get(node.name, 0.0) + 2.0 * rows * k * n
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
    if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
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


def torch_gemm_ceiling(cost: GraphCost, batch: int, device, tf32: bool = False, seconds: float = 0.3,
                       dtype: str = "float32") -> float | None:
    """GFLOP/s of torch's matmuls (float32, or `dtype`) on the graph's GEMM shapes at `batch` on a torch device
    (cuBLAS on a GPU)."""
    import torch

    if not cost.gemms:
        return None
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)
    total_s, flops = 0.0, 0.0
    with _tf32(tf32):
        for rows, k, n in cost.gemms:
            m = timed_rows(rows, batch, k, n)
            a = torch.randn(m, k, device=device, generator=gen).to(getattr(torch, dtype))
            b = torch.randn(k, n, device=device, generator=gen).to(a.dtype)
            c = torch.empty(m, n, device=device, dtype=a.dtype)
            total_s += _best_torch(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c), seconds / len(cost.gemms), device)
            flops += 2.0 * m * k * n
    return flops / total_s / 1e9


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512/AMX, aarch64 (FEAT_BF16)
INT8_LIBRARIES = ("torch._int_mm", "onnxruntime MatMulInteger", "onnxruntime DynamicQuantizeMatMul")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo `flags`, or `Features` on aarch64); empty where unreadable."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    return set()


def bf16_unavailable(device: str = "cpu") -> str | None:
    """Why no bf16 GEMM ceiling can be measured on `device` (torch missing, no bf16 units), or None."""
    try:
        import torch
    except ImportError:
        return "the bf16 ceiling is measured with torch, which is not installed"
    if torch.device(device).type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bf16 matmul"
    if not cpu_flags() & set(CPU_BF16_FLAGS):
        return ("this CPU has no bf16 instructions (none of " + ", ".join(CPU_BF16_FLAGS) + " in /proc/cpuinfo): "
                "torch would emulate bf16, which is no ceiling")
    return None


def int8_unavailable(device: str = "cpu") -> str | None:
    """Why no int8 GEMM ceiling can be measured on `device` (neither torch._int_mm nor onnxruntime here), or None."""
    try:
        import torch

        if hasattr(torch, "_int_mm"):
            return None
    except ImportError:
        pass
    if torch_device_type(device) != "cpu":
        return "the GPU int8 ceiling is measured with torch._int_mm, which this torch lacks (or torch is missing)"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "neither torch (torch._int_mm) nor onnxruntime (MatMulInteger) is installed to measure an int8 GEMM"
    return None


def torch_device_type(device) -> str:
    return "cpu" if str(device) == "cpu" else str(device).split(":", 1)[0]


def _ort_int8_session(op: str, m: int, k: int, n: int, threads: int, rng):
    """An onnxruntime CPU session of one int8 GEMM, (m, k) x int8 (k, n) weights, and its input:
    MatMulInteger on uint8 activations (int32 out), or DynamicQuantizeMatMul on float ones (quantized per call,
    float out: what a dynamic int8 bundle's MatMuls run)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    inits = [helper.make_tensor("B", TensorProto.INT8, [k, n], w.tobytes(), raw=True)]
    if op == "MatMulInteger":
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        x = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        inits.append(helper.make_tensor("scale", TensorProto.FLOAT, [], [0.01]))
        node = helper.make_node("DynamicQuantizeMatMul", ["A", "B", "scale"], ["Y"], domain="com.microsoft")
        x = rng.standard_normal((m, k), dtype=np.float32)
    graph = helper.make_graph([node], "int8_gemm", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, {"A": x})


def int8_gemm_ceiling(cost: GraphCost, batch: int, threads: int, seconds: float = 0.3, device: str = "cpu",
                      detail: dict[str, Any] | None = None) -> float | None:
    """GOP/s (2 x M x K x N per GEMM, as GFLOP/s count them) of the best int8 GEMMs installed on the graph's GEMM
    shapes at `batch`; None without an int8 GEMM (`int8_unavailable` says why) or without GEMMs.

    CPU: per shape the fastest of torch._int_mm (int8 x int8 -> int32), onnxruntime MatMulInteger (uint8 x int8
    -> int32) and DynamicQuantizeMatMul (float activations quantized per call), each on `threads` threads and on 1.
    GPU: torch._int_mm (shapes padded to what it takes: M > 16, K and N multiples of 8; the padded work counted).
    `detail`, when given, gets {"libraries": {library: number of shapes it was fastest on}}.
    """
    if not cost.gemms or int8_unavailable(device) is not None:
        return None
    cpu = torch_device_type(device) == "cpu"
    rng = np.random.default_rng(0)
    wins: dict[str, int] = {}
    total_s = flops = 0.0
    for rows, k, n in cost.gemms:
        m = timed_rows(rows, batch, k, n)
        if not cpu:
            m, k, n = max(m, 17), -(-k // 8) * 8, -(-n // 8) * 8
        sides = _int8_sides(m, k, n, threads, device, rng)
        if not sides:
            return None
        share = seconds / len(cost.gemms) / len(sides)
        timed = {}
        for name, (fn, torch_t) in sides.items():
            with torch_threads(torch_t):
                timed[name] = _best(fn, share) if cpu else _best_torch(fn, share, _torch_device(device))
        name = min(timed, key=timed.get)
        library = name.rsplit(" on ", 1)[0]
        wins[library] = wins.get(library, 0) + 1
        total_s += timed[name]
        flops += 2.0 * m * k * n
    if detail is not None:
        detail["libraries"] = wins
    return flops / total_s / 1e9


def _torch_device(device):
    import torch

    return torch.device(device)


def _int8_sides(m: int, k: int, n: int, threads: int, device: str, rng) -> dict[str, tuple[Any, int | None]]:
    """'LIBRARY on T threads' -> (a callable running one int8 (m, k) x (k, n) GEMM, torch threads to time it on);
    those that fail to build or run here are left out."""
    sides: dict[str, tuple[Any, int | None]] = {}
    cpu = torch_device_type(device) == "cpu"
    thread_counts = sorted({threads, 1}, reverse=True)
    with contextlib.suppress(ImportError):
        import torch

        if hasattr(torch, "_int_mm"):
            gen = torch.Generator().manual_seed(0)
            a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen).to(device)
            b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=gen).to(device)
            for t in thread_counts if cpu else [None]:
                with contextlib.suppress(RuntimeError), torch_threads(t):
                    torch._int_mm(a, b)  # a shape or device it does not take raises here, not in the timing
                    sides[f"torch._int_mm on {t or threads}"] = (lambda a=a, b=b: torch._int_mm(a, b), t)
    if cpu:
        with contextlib.suppress(ImportError):
            import onnxruntime  # noqa: F401

            for op in ("MatMulInteger", "DynamicQuantizeMatMul"):
                for t in thread_counts:
                    with contextlib.suppress(Exception):  # an onnxruntime without the op or kernel: not a side
                        run = _ort_int8_session(op, m, k, n, t, rng)
                        run()
                        sides[f"onnxruntime {op} on {t}"] = (run, None)
    return sides


def bf16_gemm_ceiling(cost: GraphCost, batch: int, threads: int, seconds: float = 0.3,
                      device: str = "cpu") -> float | None:
    """GFLOP/s of torch's bfloat16 matmuls (bf16 in, bf16 out) on the graph's GEMM shapes at `batch`, on `threads`
    threads or 1, whichever is faster; None where `bf16_unavailable` names a reason or the graph has no GEMM."""
    if not cost.gemms or bf16_unavailable(device) is not None:
        return None
    import torch

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    counts = sorted({threads, 1}, reverse=True) if dev.type == "cpu" else [None]
    total_s = flops = 0.0
    for rows, k, n in cost.gemms:
        m = timed_rows(rows, batch, k, n)
        a = torch.randn(m, k, device=dev, generator=gen).to(torch.bfloat16)
        b = torch.randn(k, n, device=dev, generator=gen).to(torch.bfloat16)
        c = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
        best = math.inf
        for t in counts:
            with torch_threads(t):
                best = min(best, _best_torch(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c),
                                             seconds / len(cost.gemms) / len(counts), dev))
        total_s += best
        flops += 2.0 * m * k * n
    return flops / total_s / 1e9


def precision_ceiling_kind(precision: str, device: str = "cpu") -> str:
    """The GEMM ceiling a result computing in `precision` is measured against: int8 and bf16 their own, fp16 its
    own on a GPU; else float32 (fp16 graphs on a CPU run their MatMuls in float32 in onnxruntime and OpenVINO)."""
    if precision in ("int8", "bf16") or (precision == "fp16" and torch_device_type(device) == "cuda"):
        return precision
    return "fp32"


CEILING_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}


def reduced_gemm_ceiling(kind: str, cost: GraphCost, batch: int, threads: int, seconds: float = 0.3,
                         device: str = "cpu", detail: dict[str, Any] | None = None) -> float | None:
    """The int8, bf16 or (GPU) fp16 GEMM ceiling of `cost` at `batch`, as `int8_gemm_ceiling` and
    `bf16_gemm_ceiling` measure them."""
    if kind == "int8":
        return int8_gemm_ceiling(cost, batch, threads, seconds, device, detail)
    if kind == "bf16":
        return bf16_gemm_ceiling(cost, batch, threads, seconds, device)
    return torch_gemm_ceiling(cost, batch, device, seconds=seconds, dtype="float16")


def reduced_unavailable(kind: str, device: str = "cpu") -> str | None:
    if kind == "int8":
        return int8_unavailable(device)
    if kind == "bf16":
        return bf16_unavailable(device)
    return None


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
    """The roofline record of a bench run: each role's work per call; ceilings are added as they are measured.

    Besides the float32 GEMM ceiling (`gemm_gflops`, for results that compute in float32: the torch side),
    an int8, bf16 or GPU fp16 bundle gets its own precision's (`reduced`), for the results that run the bundle.
    """
    costs = {role: graph_cost(Path(bundle) / manifest.roles[role].file) for role in roles}
    where = "cpu" if device == "cpu" else f"cuda:{device_id}"
    out: dict[str, Any] = {
        "costs": {role: {"flops_per_sample": c.flops_per_sample, "weight_bytes": c.weight_bytes,
                         "gemms": [list(g) for g in c.gemms]} for role, c in costs.items()},
        "gemm_gflops": {role: {} for role in roles}, "memcpy_gbs": None, "blas": None, "threads": threads,
        "device": where, "tf32": tf32}
    kind = precision_ceiling_kind(manifest.precision, where)
    if kind != "fp32":
        out["reduced"] = {"kind": kind, "precision": manifest.precision, "gemm_gflops": {role: {} for role in roles},
                          "libraries": {role: {} for role in roles}, "reason": None}
    if device == "cpu":
        out["method"] = ("GEMM: right after each (role, batch) cell and for as long as it was timed (at most "
                         "0.3 s, at least 3 runs), the best of repeated numpy float32 matmuls on "
                         "each graph GEMM's shape at that batch, with --threads BLAS threads or 1, whichever is faster "
                         "(convolutions as im2col GEMMs; at most 64 MiB per operand), summed over the graph; "
                         "bandwidth: a 256 MiB memcpy at the end (at most 0.5 s), bytes read + written per second")
        if kind == "int8":
            out["method"] += ("; int8 GEMM (the % of the rows running the int8 bundle): the same, for each shape the "
                              "fastest of torch._int_mm, onnxruntime MatMulInteger (uint8 x int8) and "
                              "DynamicQuantizeMatMul, on --threads threads or 1, in GOP/s (2 ops per multiply-add)")
        elif kind == "bf16":
            out["method"] += "; bf16 GEMM (the % of the rows running the bf16 bundle): the same, torch bf16 matmuls"
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
        if kind != "fp32":
            out["method"] += (f"; {CEILING_NAMES[kind]} GEMM (the % of the rows running the {kind} bundle): the same, "
                              + ("torch._int_mm" if kind == "int8" else f"torch {CEILING_NAMES[kind]} matmuls"))
        out["blas"] = f"torch {torch.__version__} cuBLAS on {torch.cuda.get_device_name(device_id)}"
    if "reduced" in out:
        out["reduced"]["reason"] = reduced_unavailable(kind, where)
    return out


def measure_cell(ceilings: dict[str, Any], role: str, batch: int, seconds: float = CELL_CEILING_S) -> None:
    """The GEMM ceilings of one (role, batch), measured now on the bench's device: float32, and the
    bundle's own precision's where it has one (`start_ceilings`)."""
    if ceilings.get("note"):
        return
    c = ceilings["costs"][role]
    cost = GraphCost(c["flops_per_sample"], c["weight_bytes"], [tuple(g) for g in c["gemms"]])
    device = ceilings.get("device", "cpu")
    ceilings["gemm_gflops"][role][str(batch)] = (
        gemm_ceiling(cost, batch, ceilings["threads"], seconds) if device == "cpu"
        else torch_gemm_ceiling(cost, batch, device, ceilings.get("tf32", False), seconds))
    reduced = ceilings.get("reduced")
    if reduced and reduced["reason"] is None:
        detail: dict[str, Any] = {}
        reduced["gemm_gflops"][role][str(batch)] = reduced_gemm_ceiling(
            reduced["kind"], cost, batch, ceilings["threads"], seconds, device, detail)
        reduced["libraries"][role][str(batch)] = detail.get("libraries")


def measure_bandwidth(ceilings: dict[str, Any], seconds: float = BANDWIDTH_S) -> None:
    if ceilings.get("note"):
        return
    device = ceilings.get("device", "cpu")
    ceilings["memcpy_gbs"] = (memcpy_bandwidth(seconds=seconds) if device == "cpu"
                              else torch_copy_bandwidth(device, seconds=seconds))


def add_roofline(results: list[dict[str, Any]], ceilings: dict[str, Any]) -> None:
    """Each result gets `roofline`: GFLOP/s and GB/s of weights read, and each as % of its ceiling.

    The GEMM ceiling is that of the precision the result computes in (its `precision`, float32 when absent):
    float32 for the torch side, the bundle's own (int8, bf16; fp16 on a GPU) for the backends running the bundle.
    `ceilings["rows"]` records which backends' % refer to which ceiling.
    """
    bandwidth = ceilings.get("memcpy_gbs")
    reduced = ceilings.get("reduced")
    rows: dict[str, list[str]] = {}
    for r in results:
        cost = ceilings["costs"].get(r["role"])
        p50 = r["warm"]["p50"]
        if cost is None or not p50:
            continue
        kind = precision_ceiling_kind(r.get("precision") or "fp32", ceilings.get("device", "cpu"))
        if kind != "fp32" and (reduced is None or reduced["kind"] != kind):
            kind = "fp32"  # a precision this run measured no ceiling for
        table = ceilings["gemm_gflops"] if kind == "fp32" else reduced["gemm_gflops"]
        gflops = cost["flops_per_sample"] * r["batch"] / p50 / 1e9
        ceiling = table.get(r["role"], {}).get(str(r["batch"]))
        gbs = cost["weight_bytes"] / p50 / 1e9
        r["roofline"] = {"gflops": gflops, "gemm_ceiling_gflops": ceiling, "ceiling": kind,
                         "gflops_pct": 100 * gflops / ceiling if ceiling else None,
                         "weights_gbs": gbs, "bandwidth_pct": 100 * gbs / bandwidth if bandwidth else None}
        names = rows.setdefault(kind, [])
        if r.get("backend") not in names:
            names.append(r.get("backend"))
    ceilings["rows"] = rows


def ceiling_lines(ceilings: dict[str, Any] | None) -> list[str]:
    """What the % columns are percentages of, one line each (and, with a reduced-precision bundle, which rows'
    % refer to which ceiling)."""
    if not ceilings:
        return []
    if ceilings.get("note"):
        return [ceilings["note"]]
    gpu = ceilings.get("device", "cpu") != "cpu"
    where, blas = ("GPU", "torch") if gpu else ("CPU", "numpy BLAS")
    lines = [f"ceilings measured in this run: {'device copy' if gpu else 'memcpy'} {ceilings['memcpy_gbs']:.1f} GB/s "
             f"(read + write; weights read faster than that, over 100%, come from the {where}'s caches); "
             f"{blas}: {ceilings['blas']}"]
    rows = ceilings.get("rows") or {}
    reduced = ceilings.get("reduced")

    def whose(kind: str) -> str:
        return f" (the % of {', '.join(rows[kind])})" if reduced and rows.get(kind) else ""

    for role, per_batch in ceilings["gemm_gflops"].items():
        lines.append(f"  best float32 GEMM{' (TF32)' if gpu and ceilings.get('tf32') else ''} on the {role}'s "
                     "shapes" + whose("fp32") + ": " + ", ".join(
            f"{v:.1f} GFLOP/s @ {b}" for b, v in per_batch.items() if v is not None))
    if reduced:
        kind, unit = reduced["kind"], "GOP/s" if reduced["kind"] == "int8" else "GFLOP/s"
        if reduced["reason"]:
            lines.append(f"  no {CEILING_NAMES[kind]} GEMM ceiling: {reduced['reason']}; the {kind} bundle's rows "
                         "show no %GEMM")
        for role, per_batch in reduced["gemm_gflops"].items() if not reduced["reason"] else ():
            won = sorted({lib for libs in reduced["libraries"].get(role, {}).values() for lib in (libs or {})})
            lib = f" ({', '.join(won)})" if won else ""
            lines.append(f"  best {CEILING_NAMES[kind]} GEMM{lib} on the {role}'s shapes{whose(kind)}: " + ", ".join(
                f"{v:.1f} {unit} @ {b}" for b, v in per_batch.items() if v is not None))
    return lines
