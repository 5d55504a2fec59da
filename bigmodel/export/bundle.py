"""`export_bundle`: the export stages in order, in a temporary folder renamed into place at the end.

1. read the checkpoint (memory-mapped, `models.checkpoint.load_model`) -- or take the user's modules
   (`export.modules.export_modules`): either way a `Source` of declared, resolved roles;
2. each role -> torch.export program -> ONNX, cleaned and checked (`torch_onnx.export_role`, `graph.check_graph`);
   for user modules the program is kept as the bundle's PyTorch reference (`reference/ROLE.pt2`);
3. each graph against PyTorch in onnxruntime with parity's fp32 rules (`verify.check_against_reference`);
4. fp16/int8 conversion, verified against the fp32 graphs (`precision.convert_bundle`);
5. the manifest; TensorRT engines (`tensorrt.py`); a Triton repository (`triton.py`); the rename.
A failing stage raises, and nothing is renamed into place.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import bigmodel
from bigmodel.data import data_record, find_run_data
from bigmodel.errors import CheckFailed, ExportError
from bigmodel.export.declare import IO, Resolved, Role, resolve_roles
from bigmodel.export.graph import file_bytes
from bigmodel.export.options import ABS_CHECKED, FP32_DIR, ExportOptions, ExportResult, RoleReport, validate_options
from bigmodel.export.program import PROGRAM_DIR
from bigmodel.export.torch_onnx import export_role
from bigmodel.export.verify import check_against_reference
from bigmodel.fileio import (
    check_output_folders,
    make_public_dir,
    make_temp_dir,
    mark_triton_repository,
    remove_stale_temps,
    replace_dir,
    sha256_file,
)
from bigmodel.manifest import DataFile, DataSpec, LatentSpec, Manifest, ReferenceSpec
from bigmodel.models.base import GenerativeModel
from bigmodel.models.checkpoint import CHECKPOINT_NAME
from bigmodel.models.checkpoint import load_model as load_checkpoint_model
from bigmodel.models.probes import input_probes
from bigmodel.progress import ProgressFn, reporter


@dataclass
class Source:
    """What a bundle is made from: resolved roles, the data spec and probe images, the latent prior.

    checkpoint_sha256 ties a bigmodel run's bundle to its checkpoint (its reference); otherwise each
    role's torch.export program travels in the bundle, and `examples` (probe images) too when the
    data has no source a later process can read again.
    """

    family: str
    arch: str
    data: DataSpec
    roles: dict[str, Resolved]
    latent: LatentSpec
    val: np.ndarray  # (N, C, H, W) float32 in the data range: probes, calibration
    checkpoint_sha256: str = ""
    examples: np.ndarray | None = None
    dataset: dict | None = None  # data.data_record of a path dataset: manifest.extra["dataset"]


def export_bundle(run_dir: str | Path, opts: ExportOptions | None = None,
                  progress: ProgressFn | None = None, dataset: str | None = None) -> ExportResult:
    """Export every role of the run's checkpoint into a bundle folder (default RUN_DIR/bundle).

    Everything is written into a temporary folder beside the bundle and renamed at the end:
    a failure never leaves a half-written bundle (or Triton repository).

    The run's images are found where they were, beside the run as they were, or at `dataset` (checked
    against the sha256 recorded at training): see `data.find_run_data`.

    >>> result = export_bundle("runs/vae")
    >>> result.bundle, [r.max_abs_err for r in result.roles]
    """
    opts = opts or ExportOptions()
    run_dir = Path(run_dir)
    ckpt_path = run_dir / CHECKPOINT_NAME if run_dir.is_dir() else run_dir
    out = Path(opts.out) if opts.out else ckpt_path.parent / "bundle"
    check_destinations(out, opts)
    model, ckpt_sha = load_model(ckpt_path)
    data = find_run_data(model.data, model.data_record, ckpt_path.parent, dataset, _needs(model, opts))
    latent = model.export_latent_spec(data.train)  # a plain AE fits its prior here
    declared = {role: Role(model.role_module(role), [IO(n, k) for n, k in io.inputs],
                           [IO(n, k) for n, k in io.outputs]) for role, io in model.roles.items()}
    roles, _ = resolve_roles(declared, model.data.shape, model.data.value_range, data.val, (model.config.latent_dim,))
    source = Source(model.family, model.arch, data.spec, roles, latent, data.val, ckpt_sha,
                    dataset=data_record(data, out))
    del data, model
    return write_bundle(source, out, opts, progress)


def _needs(model, opts: ExportOptions) -> str:
    """What export reads the run's images for (the one-line refusal when they are gone says it)."""
    uses = ["its validation images to check each graph against PyTorch"]
    if opts.precision == "int8" and opts.int8_mode == "static":
        uses.append("to calibrate int8")
    if type(model).export_latent_spec is not GenerativeModel.export_latent_spec:
        uses.append("its training images to fit the prior")
    return "export needs " + ", ".join(uses)


def check_destinations(out: Path, opts: ExportOptions) -> None:
    """Every option and output folder checked before any work (nothing is written on a refusal)."""
    validate_options(opts)
    check_output_folders(opts.force, (out, "bundle", "--out"), (opts.triton, "Triton model repository", "--triton"))
    if opts.engine:
        from bigmodel.export.tensorrt import require_tensorrt

        require_tensorrt()  # before any work: no GPU or no TensorRT is a one-line exit 2, and nothing written


