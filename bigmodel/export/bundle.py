"""`export_bundle`: the export stages in order, in a temporary folder renamed into place at the end.

1. read the checkpoint (memory-mapped, `models.checkpoint.load_model`);
2. each role -> ONNX, cleaned and checked (`torch_onnx.export_role`, `graph.check_graph`);
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
from pathlib import Path

import torch

import bigmodel
from bigmodel.data import load_data
from bigmodel.errors import CheckFailed, ExportError
from bigmodel.export.graph import file_bytes
from bigmodel.export.options import ABS_CHECKED, FP32_DIR, ExportOptions, ExportResult, RoleReport, validate_options
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
from bigmodel.manifest import Manifest
from bigmodel.models.checkpoint import CHECKPOINT_NAME
from bigmodel.models.checkpoint import load_model as load_checkpoint_model
from bigmodel.progress import ProgressFn, reporter


def export_bundle(run_dir: str | Path, opts: ExportOptions | None = None,
                  progress: ProgressFn | None = None) -> ExportResult:
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
    check_output_folders(opts.force, (out, "bundle", "--out"), (opts.triton, "Triton model repository", "--triton"))
    if opts.engine:
        from bigmodel.export.tensorrt import require_tensorrt

        require_tensorrt()  # before any work: no GPU or no TensorRT is a one-line exit 2, and nothing written
    say = reporter(progress, "export")
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
            size = file_bytes(tmp / roles[role].file)
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
            reports.append(RoleReport(role, spec.file, file_bytes(tmp / spec.file), seconds[role], errors))
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
                report.bytes = file_bytes(tmp / manifest.roles[report.role].file)
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
