"""The share of a role graph's GEMM FLOPs an engine really runs in int8, read from what it executes.

A QDQ graph only asks for int8: each engine decides which MatMul/Gemm/Conv it fuses into an integer
kernel. onnxruntime: the graph its optimizer hands the CPU provider (the session's optimized
model) -- a weight node that became QGemm, QLinearMatMul, QLinearConv, MatMulIntegerToFloat, ...
runs integer kernels; one left as Gemm/MatMul/Conv runs in float. OpenVINO: the compiled model's
runtime graph -- FullyConnected/Convolution layers whose runtimePrecision is i8 or u8.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

# onnxruntime CPU operators that compute with integer dot products (MatMulNBits: int8 weights, and int8
# activations at accuracy_level 4, which bigmodel's weight-only mode asks for)
ORT_INT8_OPS = frozenset({
    "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConv",
    "ConvInteger", "QLinearConvTranspose", "MatMulNBits", "DynamicQuantizeLSTM",
})
OV_WEIGHT_LAYERS = frozenset({"FullyConnected", "Convolution", "GroupConvolution", "Deconvolution", "MatMul",
                              "GroupDeconvolution"})
OV_INT8 = frozenset({"i8", "u8"})


def node_flops(path: str | Path) -> dict[str, float]:
    """Node name -> GEMM FLOPs per sample of the graph at `path` (its DQ-fed MatMul/Gemm/Conv nodes)."""
    from bigmodel.bench.roofline import graph_cost

    return dict(graph_cost(path).per_node)


def _original(name: str, known: set[str]) -> str | None:
    """The graph node an engine's fused node came from: onnxruntime keeps the name, or prefixes 'fused ' or
    suffixes '_token_N'; OpenVINO's names start with it."""
    bare = re.sub(r"(_token_\d+)+$", "", name.removeprefix("fused "))  # NHWC rewrites add _token_N
    for part in (name, bare, name.split("/")[0]):
        if part in known:
            return part
    return None


def ort_int8_nodes(path: str | Path, known: set[str]) -> set[str]:
    """Names (among `known`) of the nodes onnxruntime's CPU provider runs as integer kernels."""
    import onnx

    from bigmodel.runtime.backends.ort import INT8_DISABLED_OPTIMIZERS, import_ort, session_options

    ort = import_ort()
    with tempfile.TemporaryDirectory(prefix="bigmodel-optimized-") as tmp:
        opts = session_options(ort, 1)
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=INT8_DISABLED_OPTIMIZERS)
        graph = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    return {o for n in graph.node if n.op_type in ORT_INT8_OPS and (o := _original(n.name, known))}


def ov_int8_nodes(path: str | Path, known: set[str], inference_precision: str = "f32") -> set[str]:
    """Names (among `known`) of the nodes OpenVINO's CPU plugin runs in i8/u8 (from originalLayersNames)."""
    from bigmodel.runtime.backends.openvino import config, core

    compiled = core().compile_model(str(path), "CPU", {**config(1), "INFERENCE_PRECISION_HINT": inference_precision})
    out = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "layerType" not in rt or rt["layerType"].astype(str) not in OV_WEIGHT_LAYERS:
            continue
        if rt["runtimePrecision"].astype(str) not in OV_INT8:
            continue
        for name in rt["originalLayersNames"].astype(str).split(","):
            if (o := _original(name, known)) is not None:
                out.add(o)
    return out


def int8_share(path: str | Path, backend: str) -> dict:
    """{"share": FLOPs in int8 / all GEMM FLOPs, "int8": [...], "float": [...]} for backend ort-cpu or ov-cpu.

    >>> int8_share("runs/vae/bundle-int8/decoder.onnx", "ort-cpu")["share"]
    1.0
    """
    flops = node_flops(path)
    known = set(flops)
    fused = ort_int8_nodes(path, known) if backend == "ort-cpu" else ov_int8_nodes(path, known)
    total = sum(flops.values())
    return {"share": sum(flops[n] for n in fused) / total if total else None,
            "int8": sorted(fused), "float": sorted(known - fused)}
