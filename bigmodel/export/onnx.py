"""Role graphs to ONNX and the bundle around them.

Each role of a trained model becomes one ONNX graph with a dynamic batch axis, cleaned by a
maintained simplifier (onnxslim; for external-data models torch.onnx's own onnxscript optimizer,
which works on the weights in place), checked by onnx.checker (full check, strict shape
inference), free of random operators, and compared with PyTorch in onnxruntime before the
bundle is renamed into place. `precision.py` then converts the graphs to fp16/int8,
`tensorrt.py` builds engines and `triton.py` writes a Triton model repository.

Memory: weights are read through a memory-mapped checkpoint, PyTorch's reference outputs are
computed before each graph is written, and the model is released before onnxruntime loads the
graphs for the check, so a big model is never held twice.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import bigmodel
from bigmodel.data import load_data
from bigmodel.errors import CheckFailed, ExportError, InputError, missing_package
from bigmodel.fileio import (
    TRITON_MARKER,
    check_output_folder,
    make_public_dir,
    make_temp_dir,
    os_refusal,
    remove_stale_temps,
    replace_dir,
    sha256_file,
    storage_error,
)
from bigmodel.manifest import BATCH, DataFile, Manifest, RoleSpec, TensorSpec
from bigmodel.models.checkpoint import CHECKPOINT_NAME
from bigmodel.models.checkpoint import load_model as load_checkpoint_model
from bigmodel.models.probes import role_probes

MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes natively
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Dropout", "Multinomial"})
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph
# The fp32 graph is held to `bigmodel parity`'s fp32 rules (bigmodel.parity.tolerances): images
# within 1e-5, codes and logits within 1e-5 + 1e-5·|value| (a discriminator's logits on noise images
# reach ~30-60, where float32 summation order alone moves them by ~1e-5), plus cosine/PSNR floors.
FP32_ATOL = 1e-5  # the image bound, TOLERANCES["fp32"]["image"].atol; what the CLI reports against
ABS_CHECKED = ("val", "prior", "extreme")  # the probe sets whose max abs error the CLI reports
PRECISIONS = ("fp32", "fp16", "int8")
IO_DTYPES = ("fp32", "fp16")
INT8_MODES = ("static", "dynamic", "weights")
FP32_DIR = "fp32"  # fp16/int8 exports keep the fp32 graphs here while converting; removed before the rename


@dataclass
class ExportOptions:
    """What `bigmodel export` was asked; see its --help for each field."""

    out: Path | None = None
    opset: int = MIN_OPSET
    precision: str = "fp32"
    io: str = "fp32"  # fp16 bundles: dtype of graph inputs/outputs
    int8_mode: str = "static"  # static (QDQ, calibrated) | dynamic | weights (int8 weight-only MatMulNBits)
    calibration: int = 256
    max_batch: int = 1024
    opt_batch: int = 64
    engine: bool = False
    triton: Path | None = None
    force: bool = False
    external_data: bool | None = None  # None: only when the weights pass 2 GiB
    probes: int = 64  # inputs per probe set in the fp32 check against PyTorch
    allow_failing: bool = False  # fp16/int8: write a bundle whose checks failed, with the failures in its manifest


@dataclass
class RoleReport:
    role: str
    file: str
    bytes: int
    seconds: float
    max_abs_err: dict[str, float] = field(default_factory=dict)  # fp32 graph vs PyTorch, per probe set


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    roles: list[RoleReport]
    seconds: float
    quality: dict[str, dict] = field(default_factory=dict)  # fp16/int8 vs fp32 graphs, per role
    triton: Path | None = None
    failures: list[str] = field(default_factory=list)  # fp16/int8 checks that failed (only with allow_failing)


@dataclass
class Reference:
    """PyTorch's outputs for one role's probe inputs, computed before the model is released."""

    inputs: dict[str, np.ndarray]  # probe set -> its inputs
    outputs: dict[tuple[str, int], list[np.ndarray]]  # (probe set, batch) -> outputs on inputs[:batch]


def validate_options(opts: ExportOptions) -> None:
    """Refuse bad option values before any work starts."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opts.opset <= newest:
        raise InputError(f"--opset must be between {MIN_OPSET} and {newest} (what the installed torch exporter and "
                         f"onnx {onnx.__version__} write); got {opts.opset}")
    if opts.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}; got {opts.precision!r}")
    if opts.io not in IO_DTYPES:
        raise InputError(f"--io must be one of {', '.join(IO_DTYPES)}; got {opts.io!r}")
    if opts.io == "fp16" and opts.precision != "fp16":
        raise InputError(f"--io fp16 needs --precision fp16; got --precision {opts.precision}")
    if opts.int8_mode not in INT8_MODES:
        raise InputError(f"--int8-mode must be one of {', '.join(INT8_MODES)}; got {opts.int8_mode!r}")
    if opts.calibration < 1:
        raise InputError(f"--calibration must be >= 1; got {opts.calibration}")
    if opts.max_batch < 1 or opts.opt_batch < 1:
        raise InputError(f"--max-batch and --opt-batch must be >= 1; got {opts.max_batch} and {opts.opt_batch}")
    if opts.opt_batch > opts.max_batch:
        raise InputError(f"--opt-batch must be <= --max-batch; got {opts.opt_batch} > {opts.max_batch}")
    if opts.probes < 2:
        raise InputError(f"probes must be >= 2 (batch 1 and an odd batch are checked); got {opts.probes}")
    if opts.engine and opts.precision == "int8" and opts.int8_mode != "static":
        raise InputError(f"--engine with --precision int8 needs --int8-mode static: TensorRT builds int8 engines "
                         f"from QDQ graphs; got --int8-mode {opts.int8_mode}")


