"""int8 role graphs with onnxruntime.quantization, and the search that makes them pass their checks.

Modes: `static` (QDQ, the form TensorRT consumes: signed symmetric int8 activations and
per-channel symmetric int8 weights, activations calibrated on what the role really sees),
`dynamic` (int8 weights, activations quantized per call; Gemm is first rewritten as MatMul + Add
because onnxruntime's dynamic quantizer does not quantize Gemm) and `weights` (int8 weight-only
MatMulNBits, blocks of <= 128 weights with one scale each; an onnxruntime contrib operator, and
MatMul/Gemm only, convolutions stay fp32).

Static graphs are shaped for the engines' integer kernels (`static_plan`): Q/DQ around the weight
operators only, the last Gemm before float-only operators given a float output (DQ -> MatMul + Add,
one MatMulIntegerToFloat kernel in onnxruntime), its bias moved after a Reshape into a graph output,
and Gemm/MatMul layers with <= SHALLOW_K inputs per output kept float.

When a role's graph fails its checks, `search` tries onnxruntime's calibration methods (static
only: MinMax, Entropy, Percentile; each on the in-distribution calibration set, then on one that
also holds ±4σ codes / noise images) and then keeps the most sensitive nodes in float, as
Polygraphy's `debug precision` does: each quantized node's error measured alone, then the
smallest number of the most sensitive ones kept in float that passes, found by bisection.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bigmodel.errors import ExportError
from bigmodel.export.graph import import_optional, save_onnx

CALIBRATION_BATCH = 64
WEIGHT_BLOCK = 128  # int8 weight-only: weights per scale (fewer when a layer has fewer inputs)
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")  # onnxruntime.quantization.CalibrationMethod names
STRESS_SUFFIX = "+stress"  # a calibration tried with stress inputs in its set (see `calibration_inputs`)
WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})  # what dynamic/weights modes quantize


def to_int8_file(src: Path, dst: Path, mode: str, calibration: dict[str, np.ndarray] | np.ndarray | None,
                 method: str = "MinMax", exclude: Sequence[str] = (), only: Sequence[str] | None = None,
                 external: bool = False, weight_ops_only: bool = True) -> None:
    """Quantize the fp32 graph at `src` into `dst` with onnxruntime.quantization.

    calibration (static only): {input name: (N, ...) array} for every graph input (an array alone: the
    graph's first input); method: the calibration method; exclude: node names kept in float; only: when
    given, quantize just these nodes (the sensitivity search measures one node at a time); weight_ops_only
    (static): Q/DQ only around MatMul/Gemm/Conv, the form the engines fuse; False: around every operator the
    quantizer knows, whose extra ranges a graph that fails in the first form may need.
    """
    import onnx

    import_optional("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    work = Path(tempfile.mkdtemp(prefix=".quant.", dir=dst.parent))
    exclude, only = list(exclude), (list(only) if only is not None else None)
    try:
        dst.with_suffix(".onnx.data").unlink(missing_ok=True)
        with _quiet_quantizer():
            if mode == "dynamic":
                prep = work / "prep.onnx"
                save_onnx(gemm_to_matmul(onnx.load(str(src))), prep, external)
                quantize_dynamic(prep, dst, weight_type=QuantType.QInt8, use_external_data_format=external,
                                 nodes_to_exclude=exclude, nodes_to_quantize=only)
            elif mode == "weights":
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

                model = gemm_to_matmul(onnx.load(str(src)))
                quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=weight_block(model), is_symmetric=True,
                                                 accuracy_level=4, nodes_to_exclude=exclude, nodes_to_include=only)
                quantizer.process()
                quantizer.model.save_model_to_file(str(dst), external)
            else:
                if not isinstance(calibration, dict):
                    calibration = {onnx.load(str(src), load_external_data=False).graph.input[0].name: calibration}
                rows = len(next(iter(calibration.values())))
                parts = max(1, rows // CALIBRATION_BATCH)
                size = rows // parts
                # equal batches (onnxruntime's histogram calibrators stack them: ragged ones fail), rows shuffled
                # the same way for every input first, so the rows left over are no one part of the set (stress)
                order = np.random.default_rng(0).permutation(rows)[: parts * size]

                class Feeds(CalibrationDataReader):  # every input cut into the same row batches (labels too)
                    def __init__(self):
                        self.batches = zip(*(np.split(v[order], parts) for v in calibration.values()), strict=True)

                    def get_next(self):
                        batch = next(self.batches, None)
                        return None if batch is None else {k: np.ascontiguousarray(v)
                                                           for k, v in zip(calibration, batch, strict=True)}

                # Signed symmetric int8 on both sides (zero points 0): what TensorRT builds int8 engines from.
                # Only the weight-bearing operators: Q/DQ around a Sigmoid or Reshape buys no integer kernel
                # (onnxruntime, OpenVINO and TensorRT fuse Q/DQ into MatMul/Gemm/Conv), only passes over memory.
                prep, float_out = src, set()
                if weight_ops_only:  # the same rewrite for every build: the search's node names stay valid
                    plan = static_plan(onnx.load(str(src), load_external_data=False))  # dims only
                    float_out = plan.float_out
                    if plan.rewrite:  # as MatMul + Add: onnxruntime runs DQ -> MatMul with a float output as one kernel
                        prep = work / "prep.onnx"
                        model = gemm_to_matmul(onnx.load(str(src)), plan.rewrite)
                        bias_after_reshape(model, plan.bias_adds)
                        save_onnx(model, prep, external)
                    if only is None:
                        exclude += [n for n in plan.shallow if n not in exclude]
                quantize_static(prep, dst, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod[method], nodes_to_exclude=exclude,
                                nodes_to_quantize=only, use_external_data_format=external,
                                op_types_to_quantize=sorted(WEIGHT_OPS) if weight_ops_only else None,
                                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                               "QuantizeBias": False})  # TensorRT dequantizes int8 only, no int32 bias
                model = onnx.load(str(dst))
                changed = drop_requantize(model)
                changed += float_outputs(model, float_out)
                if changed:
                    save_onnx(model, dst, external)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"int8 {mode} quantization of {src.name} failed: {type(e).__name__}: "
                          f"{str(e).strip()[:300]}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quantized_nodes(src: Path, dst: Path, mode: str) -> list[tuple[str, str]]:
    """(name, op type) of the nodes the quantizer may change, in graph order: the candidates to keep in float.

    static (QDQ keeps node names): the nodes of `dst` that read a DequantizeLinear output. dynamic
    and weights: the weight-bearing nodes of the graph these modes quantize (after Gemm -> MatMul).
    """
    import onnx

    if mode == "static":
        out = onnx.load(str(dst), load_external_data=False).graph
        dq = {o for n in out.node if n.op_type == "DequantizeLinear" for o in n.output}
        return [(n.name, n.op_type) for n in out.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                and any(i in dq for i in n.input)]
    return [(n.name, n.op_type) for n in gemm_to_matmul(onnx.load(str(src))).graph.node if n.op_type in WEIGHT_OPS]


@dataclass
class SearchResult:
    """What the int8 search settled on for one role, and every attempt it measured."""

    method: str | None  # calibration method (static), None for dynamic/weights
    kept_float: list[str]  # nodes excluded from quantization
    passed: bool
    tolerance_used: float
    attempts: list[dict] = field(default_factory=list)  # {"method", "kept_float" | "only", "tolerance_used"}


def search(build: Callable[[str | None, Sequence[str], Sequence[str] | None], None], evaluate: Callable[[], float],
           candidates: Callable[[], list[tuple[str, str]]], methods: Sequence[str | None]) -> SearchResult:
    """The int8 graph that passes: first each calibration method, then nodes kept in float by sensitivity.

    build(method, exclude, only) writes a graph; evaluate() checks it -> share of tolerance used
    (<= 1 passes); candidates() names (and types) the nodes the last full build quantized. At least
    one weight-bearing node (the least sensitive) stays int8: a graph with none is no int8 graph, and
    a role that passes only so fails. The graph the result describes is the last one written.
    """
    attempts: list[dict] = []

    def attempt(method, exclude=(), only=None) -> float:
        build(method, exclude, only)
        used = evaluate()
        attempts.append({"method": method, ("only" if only is not None else "kept_float"): list(only or exclude),
                         "tolerance_used": used})
        return used

    scores = {}
    for method in methods:
        scores[method] = attempt(method)
        if scores[method] <= 1.0:
            return SearchResult(method, [], True, scores[method], attempts)
    best = min(scores, key=lambda m: scores[m])
    if len(methods) > 1:
        build(best, (), None)
    nodes = candidates()
    # sensitivity: each node quantized alone, the rest in float (Polygraphy `debug precision` marks layers so)
    alone = {name: attempt(best, only=[name]) for name, _ in nodes}
    order = sorted((name for name, _ in nodes), key=lambda n: -alone[n])
    weights = [name for name in order if dict(nodes)[name] in WEIGHT_OPS]
    if weights:
        order.remove(weights[-1])  # the least sensitive weight-bearing node stays int8
    # bisect the number of most sensitive nodes kept in float
    lo, hi, found = 1, len(order), None
    while lo <= hi:
        k = (lo + hi) // 2
        used = attempt(best, exclude=order[:k])
        if used <= 1.0:
            found, hi = (k, used), k - 1
        else:
            lo = k + 1
    if found is None:
        attempt(best)  # nothing passes: leave the plain graph; the caller reports its failures
        return SearchResult(best, [], False, scores[best], attempts)
    k, used = found
    if attempts[-1].get("kept_float") != order[:k]:
        attempt(best, exclude=order[:k])
    return SearchResult(best, order[:k], True, used, attempts)


SHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})  # move values, change none


def drop_requantize(model) -> int:
    """Remove Q -> DQ pairs that re-quantize a dequantized tensor with its own scale and zero point; the count.

    The quantizer puts them after shape-only operators (DQ -> Reshape -> Q -> DQ) and onnxruntime
    keeps them: each is two passes over the tensor that change no value, since round(s·(q - z) / s) + z
    is q again. The Q's input takes the last DQ's name where that is a graph output.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    dropped = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        src = producer.get(q.input[0])
        while src is not None and src.op_type in SHAPE_OPS:
            src = producer.get(src.input[0])
        if src is None or src.op_type != "DequantizeLinear" or list(src.input[1:]) != list(q.input[1:]):
            continue
        readers = [n for n in g.node if q.output[0] in n.input]
        if not readers or any(r.op_type != "DequantizeLinear" or list(r.input[1:]) != list(q.input[1:])
                              for r in readers) or q.output[0] in outputs:
            continue
        fed = {r.output[0] for r in readers}
        if any(n.op_type in WEIGHT_OPS for n in g.node if fed & set(n.input)):
            continue  # a DQ -> MatMul/Gemm/Conv pair is what the engines fuse into an integer kernel
        kept = q.input[0]
        named = [r.output[0] for r in readers if r.output[0] in outputs]
        if len(named) > 1:
            continue
        if named:  # the graph output keeps its name: the tensor before Q is renamed to it
            kept_old, kept = kept, named[0]
            for n in g.node:
                n.output[:] = [kept if o == kept_old else o for o in n.output]
                n.input[:] = [kept if i == kept_old else i for i in n.input]
        gone = {r.output[0] for r in readers}
        for n in g.node:
            n.input[:] = [kept if i in gone else i for i in n.input]
        for r in readers:
            g.node.remove(r)
        g.node.remove(q)
        producer = {o: n for n in g.node for o in n.output}
        dropped += 1
    return dropped


SHALLOW_K = 32  # a Gemm/MatMul summing over this few inputs stays float (`shallow_weight_nodes`)


def _weight_k(node, inits) -> int | None:
    """The reduction length K of a MatMul/Gemm whose weight is an initializer, else None."""
    from onnx import helper

    w = inits.get(node.input[1]) if node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 else None
    if w is None or len(w.dims) < 2:
        return None
    if node.op_type == "MatMul":
        return w.dims[-2]
    trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
    return w.dims[1] if trans_b else w.dims[0]


def shallow_weight_nodes(model) -> list[str]:
    """Gemm/MatMul nodes with K <= SHALLOW_K, kept in float when some other weight op is quantized.

    Their time goes to writing their output, not to arithmetic, so int8 kernels buy nothing there; in
    int8 they cost passes: with symmetric activations (TensorRT's form) onnxruntime cannot fold a
    following Relu into its integer kernel and runs DQ -> Relu -> Q in float (measured on the VAE
    decoder's 20 -> 768 layer at batch 1024: 0.78 ms as int8 kernel + passes, 0.42 ms as one float Gemm + Relu).
    Gemm/MatMul only: for a shallow Conv (a conv GAN discriminator's first layer, K = 16) keeping it float
    measured neither faster nor slower across batches, so convolutions keep their Q/DQ.
    """
    inits = {i.name: i for i in model.graph.initializer}
    weight_ops = [n for n in model.graph.node if n.op_type in WEIGHT_OPS]
    shallow = [n.name for n in weight_ops if (k := _weight_k(n, inits)) is not None and k <= SHALLOW_K]
    return shallow if len(shallow) < len(weight_ops) else []


def _plain_gemm(node, inits) -> bool:
    """A Gemm that is MatMul(A, W) + b: weight initializer, no transA, alpha = beta = 1 (`gemm_to_matmul` takes it)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in inits and not attrs.get("transA", 0)
            and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)


class StaticPlan(NamedTuple):
    """What `to_int8_file` rewrites in a static graph (`static_plan`)."""

    shallow: list[str]  # weight ops kept float by design, named as in the int8 graph
    float_out: set[str]  # MatMul nodes of the int8 graph whose output stays float (no Q -> DQ after them)
    rewrite: set[str]  # Gemm nodes of the fp32 graph written as MatMul + Add (`node_MatMul`, `node_Add`)
    bias_adds: set[str]  # the Add nodes of the float-output layers (`bias_after_reshape`)


def static_plan(model) -> StaticPlan:
    """The shallow layers kept float and the last Gemms given a float output, both as MatMul + Add.

    For the float ones the rewrite is only speed: onnxruntime's Gemm adds its bias by a slow broadcast (the
    VAE decoder's 20 -> 768 layer as MatMul + Add: batch 1024 1.13 -> 1.02 ms for the whole int8 decoder,
    alternating runs).
    """
    inits = {i.name for i in model.graph.initializer}
    shallow = shallow_weight_nodes(model)
    terminal = terminal_gemms(model) - set(shallow)
    plain = {n.name for n in model.graph.node if _plain_gemm(n, inits)}
    return StaticPlan(shallow=[f"{n}_MatMul" if n in plain else n for n in shallow],
                      float_out={f"{n}_MatMul" for n in terminal}, rewrite=terminal | (set(shallow) & plain),
                      bias_adds={f"{n}_Add" for n in terminal})


def terminal_gemms(model) -> set[str]:
    """Gemm nodes (weight initializer, no transA, alpha = beta = 1) whose output reaches no other weight op.

    Their int8 result feeds only float operators (Sigmoid, Slice, the graph's outputs), so they are
    quantized as DQ -> MatMul (+ Add) with a float output: onnxruntime runs that as one
    MatMulIntegerToFloat kernel (a Gemm needs a Q after it to become QGemm, then a DQ pass back to float).
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    # tensors some weight op reads, directly or through non-weight operators: walked back from every weight op
    feeds_weight_op: set[str] = set()
    stack = [i for n in g.node if n.op_type in WEIGHT_OPS for i in n.input]
    while stack:
        tensor = stack.pop()
        if tensor in feeds_weight_op:
            continue
        feeds_weight_op.add(tensor)
        src = producer.get(tensor)
        if src is not None and src.op_type not in WEIGHT_OPS:
            stack.extend(src.input)
    inits = {i.name for i in g.initializer}
    return {n.name for n in g.node if _plain_gemm(n, inits) and n.output[0] not in feeds_weight_op}


def bias_after_reshape(model, names: set[str]) -> int:
    """MatMul -> Add(bias) -> Reshape(B, *dims) as MatMul -> Reshape -> Add(bias as dims); the count rewritten.

    For the Add nodes in `names` whose only reader is a Reshape to a constant (-1 or 0, *dims) shape with
    prod(dims) = len(bias): the same values, but the Add now writes the Reshape's output. Where that is a
    graph output (a decoder's `logits`) onnxruntime copies a Reshape's result into the output buffer, one
    pass over every image (VAE decoder, batch 1024: 0.23 ms); a Reshape of an inner tensor is a view.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    done = 0
    for add in [n for n in g.node if n.name in names and n.op_type == "Add"]:
        readers = [n for n in g.node if add.output[0] in n.input]
        if len(readers) != 1 or readers[0].op_type != "Reshape" or add.output[0] in {o.name for o in g.output}:
            continue
        reshape = readers[0]
        bias, shape = inits.get(add.input[1]), inits.get(reshape.input[1])
        if bias is None or shape is None or len(bias.dims) != 1:
            continue
        target = numpy_helper.to_array(shape).tolist()
        dims = target[1:]
        if target[0] not in (-1, 0) or not dims or min(dims) < 1 or int(np.prod(dims)) != bias.dims[0]:
            continue
        folded = numpy_helper.from_array(numpy_helper.to_array(bias).reshape(dims), f"{bias.name}_reshaped")
        g.initializer.append(folded)
        out, inner = reshape.output[0], f"{reshape.output[0]}_before_bias"
        reshape.input[0], reshape.output[0] = add.input[0], inner
        add.input[:] = [inner, folded.name]
        add.output[0] = out
        g.node.remove(add)
        g.node.insert(list(g.node).index(reshape) + 1, add)
        done += 1
    return done


def float_outputs(model, names: set[str]) -> int:
    """Remove the Q -> DQ pair the quantizer puts on the outputs of the MatMul nodes in `names`; the count.

    Only where the Q's output feeds nothing but that DQ and neither is a graph output: the MatMul's
    float result then goes straight to its readers, one rounding fewer than before.
    """
    g = model.graph
    outputs = {o.name for o in g.output}
    dropped = 0
    for mm in [n for n in g.node if n.name in names and n.op_type == "MatMul"]:
        qs = [n for n in g.node if mm.output[0] in n.input]
        if len(qs) != 1 or qs[0].op_type != "QuantizeLinear" or mm.output[0] in outputs:
            continue
        q = qs[0]
        dqs = [n for n in g.node if q.output[0] in n.input]
        if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or {q.output[0], dqs[0].output[0]} & outputs:
            continue
        for n in g.node:
            n.input[:] = [mm.output[0] if i == dqs[0].output[0] else i for i in n.input]
        g.node.remove(dqs[0])
        g.node.remove(q)
        dropped += 1
    return dropped


def weight_block(model) -> int:
    """Weights per int8 scale: WEIGHT_BLOCK, or less when a MatMul's K is smaller (blocks pad K up to their size)."""
    inits = {i.name: i for i in model.graph.initializer}
    ks = [inits[n.input[1]].dims[0] for n in model.graph.node
          if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    small = min(ks, default=WEIGHT_BLOCK)
    return WEIGHT_BLOCK if small >= WEIGHT_BLOCK else max(16, 1 << (int(small).bit_length() - 1))


def gemm_to_matmul(model, names: set[str] | None = None):
    """Gemm(A, W, b) with a weight initializer -> MatMul(A, Wᵀ) + Add(b): what the dynamic quantizer handles.

    names: only these Gemm nodes (default every one that qualifies).
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if not _plain_gemm(node, inits) or (names is not None and node.name not in names):
            nodes.append(node)
            continue
        w = inits[node.input[1]]
        if attrs.get("transB", 0):
            import torch  # its blocked transpose is several times faster than numpy's on big weights

            with warnings.catch_warnings():  # a read-only view of the proto's bytes: only read here
                warnings.simplefilter("ignore", UserWarning)
                arr = torch.from_numpy(numpy_helper.to_array(w)).t().contiguous().numpy()
            w.CopyFrom(numpy_helper.from_array(arr, w.name))
            del arr
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_Add"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


@contextlib.contextmanager
def _quiet_quantizer():
    buffer = io.StringIO()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        root.setLevel(level)




def calibration_inputs(manifest, role: str, val: np.ndarray, n: int,
                       run_first: Callable[[tuple[str, ...], dict[str, np.ndarray]], np.ndarray | None],
                       stress: bool = False) -> dict[str, np.ndarray]:
    """What `role` really sees, so int8 ranges cover it: {input name: (N, ...) array}, every input.

    The role's image input: validation images, plus the generator's/decoder's images of prior samples
    (a GAN discriminator judges both; calibrated on real images alone its int8 output was constant on
    generated ones). Its latent input: prior samples, plus the encoder's codes of validation images (an
    AE's codes are not N(0, I)). Its other inputs follow their kinds (`probes.input_probes`): class
    labels seeded uniform int64 ids (they feed a lookup, nothing quantizes them; a conditional
    generator's images come with the labels it made them for), tensors standard normal.
    run_first(roles, feeds): the first of `roles` in the bundle, in fp32, on its feeds -> its first
    output, or None when the bundle has none of them. stress: add a quarter as many of the inputs the
    checks hold to the stress rule (±4σ codes, noise images in the image's range; other seeds than the
    checks'), so ranges reach them too -- at the price of coarser steps in distribution.
    """
    from bigmodel.models.probes import image_probes, input_probes, latent_probes, main_input, rescale
    from bigmodel.priors import draw

    inputs = manifest.roles[role].inputs
    value_range = manifest.data.value_range

    def feeds_of(r: str, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Role r's feeds: x in its main input, its other inputs seeded values of their kinds."""
        ins = manifest.roles[r].inputs
        sets = input_probes(ins, manifest.latent, value_range, None, len(x), seed)
        return {**sets[next(iter(sets))], main_input(ins).name: x}

    main = main_input(inputs)
    tail = tuple(int(d) for d in main.shape[1:])
    real = np.ascontiguousarray(val[: min(n, len(val))], dtype=np.float32)
    prior = draw(manifest.latent, n, seed=1)  # the runtime's own sampler: one definition of the prior
    if main.kind == "image":
        lo_hi = tuple(main.range) if main.range else value_range
        parts = [feeds_of(role, rescale(real, value_range, lo_hi), 3)]
        maker = next((r for r in ("generator", "decoder") if r in manifest.roles), None)
        made_feeds = feeds_of(maker, prior, 3) if maker else None
        made = run_first((maker,), made_feeds) if maker else None
        if made is not None:
            parts.append({**feeds_of(role, made.astype(np.float32), 4),
                          **{k: v for k, v in made_feeds.items() if k in parts[0] and k != main.name}})
        if stress:
            noise = image_probes(val, max(1, n // 4), seed=2)["noise"]
            parts.append(feeds_of(role, rescale(noise, (0.0, 1.0), lo_hi), 5))
    elif main.kind == "latent":
        size = int(np.prod(tail))
        parts = [feeds_of(role, prior.reshape(len(prior), *tail), 3)]
        codes = run_first(("encoder",), feeds_of("encoder", real, 3)) if "encoder" in manifest.roles else None
        if codes is not None:
            parts.append(feeds_of(role, codes.astype(np.float32).reshape(len(codes), *tail), 4))
        if stress:
            extreme = latent_probes(size, max(1, n // 4), seed=2)["extreme"]
            parts.append(feeds_of(role, extreme.reshape(len(extreme), *tail), 5))
    else:
        parts = [next(iter(input_probes(inputs, manifest.latent, value_range, val, n, 1).values()))]
    return {t.name: np.concatenate([p[t.name] for p in parts]) for t in inputs}
