"""Role graphs to ONNX and the bundle around them.

Each role of a trained model becomes one ONNX graph with a dynamic batch axis, cleaned by
onnxslim, checked by onnx.checker (full check, strict shape inference), free of random
operators, and compared with PyTorch in onnxruntime before the bundle is renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import bigmodel
from bigmodel.data import load_data
from bigmodel.errors import ExportError, InputError, missing_package
from bigmodel.fileio import make_public_dir, sha256_file
from bigmodel.manifest import BATCH, MANIFEST_NAME, Manifest, RoleSpec, TensorSpec
from bigmodel.models.probes import role_probes
from bigmodel.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint

MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes natively
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                        "Bernoulli", "Dropout", "Multinomial"})
EXTERNAL_DATA_BYTES = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph
FP32_ATOL = 1e-5
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportOptions:
    """What `bigmodel export` was asked; see its --help for each field."""

    out: Path | None = None
    opset: int = MIN_OPSET
    precision: str = "fp32"
    io: str = "fp32"  # fp16 bundles: dtype of graph inputs/outputs
    int8_mode: str = "static"  # static (calibrated on validation images) | dynamic
    calibration: int = 256
    max_batch: int = 1024
    opt_batch: int = 64
    engine: bool = False
    triton: Path | None = None
    force: bool = False
    external_data: bool | None = None  # None: only when the weights pass 2 GiB
    probes: int = 64  # inputs per probe set in the built-in fp32 check


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
    quality: dict[str, dict[str, float]] = field(default_factory=dict)  # fp16/int8 vs fp32, per role


def validate_options(opts: ExportOptions) -> None:
    """Refuse bad option values before any work starts."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opts.opset <= newest:
        raise InputError(f"--opset must be between {MIN_OPSET} and {newest} (what the installed torch exporter and "
                         f"onnx {onnx.__version__} write); got {opts.opset}")
    if opts.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}; got {opts.precision!r}")
    if opts.max_batch < 1 or opts.opt_batch < 1:
        raise InputError(f"--max-batch and --opt-batch must be >= 1; got {opts.max_batch} and {opts.opt_batch}")
    if opts.opt_batch > opts.max_batch:
        raise InputError(f"--opt-batch must be <= --max-batch; got {opts.opt_batch} > {opts.max_batch}")


