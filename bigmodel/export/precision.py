"""fp16 and int8 role graphs from the checked fp32 ones, and what the conversion cost in quality.

fp16: our own small pass over the graph (not onnxconverter-common, whose output onnxruntime
refused on an MLP VAE): weights and compute in fp16, graph inputs/outputs float32 unless
`--io fp16`, and numerically fragile operators (exp, log, sigmoid, softplus, softmax, pow,
normalisations, reductions) kept in fp32 between Casts. Operator schemas decide which inputs
may change type, and onnx's node-level type inference gives every output's new type, so the
pass stays correct for operators it was not written against.

int8: onnxruntime.quantization. `static` (QDQ, per-channel weights, activations calibrated on
real validation images for image-input roles and prior samples for latent-input roles) or
`dynamic` (int8 weights, activations quantized per call; Gemm is first rewritten as MatMul + Add
because onnxruntime's dynamic quantizer does not quantize Gemm), or `weights` (int8 weight-only
MatMulNBits from onnxruntime, blocks of 128 with one scale each, int8 compute: the fastest at
batch 1 on big MLPs, where reading the weights is the cost; an onnxruntime contrib operator that
other runtimes lack, and MatMul/Gemm only, convolutions stay fp32).

Every converted graph passes the same onnx.checker as the fp32 one, loads in onnxruntime, and is
compared with the fp32 graph on validation images, prior samples and ±4σ latents: max and mean
abs error, PSNR for image outputs. Non-finite outputs fail the export.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bigmodel.errors import ExportError
from bigmodel.export.onnx import (
    EXTERNAL_DATA_BYTES,
    FP32_DIR,
    ExportOptions,
    _file_bytes,
    _import,
    check_graph,
    ort_session,
    save_onnx,
)
from bigmodel.fileio import sha256_file
from bigmodel.manifest import Manifest, RoleSpec
from bigmodel.models.probes import role_probes
from bigmodel.runtime.priors import draw as draw_prior

# Operators that run in fp32 inside an fp16 graph: exp(logvar) and friends overflow or lose all
# precision in fp16 at ±4σ latents; Casts around them are cheap next to a Gemm or a Conv.
FP16_KEEP_FP32 = frozenset({
    "Exp", "Log", "Sigmoid", "Softplus", "Softmax", "LogSoftmax", "Pow", "Sqrt", "Reciprocal", "Erf",
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
})
FP16_MAX = 65504.0
CALIBRATION_BATCH = 64
WEIGHT_BLOCK = 128  # int8 weight-only: weights per scale (fewer when a layer has fewer inputs)
IN_DISTRIBUTION = ("val", "prior")  # probe sets that PSNR is computed on (not noise, not ±4σ)


def convert_bundle(folder: Path, manifest: Manifest, opts: ExportOptions, val: np.ndarray,
                   say: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Replace each fp32 `<role>.onnx` in `folder` by its fp16/int8 version; returns quality per role.

    The fp32 graphs move to `folder/fp32/` (TensorRT 10 builds fp16 engines from them) and the
    caller removes that folder before the bundle is renamed into place.
    """
    fp32_dir = folder / FP32_DIR
    fp32_dir.mkdir(exist_ok=True)
    quality: dict[str, dict[str, float]] = {}
    for role, spec in list(manifest.roles.items()):
        src = fp32_dir / spec.file
        for f in (folder / spec.file, (folder / spec.file).with_suffix(".onnx.data")):
            if f.exists():
                f.rename(fp32_dir / f.name)  # the graph names its data file relative to itself: move both
        dst = folder / spec.file
        external = _keep_external(src, opts)
        if opts.precision == "fp16":
            to_fp16_file(src, dst, opts.io, external)
        else:
            inputs = (_calibration_inputs(spec, manifest, val, opts.calibration, fp32_dir)
                      if opts.int8_mode == "static" else None)
            to_int8_file(src, dst, opts.int8_mode, inputs, trt_friendly=opts.engine, external=external)
        check_graph(dst)
        probes = role_probes(spec.inputs[0].kind, manifest.latent.dim, val, opts.probes, seed=0)
        quality[role] = compare_graphs(src, dst, probes, spec, manifest, role, opts.precision)
        io_dtype = "float16" if opts.precision == "fp16" and opts.io == "fp16" else "float32"
        manifest.roles[role] = RoleSpec(
            file=spec.file, sha256=sha256_file(dst),
            inputs=[replace(t, dtype=io_dtype) for t in spec.inputs],
            outputs=[replace(t, dtype=io_dtype) for t in spec.outputs],
        )
        say(f"{role}: {opts.precision} {dst.name} ({_file_bytes(dst) / 1e6:.2f} MB), vs fp32: "
            + ", ".join(f"{k} {v:.3g}" for k, v in quality[role].items()))
    manifest.precision = opts.precision
    manifest.extra["precision"] = precision_note(opts)
    manifest.extra["quality"] = quality
    return quality


