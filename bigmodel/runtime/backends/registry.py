"""The backend registry: one entry per runtime backend, read by load(), doctor, bench and parity.

An entry names the backend, the device it runs on, the pip extra that installs it and the module
that implements it. That module provides two functions (imported only when the backend is asked
about, so a missing optional package costs nothing until then):

    probe_backend(name, device_id) -> None | str    None when it really ran here (a tiny session), else why not
    create(name, bundle, manifest, options)  -> a backend object with run(role, feeds) and close()

Adding a backend = one module with those two functions + one line in `REGISTRY`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel.errors import InputError


@dataclass(frozen=True)
class BackendEntry:
    """One runtime backend. `auto_rank`: its place in `auto`'s choice for its device (None: never auto)."""

    name: str
    device: str  # "cpu" or "cuda"
    extra: str  # pip install 'bigmodel[<extra>]'
    module: str  # implements probe_backend(name, device_id) and create(name, bundle, manifest, options)
    what: str  # one phrase for doctor: what it is
    install: str  # what installs it, for doctor and error messages
    auto_rank: int | None = None
    needs_engines: bool = False  # serialized TensorRT engines in the bundle

    def implementation(self):
        return importlib.import_module(self.module)

    def probe(self, device_id: int = 0) -> str | None:
        """None when this backend can run here (GPU ones: on GPU `device_id`), else the reason it cannot."""
        return self.implementation().probe_backend(self.name, device_id)

    def create(self, bundle: Path, manifest, options: LoadOptions):
        return self.implementation().create(self.name, bundle, manifest, options)


@dataclass(frozen=True)
class LoadOptions:
    """What load() passes every backend's factory; each uses the fields that apply to it."""

    threads: int | None = None  # CPU intra-op threads (default: the physical cores)
    precision: str | None = None  # tensorrt: which engine precision
    device_id: int = 0
    tf32: bool = False
    strict: bool = False


_ORT = "bigmodel.runtime.backends.ort"
REGISTRY: tuple[BackendEntry, ...] = (
    BackendEntry("ort-cpu", "cpu", "runtime", _ORT, "onnxruntime, CPUExecutionProvider",
                 "pip install 'bigmodel[runtime]' (onnxruntime)", auto_rank=0),
    BackendEntry("ort-cuda", "cuda", "gpu", _ORT, "onnxruntime, CUDAExecutionProvider",
                 "pip install 'bigmodel[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU", auto_rank=2),
    BackendEntry("ort-trt", "cuda", "gpu", _ORT, "onnxruntime, TensorrtExecutionProvider",
                 "pip install 'bigmodel[gpu]' plus TensorRT's libraries (libnvinfer) on the library path",
                 auto_rank=1),
    BackendEntry("tensorrt", "cuda", "tensorrt", "bigmodel.runtime.backends.tensorrt",
                 "TensorRT engines through the TensorRT Python API",
                 "pip install 'bigmodel[tensorrt]' (TensorRT + cuda-python for CUDA 13, driver >= 580) or "
                 "'bigmodel[tensorrt-cu12]' (CUDA 12) on a machine with an NVIDIA GPU", auto_rank=0,
                 needs_engines=True),
    BackendEntry("ov-cpu", "cpu", "openvino", "bigmodel.runtime.backends.openvino", "OpenVINO, CPU plugin",
                 "pip install 'bigmodel[openvino]' (openvino)"),
)
BY_NAME = {e.name: e for e in REGISTRY}
NAMES = tuple(BY_NAME)


def entry(name: str) -> BackendEntry:
    """The registry entry of `name`, or InputError listing the known backends."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; known: {', '.join(NAMES)}") from None


def names_for(device: str) -> tuple[str, ...]:
    """Backends that run on `device` ('cpu' or 'cuda'), in registry order."""
    return tuple(e.name for e in REGISTRY if e.device == device)


def auto_order(device: str, has_engines: bool) -> tuple[str, ...]:
    """The backends `auto` tries on `device`, most preferred first (engine backends only with engines)."""
    ranked = [e for e in REGISTRY if e.device == device and e.auto_rank is not None
              and (has_engines or not e.needs_engines)]
    return tuple(e.name for e in sorted(ranked, key=lambda e: e.auto_rank))


def status(names: tuple[str, ...] | None = None, device_id: int = 0) -> dict[str, str | None]:
    """Each backend name -> None if its probe ran here, else the reason (never raises for a broken install)."""
    out: dict[str, str | None] = {}
    for name in names or NAMES:
        try:
            out[name] = entry(name).probe(device_id)
        except InputError:
            raise
        except Exception as e:  # a broken optional package: report it, never crash the caller
            out[name] = f"probing {name} failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


def describe() -> list[dict[str, Any]]:
    """The registry as plain data (for doctor --json and docs)."""
    return [{"name": e.name, "device": e.device, "extra": e.extra, "what": e.what, "install": e.install}
            for e in REGISTRY]
