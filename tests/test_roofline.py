"""bench's roofline: FLOPs and weight bytes read from ONNX graphs, the machine's ceilings, the % columns."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from bigmodel.bench.roofline import add_roofline, ceiling_lines, gemm_ceiling, graph_cost, memcpy_bandwidth


def _init(name, shape):
    return helper.make_tensor(name, TensorProto.FLOAT, shape, np.zeros(shape, np.float32).ravel())


def test_graph_cost_counts_matmul_gemm_conv_and_conv_transpose(tmp_path):
    # x (b, 8) -MatMul w1 (8, 16)-> (b, 16) -Gemm transB w2 (32, 16)-> (b, 32) -Reshape-> (b, 2, 4, 4)
    # -Conv w3 (6, 2, 3, 3), pad 1 -> (b, 6, 4, 4) -ConvTranspose w4 (6, 3, 2, 2), stride 2 -> (b, 3, 8, 8)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"]),
             helper.make_node("Gemm", ["h1", "w2"], ["h2"], transB=1),
             helper.make_node("Reshape", ["h2", "shape"], ["h3"]),
             helper.make_node("Conv", ["h3", "w3"], ["h4"], pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["h4", "w4"], ["y"], strides=[2, 2])]
    inits = [_init("w1", [8, 16]), _init("w2", [32, 16]), _init("w3", [6, 2, 3, 3]), _init("w4", [6, 3, 2, 2]),
             helper.make_tensor("shape", TensorProto.INT64, [4], [-1, 2, 4, 4])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 8, 8])], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    cost = graph_cost(path)
    matmul = 2 * 8 * 16
    gemm = 2 * 16 * 32
    conv = 2 * (4 * 4) * 6 * (2 * 3 * 3)  # output pixels x Cout x (Cin x kernel)
    convt = 2 * (4 * 4) * 6 * (3 * 2 * 2)  # input pixels x Cin x (Cout x kernel)
    assert cost.flops_per_sample == matmul + gemm + conv + convt
    assert cost.weight_bytes == 4 * (8 * 16 + 32 * 16 + 6 * 2 * 9 + 6 * 3 * 4) + 8 * 4
    assert cost.gemms == [(1, 8, 16), (1, 16, 32), (16, 18, 6), (16, 6, 12)]


def test_ceilings_are_measured_and_percentages_follow_from_them(tmp_path):
    from bigmodel.bench.roofline import GraphCost

    cost = GraphCost(2.0 * 64 * 32, 64 * 32 * 4, [(1, 64, 32)])
    ceiling = gemm_ceiling(cost, 16, threads=1, seconds=0.02)
    bandwidth = memcpy_bandwidth(8 << 20, seconds=0.02)
    assert ceiling > 0 and bandwidth > 0
    ceilings = {"costs": {"decoder": {"flops_per_sample": cost.flops_per_sample, "weight_bytes": cost.weight_bytes}},
                "gemm_gflops": {"decoder": {"16": ceiling}}, "memcpy_gbs": bandwidth, "blas": "numpy"}
    results = [{"role": "decoder", "batch": 16, "warm": {"p50": 1e-3}}]
    add_roofline(results, ceilings)
    roof = results[0]["roofline"]
    assert np.isclose(roof["gflops"], 2.0 * 64 * 32 * 16 / 1e-3 / 1e9)
    assert np.isclose(roof["gflops_pct"], 100 * roof["gflops"] / ceiling)
    assert np.isclose(roof["weights_gbs"], 64 * 32 * 4 / 1e-3 / 1e9)
    assert np.isclose(roof["bandwidth_pct"], 100 * roof["weights_gbs"] / bandwidth)
    assert "memcpy" in ceiling_lines(ceilings)[0]


def test_torch_timed_ceilings_count_the_same_work_as_numpys():
    """The GPU ceilings' code (torch matmul and copy) run on the CPU device: the same FLOPs and bytes as
    numpy's, so the two rates agree within what two BLAS libraries on one CPU can differ by."""
    from bigmodel.bench.roofline import GraphCost, torch_copy_bandwidth, torch_gemm_ceiling

    cost = GraphCost(2.0 * (256 * 128 + 128 * 64), 0, [(1, 256, 128), (1, 128, 64)])
    ours = torch_gemm_ceiling(cost, 64, "cpu", seconds=0.05)
    theirs = gemm_ceiling(cost, 64, threads=1, seconds=0.05)
    assert 0.1 < ours / theirs < 10, (ours, theirs)
    copy, memcpy = torch_copy_bandwidth("cpu", 32 << 20, seconds=0.05), memcpy_bandwidth(32 << 20, seconds=0.05)
    assert 0.1 < copy / memcpy < 10, (copy, memcpy)
    assert torch_gemm_ceiling(GraphCost(), 64, "cpu") is None  # no GEMM in the graph: no ceiling