def export_bundle(run_dir: str | Path, opts: ExportOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export every role of the run's checkpoint into a bundle folder (default RUN_DIR/bundle).

    Everything is written into a temporary folder beside the bundle and renamed at the end:
    a failure never leaves a half-written bundle (or Triton repository).

    >>> result = export_bundle("runs/vae")
    >>> result.bundle, [r.max_abs_err for r in result.roles]
    """
    opts = opts or ExportOptions()
    validate_options(opts)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    out = Path(opts.out) if opts.out else ckpt_path.parent / "bundle"
    check_output_folder(out, opts.force, "bundle")
    if opts.triton:
        check_output_folder(Path(opts.triton), opts.force, "Triton model repository", flag="--triton")
    if opts.engine:
        from bigmodel.export.tensorrt import require_tensorrt

        require_tensorrt()  # before any work: no GPU or no TensorRT is a one-line exit 2, and nothing written
    say = progress or (lambda _msg: None)
    model, ckpt_sha = load_model(ckpt_path)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    tmp = make_temp_dir(out)
    triton_tmp: Path | None = None
    try:
        data = load_data(model.data.source, seed=model.data.seed, val_fraction=model.data.val_fraction)
        val, latent = data.val, model.export_latent_spec(data.train)  # a plain AE fits its prior here
        del data
        roles, refs, seconds = {}, {}, {}
        for role in model.roles:
            t_role = time.perf_counter()
            roles[role], refs[role] = export_role(model, role, tmp, opts, val)
            seconds[role] = time.perf_counter() - t_role
            size = _file_bytes(tmp / roles[role].file)
            say(f"{role}: wrote {roles[role].file} ({size / 1e6:.2f} MB) in {seconds[role]:.1f}s")
        manifest = Manifest(
            family=model.family, arch=model.arch, data=model.data, latent=latent, roles=roles,
            precision="fp32", opset=opts.opset, versions=_versions(), checkpoint_sha256=ckpt_sha,
        )
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        del model  # onnxruntime loads the graphs next: never hold a big model twice
        if weights > 256 * 1024**2:
            gc.collect()  # in case a reference cycle still holds the weights
        reports = []
        for role, spec in roles.items():
            t_check = time.perf_counter()
            errors, failures = check_against_reference(tmp / spec.file, refs[role], spec, manifest.data.value_range)
            if failures:
                raise ExportError(f"{role}: exported graph differs from PyTorch ({len(failures)} failed check(s); "
                                  f"the bundle was not written): {failures[0]}")
            worst = max(errors, key=lambda k: errors[k] if k in ABS_CHECKED else 0.0)
            seconds[role] += time.perf_counter() - t_check
            reports.append(RoleReport(role, spec.file, _file_bytes(tmp / spec.file), seconds[role], errors))
            say(f"{role}: fp32 check max |onnx - torch| {errors[worst]:.2e} "
                f"({', '.join(refs[role].inputs)} inputs, batch 1 and {opts.probes - 1})")
        quality: dict[str, dict] = {}
        failures: list[str] = []
        if opts.precision != "fp32":
            from bigmodel.export.precision import convert_bundle

            quality, failures = convert_bundle(tmp, manifest, opts, val, say)
            if failures and not opts.allow_failing:
                raise CheckFailed(
                    f"{opts.precision} graphs fail {len(failures)} check(s) against the fp32 graphs, so no bundle "
                    f"was written (--allow-failing writes it with the failures in its manifest); first: {failures[0]}")
            for report in reports:
                report.bytes = _file_bytes(tmp / manifest.roles[report.role].file)
        manifest.extra["graphs"] = _graphs_note(opts)
        manifest.save(tmp)
        if opts.engine:
            from bigmodel.export.tensorrt import build_engines

            build_engines(tmp, manifest, opts, out, say)
            manifest.save(tmp)
        shutil.rmtree(tmp / FP32_DIR, ignore_errors=True)
        if opts.triton:
            from bigmodel.export.triton import write_repository

            triton = Path(opts.triton)
            triton.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(triton.parent)
            triton_tmp = make_temp_dir(triton)
            names = write_repository(tmp, manifest, triton_tmp, opts)
            (triton_tmp / TRITON_MARKER).write_text("written by bigmodel export; --force may replace this folder\n")
            make_public_dir(triton_tmp)
            say(f"triton: {len(names)} models ({', '.join(names)})")
        make_public_dir(tmp)
        replace_dir(tmp, out)
        if triton_tmp is not None:
            replace_dir(triton_tmp, Path(opts.triton))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if triton_tmp is not None:
            shutil.rmtree(triton_tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, reports, time.perf_counter() - t0, quality,
                        Path(opts.triton) if opts.triton else None, failures)


def load_model(ckpt_path: Path):
    """The checkpoint's model in eval mode on CPU (memory-mapped weights, held once), and its sha256."""
    model = load_checkpoint_model(ckpt_path, mapped=True)  # raises the checkpoint module's "not found" first
    return model, sha256_file(ckpt_path)


def export_role(model, role: str, folder: Path, opts: ExportOptions, val: np.ndarray) -> tuple[RoleSpec, Reference]:
    """Export, clean and check one role; returns its manifest entry and PyTorch's outputs on its probes."""
    module = model.role_module(role).eval()
    io_spec = model.roles[role]
    probes = role_probes(io_spec.inputs[0][1], model.config.latent_dim, val, opts.probes, seed=0)
    ref = torch_reference(module, probes)
    example = torch.from_numpy(next(iter(probes.values()))[:2])
    path = folder / f"{role}.onnx"
    big = opts.external_data
    if big is None:
        big = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_BYTES
    write_onnx(module, example, [n for n, _ in io_spec.inputs], [n for n, _ in io_spec.outputs], path, opts.opset, big)
    check_graph(path)
    outs = next(iter(ref.outputs.values()))
    spec = RoleSpec(
        file=path.name,
        sha256=sha256_file(path),
        data_files=data_files(path),
        inputs=[TensorSpec(n, "float32", [BATCH, *example.shape[1:]], k) for n, k in io_spec.inputs],
        outputs=[TensorSpec(n, "float32", [BATCH, *o.shape[1:]], k) for (n, k), o in zip(io_spec.outputs, outs,
                                                                                        strict=True)],
    )
    return spec, ref


def torch_reference(module: torch.nn.Module, probes: dict[str, np.ndarray]) -> Reference:
    """PyTorch's outputs at batch 1 and at an odd batch (all but one probe) for every probe set."""
    outputs = {}
    with torch.no_grad():
        for probe, x in probes.items():
            for batch in sorted({1, len(x) - 1 or 1}):
                got = module(torch.from_numpy(x[:batch]))
                outputs[(probe, batch)] = [t.numpy().copy() for t in (got if isinstance(got, tuple) else (got,))]
    return Reference(probes, outputs)


def check_against_reference(path: Path, ref: Reference, spec: RoleSpec,
                            value_range: tuple[float, float]) -> tuple[dict[str, float], list[str]]:
    """The graph in onnxruntime against PyTorch's outputs with parity's statistics and fp32 tolerances.

    Returns (max |onnx - torch| per probe set, one line per failed check). For the report, an output
    whose values pass 1 in size (a decoder's logits at ±4σ codes reach ~50) counts its error relative
    to that size: float32 rounding there is relative, not absolute (the checks use rtol for it).
    """
    from bigmodel.parity.stats import compare
    from bigmodel.parity.tolerances import rule, tolerances_for

    tol = tolerances_for("fp32")
    session = ort_session(path)
    name = session.get_inputs()[0].name
    errors: dict[str, float] = {}
    failures: list[str] = []
    for (probe, batch), want in ref.outputs.items():
        got = session.run(None, {name: ref.inputs[probe][:batch]})
        for t, g, w in zip(spec.outputs, got, want, strict=True):
            check = compare(g, w, t.kind, rule(tol, t.kind, probe), value_range, t.name)
            size = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
            errors[probe] = max(errors.get(probe, 0.0), check.stats.get("max_abs", float("inf")) / size)
            failures += [f"{path.stem} output {t.name!r} ({t.kind}; {probe} inputs, batch {batch}): {f.describe()}"
                         for f in check.failures]
    return errors, failures


def ort_session(path: Path):
    """A CPU onnxruntime session for one graph, warnings off."""
    ort = _import("onnxruntime", "checking the exported graph")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_prepacking", "1")  # a checking session: weights in memory once
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"onnxruntime cannot load {path.name}: {str(e).strip().splitlines()[0][:300]}") from e