def precision_note(opts: ExportOptions) -> dict:
    """What the conversion did, for manifest.extra."""
    if opts.precision == "fp16":
        return {"precision": "fp16", "io": opts.io, "converter": "bigmodel.export.precision.to_fp16",
                "fp32_ops": sorted(FP16_KEEP_FP32)}
    note = {"precision": "int8", "mode": opts.int8_mode, "tool": "onnxruntime.quantization", "weights": "int8"}
    if opts.int8_mode == "static":
        act, sym = ("int8", True) if opts.engine else ("uint8", False)
        note.update(format="QDQ", per_channel=True, activations=act, symmetric=sym, calibrate="MinMax",
                    calibration=f"{opts.calibration} validation images + generated images (image inputs); "
                                f"{opts.calibration} prior samples + encoder codes (latent inputs)")
    elif opts.int8_mode == "dynamic":
        note.update(format="MatMulInteger/ConvInteger", activations="uint8, quantized per call")
    else:
        note.update(format="com.microsoft MatMulNBits (onnxruntime only)", block_size=f"<= {WEIGHT_BLOCK}",
                    symmetric=True,
                    activations="fp32 in and out, int8 compute inside (accuracy_level 4)", convolutions="fp32")
    return note


# ------------------------------------------------------------------------------------------- fp16
def to_fp16_file(src: Path, dst: Path, io_dtype: str = "fp32", external: bool = False) -> None:
    import onnx

    model = onnx.load(str(src))
    save_onnx(to_fp16(model, io_dtype), dst, external)


