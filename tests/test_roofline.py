"""bench's roofline: FLOPs and weight bytes read from ONNX graphs, the machine's ceilings, the % columns."""

from __future__ import annotations

import numpy as np
import onnx
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