def test_int8_and_bf16_ceilings_are_measured_here_or_say_why_not():
    """The reduced-precision ceilings on the graph's shapes: positive where this machine has the library and the
    CPU units, else None and a reason naming what is missing."""
    from bigmodel.bench.roofline import (
        INT8_LIBRARIES,
        GraphCost,
        bf16_gemm_ceiling,
        bf16_unavailable,
        int8_gemm_ceiling,
        int8_unavailable,
    )

    cost = GraphCost(2.0 * (256 * 128 + 128 * 64), 0, [(1, 256, 128), (1, 128, 64)])
    detail: dict = {}
    int8 = int8_gemm_ceiling(cost, 64, threads=1, seconds=0.05, detail=detail)
    why = int8_unavailable()
    if why is None:
        assert int8 > 0 and set(detail["libraries"]) <= set(INT8_LIBRARIES)
        assert sum(detail["libraries"].values()) == 2  # one winner per GEMM shape
    else:
        assert int8 is None and "installed" in why
    bf16 = bf16_gemm_ceiling(cost, 64, threads=1, seconds=0.05)
    why = bf16_unavailable()
    if why is None:
        assert bf16 > 0
    else:
        assert bf16 is None and ("bf16" in why or "torch" in why)
    assert int8_gemm_ceiling(GraphCost(), 64, 1) is None and bf16_gemm_ceiling(GraphCost(), 64, 1) is None


def test_rows_take_the_ceiling_of_the_precision_they_compute_in():
    """An int8 bundle: its backends' % are of the int8 ceiling, the torch side's (float32 reference) of float32's;
    the ceiling lines say whose % each is."""
    from bigmodel.bench.roofline import precision_ceiling_kind

    ceilings = {"costs": {"decoder": {"flops_per_sample": 1e6, "weight_bytes": 1000}},
                "gemm_gflops": {"decoder": {"4": 10.0}}, "memcpy_gbs": 20.0, "blas": "numpy", "device": "cpu",
                "reduced": {"kind": "int8", "precision": "int8", "gemm_gflops": {"decoder": {"4": 40.0}},
                            "libraries": {"decoder": {"4": {"torch._int_mm": 1}}}, "reason": None}}
    results = [{"backend": "torch", "role": "decoder", "batch": 4, "precision": "fp32", "warm": {"p50": 1e-3}},
               {"backend": "ort-cpu", "role": "decoder", "batch": 4, "precision": "int8", "warm": {"p50": 1e-3}}]
    add_roofline(results, ceilings)
    torch_roof, ort_roof = results[0]["roofline"], results[1]["roofline"]
    assert torch_roof["gflops"] == ort_roof["gflops"] == pytest.approx(4.0)  # the same work
    assert (torch_roof["ceiling"], torch_roof["gflops_pct"]) == ("fp32", pytest.approx(40.0))
    assert (ort_roof["ceiling"], ort_roof["gflops_pct"]) == ("int8", pytest.approx(10.0))
    lines = ceiling_lines(ceilings)
    assert "float32 GEMM on the decoder's shapes (the % of torch): 10.0 GFLOP/s @ 4" in lines[1]
    assert "int8 GEMM (torch._int_mm) on the decoder's shapes (the % of ort-cpu): 40.0 GOP/s @ 4" in lines[2]
    ceilings["reduced"]["reason"] = "no int8 here"
    assert "no int8 GEMM ceiling: no int8 here" in ceiling_lines(ceilings)[2]
    assert [precision_ceiling_kind(p) for p in ("fp32", "fp16", "bf16", "int8")] == ["fp32", "fp32", "bf16", "int8"]
    assert precision_ceiling_kind("fp16", "cuda:0") == "fp16"