def export_bundle(run_dir: str | Path, opts: ExportOptions | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportResult:
    """Export every role of the run's checkpoint into a bundle folder (default RUN_DIR/bundle).

    >>> result = export_bundle("runs/vae")
    >>> result.bundle, [r.max_abs_err for r in result.roles]
    """
    opts = opts or ExportOptions()
    validate_options(opts)
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    out = Path(opts.out) if opts.out else ckpt_path.parent / "bundle"
    if out.exists() and not opts.force:
        what = "a bundle" if (out / MANIFEST_NAME).exists() else "files"
        raise InputError(f"{out} already holds {what}; pass --force to replace it, or --out to write elsewhere")
    state = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(state)
    say = progress or (lambda _msg: None)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        val = load_data(model.data.source, seed=model.data.seed, val_fraction=model.data.val_fraction).val
        roles, reports = {}, []
        for role in model.roles:
            t_role = time.perf_counter()
            roles[role], errors = export_role(model, role, tmp, opts, val)
            size = _file_bytes(tmp / roles[role].file)
            reports.append(RoleReport(role, roles[role].file, size, time.perf_counter() - t_role, errors))
            say(f"{role}: {roles[role].file} ({size / 1e6:.2f} MB), max |onnx - torch| {max(errors.values()):.2e}")
        manifest = Manifest(
            family=model.family, arch=model.arch, data=model.data, latent=model.latent_spec(), roles=roles,
            precision="fp32", opset=opts.opset, versions=_versions(), checkpoint_sha256=sha256_file(ckpt_path),
        )
        quality: dict[str, dict[str, float]] = {}
        if opts.precision != "fp32":
            from bigmodel.export.precision import convert_bundle

            quality = convert_bundle(tmp, manifest, opts, val, say)
        manifest.save(tmp)
        if opts.engine:
            from bigmodel.export.tensorrt import build_engines

            build_engines(tmp, manifest, opts, say)
            manifest.save(tmp)
        if opts.triton:
            from bigmodel.export.triton import write_repository

            write_repository(tmp, manifest, Path(opts.triton), opts, force=opts.force)
        make_public_dir(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, manifest, reports, time.perf_counter() - t0, quality)


def export_role(model, role: str, folder: Path, opts: ExportOptions, val: np.ndarray) -> tuple[RoleSpec, dict]:
    """Export, clean, check and verify one role; returns its manifest entry and fp32 errors per probe set."""
    module = model.role_module(role).eval()
    io_spec = model.roles[role]
    probes = role_probes(io_spec.inputs[0][1], model.config.latent_dim, val, opts.probes, seed=0)
    example = torch.from_numpy(next(iter(probes.values()))[:2])
    path = folder / f"{role}.onnx"
    big = opts.external_data
    if big is None:
        big = sum(p.numel() * p.element_size() for p in module.parameters()) >= EXTERNAL_DATA_BYTES
    write_onnx(module, example, [n for n, _ in io_spec.inputs], [n for n, _ in io_spec.outputs], path, opts.opset, big)
    check_graph(path)
    errors = verify_against_torch(path, module, probes)
    worst = max(errors, key=errors.get)
    if errors[worst] > FP32_ATOL:
        raise ExportError(f"{role}: exported graph differs from PyTorch by {errors[worst]:.3g} on {worst} inputs "
                          f"(allowed {FP32_ATOL}); the bundle was not written")
    with torch.no_grad():
        outs = module(example)
    outs = outs if isinstance(outs, tuple) else (outs,)
    spec = RoleSpec(
        file=path.name,
        sha256=sha256_file(path),
        inputs=[TensorSpec(n, "float32", [BATCH, *example.shape[1:]], k) for n, k in io_spec.inputs],
        outputs=[TensorSpec(n, "float32", [BATCH, *o.shape[1:]], k) for (n, k), o in zip(io_spec.outputs, outs,
                                                                                        strict=True)],
    )
    return spec, errors


def write_onnx(module: torch.nn.Module, example: torch.Tensor, inputs: list[str], outputs: list[str], path: Path,
               opset: int, external_data: bool) -> None:
    """torch.onnx (dynamo) with a dynamic batch axis, then onnxslim; exporter chatter is captured."""
    onnx = _import("onnx", "ONNX export")
    onnxslim = _import("onnxslim", "ONNX graph cleanup")
    log = io.StringIO()
    try:
        with _quiet(log):
            torch.onnx.export(module, (example,), str(path), input_names=inputs, output_names=outputs,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True,
                              opset_version=opset, external_data=external_data, verbose=False)
            slim = onnxslim.slim(onnx.load(str(path)))
    except Exception as e:
        raise ExportError(f"torch.onnx could not export {path.stem}: {type(e).__name__}: {str(e)[:300]}") from e
    got = {o.version for o in slim.opset_import if o.domain in ("", "ai.onnx")}
    if got != {opset}:
        raise ExportError(f"asked for opset {opset}, but the exporter wrote {sorted(got)}; pick one of those")
    save_onnx(slim, path, external_data)


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


def verify_against_torch(path: Path, module: torch.nn.Module, probes: dict[str, np.ndarray]) -> dict[str, float]:
    """Max |onnxruntime - torch| over all outputs, per probe set, at batch 1 and the full (odd-sized) set."""
    ort = _import("onnxruntime", "checking the exported graph")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    errors = {}
    for probe, x in probes.items():
        worst = 0.0
        for batch in (x[:1], x[: len(x) - 1 or 1]):  # batch 1 and an odd batch
            got = session.run(None, {name: batch})
            with torch.no_grad():
                want = module(torch.from_numpy(batch))
            want = want if isinstance(want, tuple) else (want,)
            worst = max([worst] + [float(np.max(np.abs(g - w.numpy()))) for g, w in zip(got, want, strict=True)])
        errors[probe] = worst
    return errors


def _replace_dir(tmp: Path, out: Path) -> None:
    """Put the finished bundle in place; an older one (only with --force) goes only after the new is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


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