def write_bundle(source: Source, out: Path, opts: ExportOptions, progress: ProgressFn | None = None) -> ExportResult:
    """The export stages on a resolved `Source`, in a temporary folder renamed to `out` at the end."""
    t0 = time.perf_counter()
    say = reporter(progress, "export")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out.parent)
    tmp = make_temp_dir(out)
    triton_tmp: Path | None = None
    travels = not source.checkpoint_sha256  # no checkpoint: the torch.export programs are the reference
    try:
        val, latent = source.val, source.latent
        roles, refs, seconds, programs = {}, {}, {}, {}
        for role, resolved in source.roles.items():
            t_role = time.perf_counter()
            probes = input_probes(resolved.inputs, latent, source.data.value_range, val, opts.probes, seed=0)
            roles[role], refs[role], program = export_role(role, resolved, tmp, opts, probes, keep_program=travels)
            if program is not None:
                programs[role] = program
            seconds[role] = time.perf_counter() - t_role
            size = file_bytes(tmp / roles[role].file)
            say(f"{role}: wrote {roles[role].file} ({size / 1e6:.2f} MB) in {seconds[role]:.1f}s")
        reference = ReferenceSpec("checkpoint")
        if travels:
            examples = None
            if source.examples is not None:
                examples = save_examples(tmp, source.examples)
            reference = ReferenceSpec("torch.export", programs, examples)
        manifest = Manifest(
            family=source.family, arch=source.arch, data=source.data, latent=latent, roles=roles,
            precision="fp32", opset=opts.opset, versions=_versions(), checkpoint_sha256=source.checkpoint_sha256,
            reference=reference,
        )
        weights = sum(p.numel() * p.element_size() for r in source.roles.values() for p in r.module.parameters())
        source.roles = {}  # onnxruntime loads the graphs next: never hold a big model twice
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
            reports.append(RoleReport(role, spec.file, file_bytes(tmp / spec.file), seconds[role], errors))
            say(f"{role}: fp32 check max |onnx - torch| {errors[worst]:.2e} "
                f"({', '.join(refs[role].inputs)} inputs, batch 1 and {opts.probes - 1})")
        quality: dict[str, dict] = {}
        failures: list[str] = []
        if opts.precision != "fp32":
            from bigmodel.export.precision import convert_bundle, verify_bf16

            convert = verify_bf16 if opts.precision == "bf16" else convert_bundle
            quality, failures = convert(tmp, manifest, opts, val, say)
            if failures and not opts.allow_failing:
                hint = ("; --int8-mode dynamic or weights may pass" if opts.precision == "int8"
                        and opts.int8_mode == "static" else "")
                raise CheckFailed(
                    f"{opts.precision} graphs fail {len(failures)} check(s) against the fp32 graphs, so no bundle "
                    f"was written (--allow-failing writes it with the failures in its manifest{hint}); "
                    f"first: {failures[0]}")
            for report in reports:
                report.bytes = file_bytes(tmp / manifest.roles[report.role].file)
        if opts.forms:
            from bigmodel.export.precision import export_forms

            form_failures = export_forms(tmp, manifest, opts, val, say)
            if form_failures and not opts.allow_failing:
                raise CheckFailed(
                    f"{len(form_failures)} check(s) of the {', '.join(opts.forms)} forms fail against the fp32 graphs, "
                    f"so no bundle was written (--allow-failing writes it with the failures in its manifest); "
                    f"first: {form_failures[0]}")
            failures += form_failures
        manifest.extra["graphs"] = _graphs_note(opts)
        if source.dataset:
            manifest.extra["dataset"] = source.dataset
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
            mark_triton_repository(triton_tmp)
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


EXAMPLES_FILE = f"{PROGRAM_DIR}/examples.npy"  # probe images, for bundles whose data has no source to read again
EXAMPLES_MAX = 512


def save_examples(folder: Path, images: np.ndarray) -> DataFile:
    """Up to EXAMPLES_MAX probe images (float32) inside the bundle, so parity needs no data of its own."""
    from bigmodel.fileio import atomic_write

    path = folder / EXAMPLES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = np.ascontiguousarray(images[:EXAMPLES_MAX], dtype=np.float32)
    atomic_write(path, lambda tmp: _save_npy(tmp, keep))
    return DataFile(EXAMPLES_FILE, sha256_file(path))


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a bare temporary name
        np.save(f, array, allow_pickle=False)


def load_model(ckpt_path: Path):
    """The checkpoint's model in eval mode on CPU (memory-mapped weights, held once), and its sha256."""
    model = load_checkpoint_model(ckpt_path, mapped=True)  # raises the checkpoint module's "not found" first
    return model, sha256_file(ckpt_path)


def _graphs_note(opts: ExportOptions) -> dict:
    note = {"role_graphs": f"<role>.onnx, {opts.precision}", "io": opts.io if opts.precision == "fp16" else "fp32",
            "external_data": "forced" if opts.external_data else "over 2 GiB" if opts.external_data is None else "no"}
    if opts.precision != "fp32":
        note["fp32_graphs"] = "not kept: exported, checked against PyTorch, converted, then removed"
    return note


def _versions() -> dict[str, str]:
    import onnx

    versions = {"bigmodel": bigmodel.__version__, "torch": torch.__version__, "onnx": onnx.__version__}
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions
