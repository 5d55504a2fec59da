"""What this machine has for bigmodel: Python, torch/CUDA, onnx, onnxruntime providers, TensorRT, backends.

`gather()` never raises for a missing or broken package: each item says what was found, or why not.

>>> report = gather()
>>> [b["name"] for b in report["backends"] if b["ok"]]
['torch', 'ort-cpu']
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib
import importlib.metadata
import platform
import sys
from typing import Any

# the bench's torch baselines -> what installs them (the runtime's backends say it in their registry entries)
TORCH_EXTRAS = {
    "torch": "torch (install the build for your platform first, see README), then pip install 'bigmodel[cpu]'",
    "torch-cudagraph": "a CUDA build of torch and an NVIDIA GPU, then pip install 'bigmodel[gpu]'",
    **{name: "a C++ compiler and Python's headers (e.g. apt-get install g++ python3-dev); on a GPU, triton"
       for name in ("torch-compile", "torch-compile-max", "aoti")},
}


def install_hint(name: str) -> str | None:
    """What installs backend `name`: the torch baselines here, runtime backends from the registry."""
    if name in TORCH_EXTRAS:
        return TORCH_EXTRAS[name]
    from bigmodel.runtime.backends.registry import BY_NAME

    e = BY_NAME.get(name)
    return e.install if e else None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import(name: str):
    """(module, None) or (None, one-line reason); catches everything a broken install throws."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # ImportError, OSError from missing shared libraries, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"import {name} failed: {first[:200]}"


def _item(name: str, version: str | None, detail: str, ok: bool | None = None) -> dict[str, Any]:
    return {"name": name, "version": version, "found": version is not None if ok is None else ok, "detail": detail}


def _torch_item(torch, why: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    gpu: dict[str, Any] = {"cuda_available": False}
    if torch is None:
        return _item("torch", _version("torch"), why or "not installed", ok=False), gpu
    cuda = torch.version.cuda
    detail = f"built for CUDA {cuda}" if cuda else "CPU-only build"
    try:
        available = bool(torch.cuda.is_available())
    except Exception as e:  # a driver problem surfaces here
        available = False
        detail += f"; torch.cuda failed: {str(e).splitlines()[0][:120]}"
    gpu["cuda_available"] = available
    gpu["torch_cuda"] = cuda
    if available:
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append({"index": i, "name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                         "memory_gib": round(p.total_memory / 2**30, 1)})
        gpu["devices"] = gpus
        detail += "; " + ", ".join(f"GPU {g['index']}: {g['name']} (compute capability {g['compute_capability']}, "
                                   f"{g['memory_gib']} GiB)" for g in gpus)
    elif cuda:
        detail += "; torch.cuda.is_available() is False (no GPU or driver)"
    return _item("torch", torch.__version__, detail), gpu


def gather() -> dict[str, Any]:
    """Everything doctor reports, as plain data: {"python", "platform", "packages", "gpu", "backends"}."""
    packages = [_item("python", platform.python_version(), sys.executable)]
    numpy, why = _import("numpy")
    packages.append(_item("numpy", numpy.__version__ if numpy else None, "" if numpy else why))

    torch, why = _import("torch")
    torch_item, gpu = _torch_item(torch, why)
    packages.append(torch_item)

    onnx, why = _import("onnx")
    packages.append(_item("onnx", onnx.__version__ if onnx else None,
                          f"opsets up to {onnx.defs.onnx_opset_version()}" if onnx else why))
    for dist in ("onnxscript", "onnxslim"):
        v = _version(dist)
        packages.append(_item(dist, v, "for export" if v else "not installed (export needs it: bigmodel[cpu])"))

    ort, why = _import("onnxruntime")
    providers: list[str] = []
    if ort is not None:
        with contextlib.suppress(Exception):
            providers = list(ort.get_available_providers())
        dist = next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), "onnxruntime")
        detail = f"{dist}; providers built in: {', '.join(providers) or 'none'}"
        detail += ort_clash(_version("onnxruntime"), _version("onnxruntime-gpu"))
        if "CUDAExecutionProvider" in providers:
            from bigmodel.runtime.backends.ort import preload_cuda_libraries

            with contextlib.suppress(Exception):
                detail += f"; {preload_cuda_libraries() or 'CUDA libraries from torch (imported first)'}"
        packages.append(_item("onnxruntime", ort.__version__, detail))
    else:
        packages.append(_item("onnxruntime", None, why or "not installed"))

    trt, why = _import("tensorrt")
    nvinfer = ctypes.util.find_library("nvinfer")
    lib = f"libnvinfer: {nvinfer}" if nvinfer else "libnvinfer not found on the library path"
    packages.append(_item("tensorrt", getattr(trt, "__version__", None) if trt else None,
                          lib if trt else f"{why}; {lib}"))

    cuda_python = _version("cuda-python") or _version("cuda-bindings")
    detail = "not installed (the tensorrt backend needs it: bigmodel[tensorrt])"
    if cuda_python:
        mod, why = _import("cuda.bindings.runtime")
        if mod is None:
            mod, why = _import("cuda.cudart")
        detail = "imports" if mod is not None else why
        if mod is not None:
            from bigmodel.runtime.backends.tensorrt import cuda_device_reason

            try:
                detail = f"imports; {cuda_device_reason(mod) or 'CUDA runtime reaches GPU 0'}"
            except Exception as e:  # a broken binding: say so, never crash doctor
                detail = f"imports, but cudaGetDeviceCount failed: {type(e).__name__}: {e}"
    packages.append(_item("cuda-python", cuda_python, detail, ok=cuda_python is not None))

    ov, why = _import("openvino")
    packages.append(_item("openvino", getattr(ov, "__version__", None) if ov else None,
                          "for the ov-cpu backend" if ov
                          else f"{why} (the ov-cpu backend needs it: bigmodel[openvino])"))

    from bigmodel.serve import status as serve_status

    packages.append(_item("nvidia-pytriton", *serve_status()))
    gpu["nvinfer"] = nvinfer
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "gpu": gpu, "cpu": cpu_report(), "backends": backend_report(torch, gpu["cuda_available"])}


