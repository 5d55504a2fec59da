"""fp16 and int8 role graphs from the checked fp32 ones, and bf16 runs of them, each verified before use.

fp16: our own small pass over the graph (not onnxconverter-common, whose output onnxruntime
refused on an MLP VAE): weights and compute in fp16, graph inputs/outputs float32 unless
`--io fp16`, and numerically fragile operators (exp, log, sigmoid, softplus, softmax, pow,
normalisations, reductions) kept in fp32 between Casts. Operator schemas decide which inputs
may change type, and onnx's node-level type inference gives every output's new type, so the
pass stays correct for operators it was not written against.

int8: onnxruntime.quantization (`int8.py`): static (signed symmetric per-channel QDQ), dynamic,
or weight-only; a role that fails its checks gets other calibration methods, then its most
sensitive nodes kept in float.

Every converted graph passes the same onnx.checker as the fp32 one and `bigmodel parity`'s role
and chain checks against the fp32 graphs (`verify.py`). What it measured goes into the manifest
(`extra.quality` per role, `extra.verification`); failures are returned for the caller to refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from bigmodel.errors import ExportError
from bigmodel.export.graph import EXTERNAL_DATA_BYTES, check_graph, data_files, file_bytes, save_onnx
from bigmodel.export.int8 import (
    CALIBRATION_METHODS,
    SHALLOW_K,
    STRESS_SUFFIX,
    WEIGHT_BLOCK,
    calibration_inputs,
    quantized_nodes,
    search,
    static_plan,
    to_int8_file,
)
from bigmodel.export.options import FP32_DIR, ExportOptions
from bigmodel.export.verify import VERIFY_SEED, Verifier, with_files
from bigmodel.fileio import sha256_file
from bigmodel.manifest import Manifest
from bigmodel.parity.check import error_summary, failure_lines, tolerance_used
from bigmodel.parity.inputs import DEFAULT_SAMPLES

# Operators that run in fp32 inside an fp16 graph: exp(logvar) and friends overflow or lose all
# precision in fp16 at ±4σ latents; Casts around them are cheap next to a Gemm or a Conv.
FP16_KEEP_FP32 = frozenset({
    "Exp", "Log", "Sigmoid", "Softplus", "Softmax", "LogSoftmax", "Pow", "Sqrt", "Reciprocal", "Erf",
    "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
    "BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
})
FP16_MAX = 65504.0
AUTO_CALIBRATION = 1024  # int8 static: calibration samples of the last try when the bundle fails on fewer


def convert_bundle(folder: Path, manifest: Manifest, opts: ExportOptions, val: np.ndarray,
                   say: Callable[[str], None]) -> tuple[dict[str, dict], list[str]]:
    """Replace each fp32 `<role>.onnx` in `folder` by its fp16/int8 version, verified; (quality, failures).

    quality: per role, the error figures of its checks (and for int8 the calibration method and the
    nodes kept in float); failures: one line per failed check, empty when every check passed.
    The fp32 graphs move to `folder/fp32/` (the reference; TensorRT 10 builds fp16 engines from
    them) and the caller removes that folder before the bundle is renamed into place.
    """
    fp32_dir = folder / FP32_DIR
    fp32_dir.mkdir(exist_ok=True)
    for spec in manifest.roles.values():
        for f in (folder / spec.file, (folder / spec.file).with_suffix(".onnx.data")):
            if f.exists():
                f.rename(fp32_dir / f.name)  # the graph names its data file relative to itself: move both
    fp32 = with_files(manifest, {r: f"{FP32_DIR}/{s.file}" for r, s in manifest.roles.items()})
    verifier = Verifier(folder, fp32, val, opts.precision)
    io_dtype = "float16" if opts.precision == "fp16" and opts.io == "fp16" else "float32"

    def convert(weight_ops_only: bool, opts: ExportOptions = opts):
        current = fp32  # roles converted so far, the rest still fp32: chains into a role use the converted ones
        quality: dict[str, dict] = {}
        for role, spec in list(manifest.roles.items()):
            src, dst = fp32_dir / spec.file, folder / spec.file
            current = with_files(current, {role: spec.file}, io_dtype)
            record: dict = {}
            if opts.precision == "fp16":
                to_fp16_file(src, dst, opts.io, _keep_external(src, opts))
            else:
                record = _int8_role(role, src, dst, fp32, current, verifier, val, opts, weight_ops_only)
            check_graph(dst)
            manifest.roles[role] = current.roles[role] = _with_sha(current.roles[role], dst)
            quality[role] = record
        return quality, verifier.check(current)  # every role and chain on the final graphs: what the bundle holds

    # int8 static: Q/DQ around the weight operators alone first (what runs as integer kernels, nothing between
    # them); a bundle that fails so is quantized again around every operator, whose search can keep activations
    # in float (a role's chain checks see the roles before it, so the whole bundle changes form)
    # a bundle that fails both is calibrated again on AUTO_CALIBRATION samples: a few hundred can miss the tails
    # a chain's checks reach (a 3-epoch conv AE's decoder failed at 256 and passed at 1024)
    static = opts.precision == "int8" and opts.int8_mode == "static"
    tries = [(True, opts), (False, opts)] if static else [(True, opts)]
    if static and opts.calibration < AUTO_CALIBRATION:
        more = replace(opts, calibration=AUTO_CALIBRATION)
        tries += [(True, more), (False, more)]
    for weight_ops_only, used in tries:
        quality, cases = convert(weight_ops_only, used)
        if all(c.passed for c in cases):
            break
    return _record(folder, manifest, opts, cases, quality, say, "ort-cpu")


def verify_bf16(folder: Path, manifest: Manifest, opts: ExportOptions, val: np.ndarray,
                say: Callable[[str], None]) -> tuple[dict[str, dict], list[str]]:
    """bf16: the fp32 graphs themselves, run by OpenVINO's CPU plugin in bf16, held to parity's fp16 rules.

    Nothing is converted: bf16 is how ov-cpu executes the graphs (fp32 accumulation, bf16 operands), so
    the checks run exactly that against the same graphs run in fp32 by onnxruntime. ExportError where
    OpenVINO is missing or the CPU has no bf16 arithmetic (OpenVINO would run fp32 and call it bf16).
    """
    from bigmodel.errors import BackendUnavailable
    from bigmodel.runtime.backends.openvino import bf16_reason, import_openvino

    try:
        import_openvino()
    except BackendUnavailable as e:
        raise ExportError(f"--precision bf16 runs on OpenVINO's CPU plugin: {e}") from e
    why = bf16_reason()
    if why is not None:
        raise ExportError(f"--precision bf16: {why}; export fp32, fp16 or int8 instead")
    verifier = Verifier(folder, manifest, val, "bf16")
    cases = verifier.check(replace(manifest, precision="bf16"))
    return _record(folder, manifest, opts, cases, {r: {} for r in manifest.roles}, say,
                   "ov-cpu, OpenVINO's bf16 inference precision")


def export_forms(folder: Path, manifest: Manifest, opts: ExportOptions, val: np.ndarray,
                 say: Callable[[str], None]) -> list[str]:
    """Each of `opts.forms` verified beside the fp32 graphs into `manifest.forms`; the failed checks' lines.

    int8/fp16: converted graphs in `folder/PRECISION/` (the same conversion and checks as a bundle of that
    precision alone); bf16: the fp32 graphs themselves, run in bf16 by ov-cpu.
    """
    import copy
    import os
    import shutil

    from bigmodel.manifest import DataFile, FormRole, FormSpec

    failures: list[str] = []
    for precision in opts.forms:
        form_opts = replace(opts, precision=precision, forms=())
        form = copy.deepcopy(manifest)
        if precision == "bf16":
            quality, failed = verify_bf16(folder, form, form_opts, val, say)
            prefix = ""
        else:
            sub = folder / precision
            sub.mkdir()
            for spec in manifest.roles.values():
                for f in (folder / spec.file, (folder / spec.file).with_suffix(".onnx.data")):
                    if f.exists():
                        try:  # convert_bundle moves its inputs aside: a link, not a second copy of the weights
                            os.link(f, sub / f.name)
                        except OSError:
                            shutil.copy2(f, sub / f.name)
            quality, failed = convert_bundle(sub, form, form_opts, val, say)
            shutil.rmtree(sub / FP32_DIR, ignore_errors=True)
            prefix = f"{precision}/"
        roles = {r: FormRole(prefix + s.file, s.sha256, [DataFile(prefix + d.file, d.sha256) for d in s.data_files])
                 for r, s in form.roles.items()}
        manifest.forms[precision] = FormSpec(roles, quality, form.extra["verification"])
        say(f"{precision} form: {'pass' if not failed else f'FAIL ({len(failed)} checks)'} against the fp32 graphs")
        failures += failed
    return failures


def _record(folder: Path, manifest: Manifest, opts: ExportOptions, cases, quality: dict[str, dict],
            say: Callable[[str], None], runs_on: str) -> tuple[dict[str, dict], list[str]]:
    """Each role's line and error summary, and the manifest's precision, quality and verification records."""
    failures = failure_lines(cases, prefix=f"{opts.precision} ")
    for role, spec in manifest.roles.items():
        mine = [c for c in cases if c.target.split("->")[-1] == role]  # the role, and chains into it
        quality[role] = {**error_summary(mine), **quality[role]}
        kept = quality[role].get("kept_float")
        shares = int8_shares(folder / spec.file) if opts.precision == "int8" else {}
        if shares:
            quality[role]["int8_flops_share"] = shares
        what = f"{spec.file} run in bf16 by ov-cpu" if opts.precision == "bf16" else \
            f"{spec.file} ({file_bytes(folder / spec.file) / 1e6:.2f} MB)"
        say(f"{role}: {opts.precision} {what} vs fp32 graphs: "
            f"{'pass' if all(c.passed for c in mine) else 'FAIL'}, {tolerance_used(mine):.0%} of tolerance used"
            + (f", {len(kept)} node(s) kept in float" if kept else "") + share_text(shares)
            + (f" ({', '.join(shallow)}: {SHALLOW_K} or fewer inputs per output, kept float by design)"
               if (shallow := quality[role].get("shallow_float")) else ""))
    manifest.precision = opts.precision
    manifest.extra["precision"] = precision_note(opts)
    manifest.extra["quality"] = quality
    manifest.extra["verification"] = {
        "checks": f"bigmodel parity's role and chain checks (bigmodel.parity.check), {runs_on}",
        "reference": "the fp32 ONNX graphs, checked against PyTorch at export",
        "tolerances": opts.precision, "samples": DEFAULT_SAMPLES, "seed": VERIFY_SEED,
        "passed": not failures, "failing": sorted({c.target for c in cases if not c.passed}), "failures": failures}
    return quality, failures


def _int8_role(role: str, src: Path, dst: Path, fp32: Manifest, current: Manifest, verifier: Verifier,
               val: np.ndarray, opts: ExportOptions, weight_ops_only: bool = True) -> dict:
    """Quantize one role, searching calibration methods and nodes kept in float until its checks pass."""
    calib: dict[bool, dict[str, np.ndarray] | None] = {False: None, True: None}
    methods: tuple[str | None, ...] = (None,)
    if opts.int8_mode == "static":
        def run_first(roles: tuple[str, ...], feeds: dict[str, np.ndarray]) -> np.ndarray | None:
            return next((verifier.generate(r, feeds) for r in roles if r in fp32.roles), None)

        calib = {stress: calibration_inputs(fp32, role, val, opts.calibration, run_first, stress)
                 for stress in (False, True)}
        methods = (*CALIBRATION_METHODS, *(m + STRESS_SUFFIX for m in CALIBRATION_METHODS))
    external = _keep_external(src, opts)

    def build(method: str | None, exclude, only) -> None:
        stress = bool(method) and method.endswith(STRESS_SUFFIX)
        to_int8_file(src, dst, opts.int8_mode, calib[stress], (method or "MinMax").removesuffix(STRESS_SUFFIX),
                     exclude, only, external, weight_ops_only)

    result = search(build=build, evaluate=lambda: tolerance_used(verifier.check(current, role)),
                    candidates=lambda: quantized_nodes(src, dst, opts.int8_mode), methods=methods)
    record: dict = {"calibration": None, "calibration_set": None}
    if result.method:
        stress = result.method.endswith(STRESS_SUFFIX)
        record = {"calibration": result.method.removesuffix(STRESS_SUFFIX),
                  "calibration_set": "in-distribution + stress inputs (±4σ codes / noise images)" if stress
                  else "in-distribution"}
    if opts.int8_mode == "static":
        record["quantized"] = "weight operators" if weight_ops_only else "every operator"
        record["calibration_samples"] = opts.calibration
        if weight_ops_only:
            import onnx

            shallow = static_plan(onnx.load(str(src), load_external_data=False)).shallow
            if shallow:
                record["shallow_float"] = shallow
    return {**record, "kept_float": result.kept_float, "attempts": len(result.attempts)}


def int8_shares(path: Path) -> dict[str, float]:
    """Backend -> share of the graph's GEMM FLOPs it runs as integer kernels, for each CPU engine installed."""
    from bigmodel.errors import BigmodelError
    from bigmodel.export.executed import int8_share

    out = {}
    for backend in ("ort-cpu", "ov-cpu"):
        try:
            share = int8_share(path, backend)["share"]
        except (BigmodelError, ImportError, RuntimeError):  # not installed, or an operator it cannot read
            continue
        if share is not None:
            out[backend] = share
    return out