def to_fp16(model, io_dtype: str = "fp32", keep_fp32: frozenset[str] = FP16_KEEP_FP32):
    """An fp16 copy of an fp32 ModelProto (top-level graph; control flow is refused).

    Float initializers and Constants become fp16 unless only fp32 operators read them; every
    node in `keep_fp32` gets Casts to fp32 on its float inputs; the graph's float inputs and
    outputs are float32 with Casts inside (io_dtype "fp32") or float16 themselves ("fp16").
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    graph = model.graph
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError(f"fp16 conversion does not handle control flow ({node.op_type} {node.name!r})")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 18)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only_fp32_readers(name: str) -> bool:
        readers = consumers.get(name, [])
        return bool(readers) and name not in outputs and all(n.op_type in keep_fp32 for n in readers)

    types: dict[str, int] = {}  # elem type of every tensor in the new graph
    for init in graph.initializer:
        if init.data_type == f32 and not only_fp32_readers(init.name):
            arr = numpy_helper.to_array(init)
            if arr.size and float(np.max(np.abs(arr))) > FP16_MAX:
                raise ExportError(f"fp16: weight {init.name} holds values beyond fp16's range (±{FP16_MAX:g})")
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), init.name))
        types[init.name] = init.data_type
    for inp in graph.input:
        elem = inp.type.tensor_type.elem_type
        if elem == f32 and io_dtype == "fp16":
            inp.type.tensor_type.elem_type = elem = f16
        types[inp.name] = elem

    taken = {n for node in graph.node for n in [*node.input, *node.output]} | set(types)
    new_nodes: list = []
    casts: dict[tuple[str, int], str] = {}

    def unique(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def cast(name: str, to: int) -> str:
        if not name or types.get(name) not in (f32, f16) or types[name] == to:
            return name
        if (name, to) not in casts:
            out = unique(f"{name}_{'fp16' if to == f16 else 'fp32'}")
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=unique(f"Cast_{out}")))
            types[out] = to
            casts[(name, to)] = out
        return casts[(name, to)]

    for node in graph.node:
        schema = _schema(node, opset)
        fp32_node = node.op_type in keep_fp32 or schema is None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == f32 and not only_fp32_readers(node.output[0]):
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        elif not fp32_node:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == f32:
                    a.i = f16
                elif node.op_type == "ConstantOfShape" and a.name == "value" and a.t.data_type == f32:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        for i, name in enumerate(node.input):
            node.input[i] = cast(name, f32 if fp32_node else _wanted(schema, i, f16))
        new_nodes.append(node)
        _infer_types(node, schema, types)

    want_out = f16 if io_dtype == "fp16" else f32
    for out in graph.output:
        elem = types.get(out.name, out.type.tensor_type.elem_type)
        if elem in (f32, f16) and elem != want_out:
            raw = unique(f"{out.name}_raw")
            for node in new_nodes:
                for i, name in enumerate(node.input):
                    if name == out.name:
                        node.input[i] = raw
                for i, name in enumerate(node.output):
                    if name == out.name:
                        node.output[i] = raw
            new_nodes.append(helper.make_node("Cast", [raw], [out.name], to=want_out, name=unique(f"Cast_{raw}")))
            elem = want_out
        out.type.tensor_type.elem_type = elem
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    return model


def _schema(node, opset: int):
    import onnx

    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except Exception:  # an operator onnx does not define: run it in fp32, as it was
        return None


def _wanted(schema, index: int, f16: int) -> int:
    """The float type input `index` may take in fp16 compute: fp16 where its type constraint allows."""
    from onnx import TensorProto

    params = schema.inputs
    param = params[min(index, len(params) - 1)]
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    types = allowed.get(param.type_str, {param.type_str})
    return f16 if "tensor(float16)" in types else TensorProto.FLOAT


def _infer_types(node, schema, types: dict[str, int]) -> None:
    from onnx import helper, shape_inference

    if schema is not None:
        try:
            feeds = {n: helper.make_tensor_type_proto(types[n], None) for n in node.input if n in types}
            for name, t in shape_inference.infer_node_outputs(schema, node, feeds).items():
                types[name] = t.tensor_type.elem_type
            if all(o in types or not o for o in node.output):
                return
        except Exception:
            pass
    raise ExportError(f"fp16: cannot tell the output types of {node.op_type} {node.name!r}")


# ------------------------------------------------------------------------------------------- int8
def to_int8_file(src: Path, dst: Path, mode: str, calibration: np.ndarray | None, trt_friendly: bool = False,
                 external: bool = False) -> None:
    """Quantize the fp32 graph at `src` into `dst` with onnxruntime.quantization."""
    import onnx

    _import("onnxruntime", "int8 quantization")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    work = Path(tempfile.mkdtemp(prefix=".quant.", dir=dst.parent))
    try:
        dst.with_suffix(".onnx.data").unlink(missing_ok=True)
        with _quiet_quantizer():
            if mode == "dynamic":
                prep = work / "prep.onnx"
                save_onnx(gemm_to_matmul(onnx.load(str(src))), prep, external)
                quantize_dynamic(prep, dst, weight_type=QuantType.QInt8, use_external_data_format=external)
            elif mode == "weights":
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

                model = gemm_to_matmul(onnx.load(str(src)))
                quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=weight_block(model), is_symmetric=True,
                                                 accuracy_level=4)
                quantizer.process()
                quantizer.model.save_model_to_file(str(dst), external)
            else:
                name = onnx.load(str(src), load_external_data=False).graph.input[0].name

                class Feeds(CalibrationDataReader):
                    def __init__(self):
                        self.batches = iter(np.array_split(calibration, max(1, len(calibration) // CALIBRATION_BATCH)))

                    def get_next(self):
                        batch = next(self.batches, None)
                        return None if batch is None else {name: np.ascontiguousarray(batch)}

                act = QuantType.QInt8 if trt_friendly else QuantType.QUInt8
                extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if trt_friendly else {}
                quantize_static(src, dst, Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=act, weight_type=QuantType.QInt8, use_external_data_format=external,
                                extra_options=extra)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"int8 {mode} quantization of {src.name} failed: {type(e).__name__}: "
                          f"{str(e).strip()[:300]}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def weight_block(model) -> int:
    """Weights per int8 scale: WEIGHT_BLOCK, or less when a MatMul's K is smaller (blocks pad K up to their size)."""
    inits = {i.name: i for i in model.graph.initializer}
    ks = [inits[n.input[1]].dims[0] for n in model.graph.node
          if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]
    small = min(ks, default=WEIGHT_BLOCK)
    return WEIGHT_BLOCK if small >= WEIGHT_BLOCK else max(16, 1 << (int(small).bit_length() - 1))