def write_onnx(module: torch.nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], path: Path,
               opset: int, external_data: bool) -> None:
    """torch.onnx (dynamo) with a dynamic batch axis, then cleanup; exporter chatter is captured.

    torch.onnx runs onnxscript's optimizer (constant folding, BatchNorm fusion, dead code) on
    every graph. Embedded-weight graphs then go through onnxslim; external-data graphs are saved
    straight from the exporter, which streams the weights to `<name>.data` one tensor at a time
    (loading them back into a ModelProto for onnxslim would hold them twice).
    """
    onnx = _import("onnx", "ONNX export")
    onnxslim = _import("onnxslim", "ONNX graph cleanup")
    log = io.StringIO()
    dynamic = ({0: torch.export.Dim("batch", min=1)},)
    path.with_suffix(".onnx.data").unlink(missing_ok=True)
    try:
        with _quiet(log), _cached_torchlib_registry():
            program = torch.onnx.export(module, (example,), None, input_names=inputs, output_names=outputs,
                                        dynamic_shapes=dynamic, dynamo=True, opset_version=opset, optimize=True,
                                        verbose=False)
            try:
                program.save(str(path), external_data=external_data)
            finally:
                _release_weights(program)
                del program
            if external_data:
                got = {o.version for o in onnx.load(str(path), load_external_data=False).opset_import
                       if o.domain in ("", "ai.onnx")}
            else:
                slim = onnxslim.slim(onnx.load(str(path)))
                got = {o.version for o in slim.opset_import if o.domain in ("", "ai.onnx")}
    except Exception as e:
        if os_refusal(e) is not None:  # disk full, read-only: the machine's refusal, not the exporter's
            raise storage_error(os_refusal(e), path, "write") from e
        raise ExportError(f"torch.onnx could not export {path.stem}: {type(e).__name__}: {str(e)[:300]}") from e
    if got != {opset}:
        raise ExportError(f"asked for opset {opset}, but the exporter wrote {sorted(got)}; pick one of those")
    if not external_data:
        save_onnx(slim, path, False)


