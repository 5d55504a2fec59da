"""The embeddable runtime: load a bundle and run it with numpy + onnxruntime (or TensorRT). No torch.

>>> from bigmodel.runtime import load
>>> model = load("runs/vae/bundle")
>>> images = model.sample(16, seed=0)      # (16, 1, 28, 28) float32 in [0, 1]
"""

from __future__ import annotations

import os
from pathlib import Path

from bigmodel.errors import BundleError, InputError
from bigmodel.fileio import sha256_file
from bigmodel.manifest import Manifest, read_manifest
from bigmodel.runtime.model import Model

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")

__all__ = ["BACKENDS", "Model", "load", "backend_status", "verify_files"]


def verify_files(path: Path, manifest: Manifest) -> None:
    """Every role file exists and matches its manifest sha256, or BundleError."""
    for role, spec in manifest.roles.items():
        f = path / spec.file
        if not f.is_file():
            raise BundleError(f"bundle {path} is incomplete: role {role} expects {spec.file}, which is missing")
        got = sha256_file(f)
        if got != spec.sha256:
            raise BundleError(f"{f} does not match the manifest: expected sha256 {spec.sha256[:16]}..., "
                              f"got {got[:16]}... (file changed after export; re-export the bundle)")


def backend_status() -> dict[str, str | None]:
    """Each backend name -> None if it can run here, else the reason it cannot."""
    from bigmodel.runtime.backends import ort

    status: dict[str, str | None] = {name: ort.unavailable_reason(name) for name in ("ort-cpu", "ort-cuda", "ort-trt")}
    from bigmodel.runtime.backends import tensorrt

    status["tensorrt"] = tensorrt.unavailable_reason()
    return status


def resolve_backend(backend: str, device: str, manifest: Manifest) -> str:
    """A concrete backend name from (backend, device): 'auto' picks the fastest available for the device."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if backend in BACKENDS:
        return backend
    if backend == "ort":
        return {"cpu": "ort-cpu", "cuda": "ort-cuda"}.get(device, _auto_ort())
    if backend != "auto":
        raise InputError(f"backend must be auto, ort, {', '.join(BACKENDS)}; got {backend!r}")
    if device == "cpu":
        return "ort-cpu"
    status = backend_status()
    order = ("tensorrt", "ort-trt", "ort-cuda") if manifest.engines else ("ort-trt", "ort-cuda")
    for name in order:
        if status[name] is None:
            return name
    if device == "cuda":
        from bigmodel.errors import BackendUnavailable

        reasons = "; ".join(f"{n}: {status[n]}" for n in order)
        raise BackendUnavailable(f"device cuda asked for, but no GPU backend can run here ({reasons})")
    return "ort-cpu"


def _auto_ort() -> str:
    from bigmodel.runtime.backends import ort

    return "ort-cuda" if ort.unavailable_reason("ort-cuda") is None else "ort-cpu"


def load(path: str | os.PathLike, backend: str = "auto", device: str = "auto", threads: int | None = None,
         fallback: bool = False, verify: bool = True) -> Model:
    """Load a bundle folder (manifest.json + role graphs) for inference.

    backend: auto | ort | ort-cpu | ort-cuda | ort-trt | tensorrt; device: auto | cpu | cuda.
    A GPU request that would run on the CPU raises, or with `fallback=True` warns once.
    `verify` checks every file's sha256 against the manifest before anything runs.

    >>> model = load("runs/vae/bundle", device="cpu", threads=2)
    """
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InputError(f"threads must be a positive integer or None; got {threads!r}")
    name = resolve_backend(backend, device, manifest)
    if name == "tensorrt":
        from bigmodel.runtime.backends.tensorrt import TensorRTBackend

        return Model(path, manifest, TensorRTBackend(path, manifest))
    from bigmodel.runtime.backends.ort import OrtBackend

    return Model(path, manifest, OrtBackend(path, manifest, name, threads=threads, fallback=fallback))