def gemm_to_matmul(model):
    """Gemm(A, W, b) with a weight initializer -> MatMul(A, Wᵀ) + Add(b): what the dynamic quantizer handles."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0)
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
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


def _calibration_inputs(spec: RoleSpec, manifest: Manifest, val: np.ndarray, n: int, fp32_dir: Path) -> np.ndarray:
    """What the role really sees, so int8 ranges cover it.

    Image inputs: validation images, plus the generator's/decoder's images of prior samples (a GAN
    discriminator judges both; calibrated on real images alone its int8 output was constant on
    generated ones). Latent inputs: prior samples, plus the encoder's codes of validation images
    (an AE's codes are not N(0, I)). The other role's fp32 graph is already in `fp32_dir` because
    roles are converted in order (encoder before decoder, generator before discriminator).
    """
    real = np.ascontiguousarray(val[: min(n, len(val))], dtype=np.float32)
    prior = draw_prior(manifest.latent, n, seed=1)  # the runtime's own sampler: one definition of the prior
    if spec.inputs[0].kind == "image":
        made = _run_fp32(fp32_dir, manifest, ("generator", "decoder"), prior)
        return real if made is None else np.concatenate([real, made])
    codes = _run_fp32(fp32_dir, manifest, ("encoder",), real)
    return prior if codes is None else np.concatenate([prior, codes])


def _run_fp32(fp32_dir: Path, manifest: Manifest, roles: tuple[str, ...], x: np.ndarray) -> np.ndarray | None:
    """First output of the first of `roles` whose fp32 graph is in `fp32_dir`, on `x`; None if none is."""
    import onnxruntime as ort

    for role in roles:
        if role in manifest.roles and (fp32_dir / manifest.roles[role].file).exists():
            graph = fp32_dir / manifest.roles[role].file
            session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
            return session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float32)
    return None


# ---------------------------------------------------------------------------------------- quality
def compare_graphs(ref: Path, new: Path, probes: dict[str, np.ndarray], spec: RoleSpec, manifest: Manifest,
                   role: str, precision: str) -> dict[str, float]:
    """The converted graph against the fp32 one, both in onnxruntime.

    `max_abs`, `mean_abs` and, for image outputs, `psnr_db` (over the data range) on in-distribution
    inputs (validation images, prior samples); `max_abs_stress` on noise images and ±4σ latents,
    where calibrated int8 ranges clip. Non-finite outputs anywhere raise ExportError.
    """
    s_ref, s_new = ort_session(ref), ort_session(new)
    name = s_ref.get_inputs()[0].name
    in_dtype = np.float16 if s_new.get_inputs()[0].type == "tensor(float16)" else np.float32
    lo, hi = manifest.data.value_range
    worst, stress, total, count, sq, sq_count = 0.0, 0.0, 0.0, 0, 0.0, 0
    for probe, x in probes.items():
        want = s_ref.run(None, {name: x})
        got = s_new.run(None, {name: x.astype(in_dtype)})
        for out, w, g in zip(spec.outputs, want, got, strict=True):
            g = g.astype(np.float64)
            if not np.all(np.isfinite(g)):
                raise ExportError(f"{role}: the {precision} graph gives non-finite {out.name} on {probe} inputs "
                                  f"(fp32 gives finite values); the bundle was not written")
            diff = np.abs(g - w)
            if probe not in IN_DISTRIBUTION:
                stress = max(stress, float(diff.max()))
                continue
            worst, total, count = max(worst, float(diff.max())), total + float(diff.sum()), count + diff.size
            if out.kind == "image":
                sq, sq_count = sq + float(np.sum(diff**2)), sq_count + diff.size
    quality = {"max_abs": worst, "mean_abs": total / max(count, 1)}
    if sq_count:
        mse = sq / sq_count
        quality["psnr_db"] = float("inf") if mse == 0 else float(10 * np.log10((hi - lo) ** 2 / mse))
    quality["max_abs_stress"] = stress
    return quality


def _keep_external(src: Path, opts: ExportOptions) -> bool:
    if opts.external_data is not None:
        return opts.external_data
    return _file_bytes(src) >= EXTERNAL_DATA_BYTES

