"""`run_parity`: the PyTorch reference from the checkpoint against each backend through the runtime."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

from bigmodel.errors import BackendUnavailable, InputError
from bigmodel.limits import COPIES_HELD, check_items, check_seed, check_threads, sample_bytes
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.parity.check import check_targets
from bigmodel.parity.inputs import DEFAULT_SAMPLES, probe_inputs, targets_of, validation_images
from bigmodel.parity.reference import TorchReference, reference_modules
from bigmodel.parity.report import BackendRun, ParityReport
from bigmodel.parity.tolerances import tolerances_for
from bigmodel.progress import Progress, ProgressFn


def run_parity(bundle: str | Path, checkpoint: str | Path | None = None,
               backends: str | Sequence[str] = "all", samples: int = DEFAULT_SAMPLES, seed: int = 0,
               data: str | Path | None = None, atol: float | None = None, rtol: float | None = None,
               tolerances: str | None = None, threads: int | None = None, device: str = "auto",
               tf32: bool = False, strict: bool = False, precision: str | None = None,
               progress: ProgressFn | None = None) -> ParityReport:
    """Compare each backend with the PyTorch reference, role by role and chain by chain.

    backends: "all" (each of `bigmodel.runtime.BACKENDS`; those unavailable here are reported as
    skipped), or names; a named backend that cannot run is `BackendUnavailable`. checkpoint: the
    run's checkpoint.pt (default: beside the bundle); its sha256 must match the manifest's.
    tolerances: which precision's row of `TOLERANCES` to apply (default: the bundle's precision;
    "tf32" for an fp32 bundle run with tf32=True). device: "cuda:N" picks the GPU of the GPU backends.
    strict: the onnxruntime GPU backends may not place any node on the CPU provider (CheckFailed).
    precision: which of the bundle's verified forms to check (`--precision fp32,int8,...` at export);
    default: its own precision.
    progress: Progress("parity", ...) before each check, and done == total as each backend ends.
    """
    from bigmodel.runtime import BACKENDS, backend_status, load, verify_files

    t0 = time.perf_counter()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if precision is not None:
        manifest = manifest.form(precision)  # InputError naming the precisions the bundle carries
    verify_files(bundle, manifest)
    names, explicit = _backend_names(backends, BACKENDS)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 3 or samples % 2 == 0:
        raise InputError(f"--samples must be an odd integer >= 3 (checks run at batch 1 and batch N); got {samples!r}")
    check_items(samples, "--samples", COPIES_HELD * sample_bytes(manifest), "probe samples", least=3)
    check_seed(seed)
    check_threads(threads)
    form = precision
    precision = tolerances or ("tf32" if tf32 and manifest.precision == "fp32" else manifest.precision)
    tol = tolerances_for(precision, atol, rtol)
    modules, ckpt_path, ckpt_sha = reference_modules(bundle, manifest, checkpoint)
    from bigmodel.runtime.backends import parse_device

    _, gpu = parse_device(device)
    status = backend_status(device_id=gpu)
    if not manifest.engines and status.get("tensorrt") is None:
        status["tensorrt"] = "the bundle has no TensorRT engines (export with --engine on a GPU machine)"
    for name in names if explicit else ():
        if status.get(name) is not None:  # asked for by name: an error before any work, never a skip
            raise BackendUnavailable(f"backend {name} cannot run here: {status[name]}")
    val, data_name = validation_images(manifest, data, bundle)
    reference = TorchReference(modules, manifest)
    targets = targets_of(manifest)
    inputs, feeds = probe_inputs(manifest, targets, val, data_name, samples, seed, reference.generate)

    runs = []
    for name in names:
        reason = status.get(name)
        if reason is None:
            try:
                model = load(bundle, backend=name, threads=threads, verify=False, device_id=gpu, tf32=tf32,
                             strict=strict, precision=form)
            except BackendUnavailable as e:
                if explicit:
                    raise
                reason = str(e)
        if reason is not None:
            runs.append(BackendRun(name, "skipped", reason))
            continue
        runs.append(_run_backend(name, model, manifest, reference, targets, feeds, tol, progress))
        runs[-1].settings = dict(getattr(model.backend, "settings", {}) or {})
    if not any(r.status == "ran" for r in runs):
        reasons = "; ".join(f"{r.backend}: {r.reason}" for r in runs)
        raise BackendUnavailable(f"no backend can run here, so nothing was checked ({reasons})")
    return ParityReport(
        bundle=str(bundle), checkpoint=str(ckpt_path), checkpoint_sha256=ckpt_sha, family=manifest.family,
        arch=manifest.arch, bundle_precision=manifest.precision, tolerance_precision=precision, tolerances=tol,
        samples=samples, seed=seed, data=data_name, inputs=inputs, backends=runs,
        versions=_versions(manifest), seconds=time.perf_counter() - t0)


def _backend_names(backends: str | Sequence[str], known: Sequence[str]) -> tuple[list[str], bool]:
    """(names, explicit): "all" is every known backend, not explicit; else the names given, in order."""
    asked = [backends] if isinstance(backends, str) else list(backends)
    asked = [n.strip() for a in asked for n in str(a).split(",") if n.strip()]
    if not asked:
        raise InputError(f"--backend: name at least one of {', '.join(known)}, or all")
    if "all" in asked:
        return list(known), False
    for n in asked:
        if n not in known:
            raise InputError(f"--backend must be one of {', '.join(known)} or all; got {n!r}")
    return list(dict.fromkeys(asked)), True


def _run_backend(name, model, manifest, reference, targets, feeds, tol, progress) -> BackendRun:
    t0 = time.perf_counter()
    run = BackendRun(name, "ran")
    run.cases = check_targets(model, reference, manifest, targets, feeds, tol, progress, label=name)
    if progress:
        progress(Progress("parity", f"{name} done", len(run.cases), len(run.cases)))
    run.seconds = time.perf_counter() - t0
    return run


def _versions(manifest: Manifest) -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("bigmodel", "numpy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    versions.update({f"exported_with.{k}": v for k, v in manifest.versions.items()})
    return versions