def share_text(shares: dict[str, float]) -> str:
    """', int8 kernels run 100% of FLOPs on ort-cpu, 50% on ov-cpu' (empty without figures)."""
    if not shares:
        return ""
    return ", int8 kernels run " + ", ".join(f"{v:.0%} of FLOPs on {k}" if i == 0 else f"{v:.0%} on {k}"
                                             for i, (k, v) in enumerate(shares.items()))


def _with_sha(spec, path: Path):
    return replace(spec, sha256=sha256_file(path), data_files=data_files(path))


def precision_note(opts: ExportOptions) -> dict:
    """What the conversion did, for manifest.extra (per-role choices are in extra.quality)."""
    if opts.precision == "fp16":
        return {"precision": "fp16", "io": opts.io, "converter": "bigmodel.export.precision.to_fp16",
                "fp32_ops": sorted(FP16_KEEP_FP32)}
    if opts.precision == "bf16":
        return {"precision": "bf16", "graphs": "the fp32 graphs", "runs_on": "ov-cpu",
                "how": "OpenVINO CPU plugin, INFERENCE_PRECISION_HINT bf16 (bf16 operands, fp32 accumulation)"}
    note = {"precision": "int8", "mode": opts.int8_mode, "tool": "onnxruntime.quantization", "weights": "int8"}
    if opts.int8_mode == "static":
        note.update(format="QDQ", per_channel=True, activations="int8", symmetric=True,
                    calibrate=f"first of {', '.join(CALIBRATION_METHODS)} that passes, on the in-distribution "
                              "set, then on one with stress inputs added; per role in extra.quality",
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


def _keep_external(src: Path, opts: ExportOptions) -> bool:
    """External data for a converted graph: as asked, else when the fp32 one passes 2 GiB."""
    if opts.external_data is not None:
        return opts.external_data
    return file_bytes(src) >= EXTERNAL_DATA_BYTES