def _release_weights(program) -> None:
    """Drop the exported program's references to the module's weights.

    onnxscript's rewrite rules (module-level objects) keep the last graph they matched, and with
    it every initializer, i.e. the PyTorch weights: without this a released model stays in memory.
    """
    with contextlib.suppress(Exception):
        graph = program.model.graph
        for value in graph.initializers.values():
            value.const_value = None
        graph.initializers.clear()


def save_onnx(model, path: Path, external_data: bool) -> None:
    """Save a ModelProto; with external data the weights go to `<name>.data` beside it."""
    import onnx

    data = path.with_suffix(".onnx.data")
    data.unlink(missing_ok=True)
    if external_data:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def data_files(path: Path) -> list[DataFile]:
    """The external-data file `save_onnx` wrote beside the graph `path`, with its sha256 (none: [])."""
    data = path.with_suffix(".onnx.data")
    return [DataFile(data.name, sha256_file(data))] if data.is_file() else []


def check_graph(path: Path) -> None:
    """onnx.checker (full) + strict shape inference + no random operators, or ExportError."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(path), str(path) + ".inferred", check_type=True, strict_mode=True)
    except Exception as e:
        raise ExportError(f"{path.name} fails onnx.checker: {str(e).strip().splitlines()[0][:300]}") from e
    finally:
        Path(str(path) + ".inferred").unlink(missing_ok=True)
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    if ops & RANDOM_OPS:
        raise ExportError(f"{path.name} contains random operators {sorted(ops & RANDOM_OPS)}; noise must be an input")


def _graphs_note(opts: ExportOptions) -> dict:
    note = {"role_graphs": f"<role>.onnx, {opts.precision}", "io": opts.io if opts.precision == "fp16" else "fp32",
            "external_data": "forced" if opts.external_data else "over 2 GiB" if opts.external_data is None else "no"}
    if opts.precision != "fp32":
        note["fp32_graphs"] = "not kept: exported, checked against PyTorch, converted, then removed"
    return note


def _file_bytes(f: Path) -> int:
    data = f.with_suffix(".onnx.data")
    return f.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _versions() -> dict[str, str]:
    import onnx

    versions = {"bigmodel": bigmodel.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def _import(name: str, purpose: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise missing_package(name, "cpu", purpose) from e


_REGISTRIES: dict = {}


@contextlib.contextmanager
def _cached_torchlib_registry():
    """Build torch.onnx's operator registry once per process (about 1 s per export otherwise).

    torch.onnx builds it afresh on every call and only adds to it when given a custom translation
    table, which we never pass. Private API: when it moves, exports just take the extra second.
    """
    try:
        from torch.onnx._internal.exporter import _registration

        cls = _registration.ONNXRegistry
        original = cls.__dict__["from_torchlib"]
    except (ImportError, AttributeError, KeyError):
        yield
        return

    def from_torchlib(klass, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = original.__func__(klass, *args, **kwargs)
        return _REGISTRIES[key]

    cls.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        cls.from_torchlib = original


@contextlib.contextmanager
def _quiet(buffer: io.StringIO):
    """Keep torch.onnx's prints, warnings and log lines off the user's screen (library code never prints)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
