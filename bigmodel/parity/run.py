"""`run_parity`: the PyTorch reference from the checkpoint against each backend through the runtime."""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, CheckpointError, InputError
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.parity.check import Progress, check_targets
from bigmodel.parity.inputs import DEFAULT_SAMPLES, probe_inputs, targets_of, validation_images
from bigmodel.parity.report import BackendRun, ParityReport
from bigmodel.parity.tolerances import tolerances_for


def run_parity(bundle: str | Path, checkpoint: str | Path | None = None,
               backends: str | Sequence[str] = "all", samples: int = DEFAULT_SAMPLES, seed: int = 0,
               data: str | Path | None = None, atol: float | None = None, rtol: float | None = None,
               tolerances: str | None = None, threads: int | None = None, device: str = "auto",
               tf32: bool = False, strict: bool = False,
               progress: Progress | None = None) -> ParityReport:
    """Compare each backend with the PyTorch reference, role by role and chain by chain.

    backends: "all" (each of `bigmodel.runtime.BACKENDS`; those unavailable here are reported as
    skipped), or names; a named backend that cannot run is `BackendUnavailable`. checkpoint: the
    run's checkpoint.pt (default: beside the bundle); its sha256 must match the manifest's.
    tolerances: which precision's row of `TOLERANCES` to apply (default: the bundle's precision;
    "tf32" for an fp32 bundle run with tf32=True). device: "cuda:N" picks the GPU of the GPU backends.
    strict: the onnxruntime GPU backends may not place any node on the CPU provider (CheckFailed).
    """
    from bigmodel.runtime import BACKENDS, backend_status, load, verify_files

    t0 = time.perf_counter()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    names, explicit = _backend_names(backends, BACKENDS)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 3 or samples % 2 == 0:
        raise InputError(f"--samples must be an odd integer >= 3 (checks run at batch 1 and batch N); got {samples!r}")
    precision = tolerances or ("tf32" if tf32 and manifest.precision == "fp32" else manifest.precision)
    tol = tolerances_for(precision, atol, rtol)
    ckpt_path, ckpt_sha = _checkpoint(bundle, manifest, checkpoint)
    from bigmodel.runtime.backends import parse_device

    _, gpu = parse_device(device)
    status = backend_status(device_id=gpu)
    if not manifest.engines and status.get("tensorrt") is None:
        status["tensorrt"] = "the bundle has no TensorRT engines (export with --engine on a GPU machine)"
    for name in names if explicit else ():
        if status.get(name) is not None:  # asked for by name: an error before any work, never a skip
            raise BackendUnavailable(f"backend {name} cannot run here: {status[name]}")
    val, data_name = validation_images(manifest, data)
    reference = _Reference(ckpt_path)
    targets = targets_of(manifest)
    inputs, feeds = probe_inputs(manifest, targets, val, data_name, samples, seed, reference.generate)

    runs = []
    for name in names:
        reason = status.get(name)
        if reason is None:
            try:
                model = load(bundle, backend=name, threads=threads, verify=False, device_id=gpu, tf32=tf32,
                             strict=strict)
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


def _checkpoint(bundle: Path, manifest: Manifest, checkpoint) -> tuple[Path, str]:
    from bigmodel.fileio import sha256_file

    if checkpoint is None:
        path = bundle.resolve().parent / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"no checkpoint beside the bundle: expected {path}; pass --checkpoint PATH "
                                  "(the checkpoint.pt the bundle was exported from)")
    else:
        path = Path(checkpoint)
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: expected a file at {path}")
    got = sha256_file(path)
    if not manifest.checkpoint_sha256:
        raise CheckpointError(f"{bundle}/manifest.json records no checkpoint_sha256, so no checkpoint can be "
                              "matched to it; re-export the bundle")
    if got != manifest.checkpoint_sha256:
        raise CheckpointError(f"{path} is not the checkpoint this bundle was exported from: its sha256 is "
                              f"{got[:16]}..., the manifest expects {manifest.checkpoint_sha256[:16]}... "
                              "(pass --checkpoint with the right file, or re-export)")
    return path, got


class _Reference:
    """The PyTorch model from the checkpoint: eval mode, CPU, float32; outputs cached per input."""

    def __init__(self, path: Path):
        from bigmodel.training.checkpoint import load_checkpoint, model_from_checkpoint

        self.model = model_from_checkpoint(load_checkpoint(path)).float().cpu().eval()
        self.cache: dict[tuple, list[np.ndarray]] = {}

    def __call__(self, target: tuple[str, ...], key: tuple, x: np.ndarray) -> list[np.ndarray]:
        if (target, key) not in self.cache:
            import torch

            with torch.inference_mode():
                out = torch.from_numpy(x)
                for role in target:
                    if isinstance(out, tuple):
                        out = out[0]  # a chain feeds the first output on (a VAE's mu), as Model.reconstruct
                    out = self.model.role_module(role).eval()(out)
            outs = out if isinstance(out, tuple) else (out,)
            self.cache[target, key] = [o.detach().cpu().numpy() for o in outs]
        return self.cache[target, key]

    def generate(self, role: str, z: np.ndarray) -> np.ndarray:
        """The role's first output on latents `z`: the reference's generated images."""
        return self((role,), ("_generated", len(z)), z)[0]


def _run_backend(name, model, manifest, reference, targets, feeds, tol, progress) -> BackendRun:
    t0 = time.perf_counter()
    run = BackendRun(name, "ran")
    run.cases = check_targets(model, reference, manifest, targets, feeds, tol, progress, label=name)
    if progress:
        progress(f"{name} done", len(run.cases), len(run.cases))
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