# /proc/cpuinfo flags -> what they give reduced precision: int8 dot products (VNNI), bf16 arithmetic, AMX tiles
CPU_FLAGS = {"int8": ("avx512_vnni", "avx_vnni", "amx_int8"), "bf16": ("avx512_bf16", "amx_bf16"),
             "amx": ("amx_tile", "amx_int8", "amx_bf16")}


def cpu_report(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """The CPU's model and the instruction sets that make int8 and bf16 pay: {"model", "int8", "bf16", "amx"}.

    Each of int8/bf16/amx lists the flags present ([] when none: int8 then runs, but at about fp32's speed).
    """
    from bigmodel.runtime.tuning import cpu_model

    flags: set[str] = set()
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"model": cpu_model(), **{k: [f for f in names if f in flags] for k, names in CPU_FLAGS.items()}}


def cpu_line(cpu: dict[str, Any]) -> str:
    """'cpu: AMD EPYC; int8 dot products: avx512_vnni; bf16: avx512_bf16; AMX: none'."""
    def have(key: str) -> str:
        return ", ".join(cpu.get(key) or []) or "none"

    return f"cpu: {cpu.get('model')}; int8 dot products: {have('int8')}; bf16: {have('bf16')}; AMX: {have('amx')}"


def backend_report(torch, cuda_available: bool) -> list[dict[str, Any]]:
    """Each bigmodel backend: ok, why not (None when ok), and what installs it."""
    rows = []
    torch_why = None if torch is not None else "torch is not installed"
    rows.append(("torch", torch_why))
    graph_why = torch_why or (None if cuda_available else "needs a CUDA GPU visible to torch "
                              "(torch.cuda.is_available() is False)")
    rows.append(("torch-cudagraph", graph_why))
    if torch is not None:  # bench's compiled torch peers (torch.compile, AOTInductor): Inductor's C++ toolchain
        from bigmodel.bench.adapters import COMPILED_BACKENDS, inductor_unavailable

        rows.extend((name, inductor_unavailable(name, "cpu")) for name in COMPILED_BACKENDS)
    else:
        rows.extend((name, torch_why) for name in ("torch-compile", "torch-compile-max", "aoti"))
    from bigmodel.runtime.backends import registry

    try:
        status = registry.status()
    except Exception as e:  # doctor must report, not crash
        status = {n: f"cannot ask the runtime: {e}" for n in registry.NAMES}
    rows.extend(status.items())
    return [{"name": name, "ok": why is None, "why": why, "extra": None if why is None else install_hint(name)}
            for name, why in rows]


def ort_clash(cpu_version: str | None, gpu_version: str | None) -> str:
    """A warning when both onnxruntime builds are installed (`bigmodel[cpu,gpu]`): their files overwrite each other."""
    if not (cpu_version and gpu_version):
        return ""
    return (f"; BROKEN: onnxruntime {cpu_version} and onnxruntime-gpu {gpu_version} are both installed and overwrite "
            "each other's files: pip uninstall -y onnxruntime onnxruntime-gpu, then install ONE of "
            "'bigmodel[cpu]' or 'bigmodel[gpu]'")
