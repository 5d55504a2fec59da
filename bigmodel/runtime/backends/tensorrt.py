"""TensorRT backend: the bundle's serialized engines through the TensorRT Python API and cuda-python.

The thin part: only TensorRT and CUDA calls live here. Which engine to use, whether it fits this
GPU and TensorRT, profiles and dtypes are decided by the pure functions in `runtime/engines.py`
before anything is deserialised. Written against TensorRT 10's documented API (named I/O tensors,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`); not executed by this project's CI,
which has no GPU or TensorRT.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from bigmodel.errors import BackendUnavailable, BigmodelError, BundleError, missing_package
from bigmodel.manifest import Manifest
from bigmodel.runtime.engines import LocalTensorRT, buffer_bytes, check_profile, engine_dtype, select_engines


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise missing_package("tensorrt", "tensorrt", "the tensorrt backend") from e
    return tensorrt


def import_cudart():
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as e:
            raise missing_package("cuda-python", "tensorrt", "the tensorrt backend") from e
    return cudart


def _call(cudart, result, what: str):
    """Unpack a cuda-python result tuple (err, *values), raising on an error code."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, name = cudart.cudaGetErrorName(err)
        raise BigmodelError(f"CUDA {what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def unavailable_reason() -> str | None:
    """None when the tensorrt backend can run here, else exactly what is missing (never imports torch)."""
    if not _find("tensorrt"):
        return "the 'tensorrt' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"
    if not (_find("cuda.bindings") or _find("cuda.cudart")):
        return "the 'cuda-python' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"
    try:
        import_tensorrt()
    except (BackendUnavailable, OSError) as e:  # a stub wheel or a missing libnvinfer
        return f"tensorrt is installed but cannot be imported: {e}"
    try:
        cudart = import_cudart()
        err, count = cudart.cudaGetDeviceCount()
    except Exception as e:  # driver or library problems surface as various exception types
        return f"cuda-python cannot reach the CUDA driver: {e}"
    if int(err) != 0 or count < 1:
        return "no CUDA GPU is visible to this process (cudaGetDeviceCount found none)"
    return None


def local_tensorrt(device: int = 0) -> LocalTensorRT:
    """This machine's TensorRT version and the compute capability and name of GPU `device`."""
    trt, cudart = import_tensorrt(), import_cudart()
    attr = cudart.cudaDeviceAttr
    major = _call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "query")
    minor = _call(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "query")
    props = _call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, bytes) else str(name)
    return LocalTensorRT(trt.__version__, f"{major}.{minor}", name)


class _Role:
    """One engine, its execution context, a stream and device buffers sized for the profile's max batch.

    An execution context is not thread-safe, so calls on one role are serialised by a lock (the
    GPU runs them one after another anyway); different roles run concurrently.
    """

    def __init__(self, trt, cudart, engine, role: str, file: str, max_batch: int, expected_inputs: list[str]):
        self.trt, self.cudart, self.engine = trt, cudart, engine
        self.lock = threading.Lock()
        self.ptrs: list[int] = []
        self.stream = _call(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.context = engine.create_execution_context()
        if self.context is None:
            raise BigmodelError(f"TensorRT could not create an execution context for {file} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        if sorted(self.inputs) != sorted(expected_inputs):
            raise BundleError(f"engine {file} has inputs {self.inputs}; the manifest's {role} has {expected_inputs}")
        self.dtypes = {n: engine_dtype(engine.get_tensor_dtype(n).name, n) for n in names}
        self.addr: dict[str, int] = {}
        for n in names:
            nbytes = buffer_bytes(engine.get_tensor_shape(n), self.dtypes[n], max_batch)
            ptr = _call(cudart, cudart.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self.ptrs.append(ptr)
            self.addr[n] = int(ptr)
            if not self.context.set_tensor_address(n, int(ptr)):
                raise BigmodelError(f"TensorRT rejected the buffer address of {n} in {file}")
        self.h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def run(self, feeds: dict[str, np.ndarray], device: int = 0) -> list[np.ndarray]:
        cudart, ctx, stream = self.cudart, self.context, self.stream
        with self.lock:
            if device:  # the CUDA runtime's current device is per host thread
                _call(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
            keep = []  # host inputs must outlive the async copies
            for n in self.inputs:
                x = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
                keep.append(x)
                if not ctx.set_input_shape(n, x.shape):
                    raise BigmodelError(f"TensorRT rejected input shape {x.shape} for {n}")
                _call(cudart, cudart.cudaMemcpyAsync(self.addr[n], x.ctypes.data, x.nbytes, self.h2d, stream),
                      "cudaMemcpyAsync")
            outs = [np.empty(tuple(ctx.get_tensor_shape(n)), dtype=self.dtypes[n]) for n in self.outputs]
            if not ctx.execute_async_v3(int(stream)):
                raise BigmodelError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
            for n, out in zip(self.outputs, outs, strict=True):
                _call(cudart, cudart.cudaMemcpyAsync(out.ctypes.data, self.addr[n], out.nbytes, self.d2h, stream),
                      "cudaMemcpyAsync")
            _call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return outs

    def close(self) -> None:
        for ptr in self.ptrs:
            self.cudart.cudaFree(ptr)
        self.ptrs = []
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = None


class TensorRTBackend:
    """Every role's engine deserialised once at load; `run` returns outputs in the manifest's order."""

    name = "tensorrt"

    def __init__(self, bundle: Path, manifest: Manifest, precision: str | None = None, device: int = 0):
        reason = unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"backend tensorrt: {reason}")
        self.device = device
        self.local = local_tensorrt(device)
        # preflight: engine choice and compatibility with this GPU and TensorRT, before deserialising
        self.engines = select_engines(manifest, self.local.tensorrt_version, self.local.compute_capability,
                                      precision, path=bundle)
        self.profiles = {role: check_profile(e) for role, e in self.engines.items()}
        trt, cudart = import_tensorrt(), import_cudart()
        _call(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._roles: dict[str, _Role] = {}
        self._order: dict[str, list[int]] = {}
        try:
            for role, spec in self.engines.items():
                engine = self._runtime.deserialize_cuda_engine((bundle / spec.file).read_bytes())
                if engine is None:
                    raise BundleError(f"TensorRT {self.local.tensorrt_version} could not deserialise {spec.file} "
                                      "(see TensorRT's log above); rebuild it with `bigmodel export RUN_DIR --engine`")
                r = _Role(trt, cudart, engine, role, spec.file, self.profiles[role][2],
                          [t.name for t in manifest.roles[role].inputs])
                wanted = [t.name for t in manifest.roles[role].outputs]
                if sorted(r.outputs) != sorted(wanted):
                    raise BundleError(f"engine {spec.file} has outputs {r.outputs}; the manifest's {role} has {wanted}")
                self._order[role] = [r.outputs.index(n) for n in wanted]
                self._roles[role] = r
        except BaseException:
            self.close()
            raise

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self._roles[role].run(feeds, self.device)
        return [outs[i] for i in self._order[role]]

    def batch_range(self, role: str) -> tuple[int, int]:
        lo, _, hi = self.profiles[role]
        return lo, hi

    def close(self) -> None:
        for r in getattr(self, "_roles", {}).values():
            r.close()
        self._roles = {}

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: cudart may already be gone
            pass
