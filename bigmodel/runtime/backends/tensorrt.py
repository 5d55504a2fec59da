"""TensorRT backend: the bundle's serialized engines through the TensorRT Python API and cuda-python.

The thin part: only TensorRT and CUDA calls live here. Which engine to use, whether it fits this
GPU and TensorRT, profiles and dtypes are decided by the pure functions in `runtime/engines.py`
before anything is deserialised. Written against TensorRT 10/11's documented API (named I/O
tensors, `set_input_shape`, `set_tensor_address`, `execute_async_v3`), imported as the real
`tensorrt` module so CI type-checks these calls against the `tensorrt-stubs` package; not executed
by this project's CI, which has no GPU or TensorRT.

Per call: inputs are copied into page-locked (pinned) host buffers allocated once per role, then
host->device, execute and device->host all run asynchronously on one non-blocking stream, which
is synchronised before the outputs are read (and copied out of the reused pinned buffers).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bigmodel.errors import BackendUnavailable, BigmodelError, BundleError, missing_package
from bigmodel.manifest import Manifest
from bigmodel.runtime.engines import LocalTensorRT, buffer_bytes, check_profile, engine_dtype, select_engines

if TYPE_CHECKING:
    import tensorrt


def _find(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise missing_package("tensorrt", "tensorrt", "the tensorrt backend") from e
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6; the only one in 13) or `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python 12.0-12.5
        except ImportError as e:
            raise missing_package("cuda-python", "tensorrt", "the tensorrt backend") from e
    return cudart


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_cuda_major(dist_names: list[str]) -> int | None:
    """The CUDA major a TensorRT wheel was built for, from its distribution names ('tensorrt-cu13' -> 13)."""
    for name in dist_names:
        m = re.fullmatch(r"tensorrt[-_]cu(\d+)(?:[-_].*)?", name.lower())
        if m:
            return int(m[1])
    return None


def cuda_python_mismatch(trt_cuda: int | None, cuda_python: str | None) -> str | None:
    """Why cuda-python `cuda_python` cannot serve a TensorRT built for CUDA `trt_cuda`, or None.

    cuda-python's major is the CUDA major it binds (12.x -> CUDA 12, 13.x -> CUDA 13); mixing two
    CUDA majors in one process loads two runtimes. Unknown versions are not judged.
    """
    if trt_cuda is None or not cuda_python:
        return None
    m = re.match(r"(\d+)", cuda_python)
    if m and int(m[1]) != trt_cuda:
        return (f"TensorRT here is built for CUDA {trt_cuda} but cuda-python {cuda_python} binds CUDA {m[1]}; "
                f"install cuda-python>={trt_cuda},<{trt_cuda + 1} (the bigmodel[tensorrt] extra pins the pair)")
    return None


def _error_text(cudart: Any, err: Any) -> str:
    """'cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version'."""
    def text(result) -> str:
        value = result[1] if isinstance(result, tuple) else result
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    try:
        return f"{text(cudart.cudaGetErrorName(err))}: {text(cudart.cudaGetErrorString(err))}"
    except Exception:  # a broken binding: the number is all there is
        return f"CUDA error {int(err)}"


def _cuda_version(v: int | None) -> str:
    return "none" if not v else f"{v // 1000}.{v % 1000 // 10}"


def cuda_device_reason(cudart: Any, device: int = 0) -> str | None:
    """None when CUDA GPU `device` is usable through cuda-python, else the CUDA runtime's own error.

    A too-old driver reads as cudaErrorInsufficientDriver (with the CUDA versions the driver and the
    runtime support), not as "no GPU"; only a count of 0 means no GPU is visible.
    """
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0:
        versions = []
        for what, call in (("the driver supports CUDA", "cudaDriverGetVersion"),
                           ("cuda-python's runtime is CUDA", "cudaRuntimeGetVersion")):
            try:
                e, v = getattr(cudart, call)()
                versions.append(f"{what} {_cuda_version(v) if int(e) == 0 else '?'}")
            except Exception:  # best effort: the error itself is the message
                continue
        extra = f" ({'; '.join(versions)})" if versions else ""
        return f"CUDA cannot start: {_error_text(cudart, err)}{extra}"
    if not count:
        return "no CUDA GPU is visible to this process (cudaGetDeviceCount returned 0; check CUDA_VISIBLE_DEVICES)"
    if not 0 <= device < count:
        return f"GPU {device} was asked for, but this process sees {count} GPU(s) (0..{count - 1})"
    return None


def unavailable_reason(device: int = 0) -> str | None:
    """None when the tensorrt backend can run here on GPU `device`, else exactly what is missing (no torch)."""
    if not _find("tensorrt"):
        return "the 'tensorrt' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"
    if not (_find("cuda.bindings") or _find("cuda.cudart")):
        return "the 'cuda-python' package is not installed; install it with: pip install 'bigmodel[tensorrt]'"
    try:
        import_tensorrt()
    except (BackendUnavailable, OSError) as e:  # a stub wheel or a missing libnvinfer
        return f"tensorrt is installed but cannot be imported: {e}"
    dists = [d.metadata["Name"] or "" for d in importlib.metadata.distributions()
             if (d.metadata["Name"] or "").lower().startswith("tensorrt")]
    mismatch = cuda_python_mismatch(tensorrt_cuda_major(dists), _dist_version("cuda-bindings", "cuda-python"))
    if mismatch:
        return mismatch
    try:
        return cuda_device_reason(import_cudart(), device)
    except Exception as e:  # driver or library problems surface as various exception types
        return f"cuda-python cannot reach the CUDA driver: {type(e).__name__}: {e}"


def probe_backend(name: str, device_id: int = 0) -> str | None:
    """Registry probe: None when the tensorrt backend can run on GPU `device_id`, else what is missing."""
    return unavailable_reason(device_id)


def create(name: str, bundle: Path, manifest: Manifest, options) -> TensorRTBackend:
    """Registry factory: every role's engine deserialised (options: a registry.LoadOptions)."""
    return TensorRTBackend(bundle, manifest, precision=options.precision, device=options.device_id)


def _call(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python result tuple (err, *values), raising the CUDA error by name on failure."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BigmodelError(f"CUDA {what} failed: {_error_text(cudart, err)}")
    return values[0] if len(values) == 1 else (values or None)


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


def _pinned_array(ptr: int, nbytes: int) -> np.ndarray:
    """A uint8 numpy view of `nbytes` of page-locked host memory at `ptr` (owned by the caller)."""
    return np.ctypeslib.as_array((ctypes.c_ubyte * max(nbytes, 1)).from_address(ptr))


class _Role:
    """One engine, its execution context, a non-blocking stream, and device + pinned host buffers
    sized for the profile's max batch, allocated once.

    An execution context is not thread-safe, so calls on one role are serialised by a lock (the
    GPU runs them one after another anyway); different roles run concurrently.
    """

    def __init__(self, cudart: Any, engine: tensorrt.ICudaEngine, role: str, file: str, max_batch: int,
                 expected_inputs: list[str], device: int = 0):
        import tensorrt as trt

        self.cudart, self.engine, self.device = cudart, engine, device
        self.lock = threading.Lock()
        self.device_ptrs: list[int] = []
        self.host_ptrs: list[int] = []
        self.stream: Any = None
        # non-blocking: no implicit synchronisation with the legacy default stream other libraries use
        self.stream = _call(cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")
        context = engine.create_execution_context()
        if context is None:
            raise BigmodelError(f"TensorRT could not create an execution context for {file} (out of GPU memory?)")
        self.context: tensorrt.IExecutionContext = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        if sorted(self.inputs) != sorted(expected_inputs):
            raise BundleError(f"engine {file} has inputs {self.inputs}; the manifest's {role} has {expected_inputs}")
        self.dtypes = {n: engine_dtype(engine.get_tensor_dtype(n).name, n) for n in names}
        self.addr: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}  # uint8 views of each tensor's pinned buffer
        for n in names:
            nbytes = max(buffer_bytes(engine.get_tensor_shape(n), self.dtypes[n], max_batch), 1)
            self.addr[n] = int(_call(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc"))
            self.device_ptrs.append(self.addr[n])
            host = int(_call(cudart, cudart.cudaMallocHost(nbytes), "cudaMallocHost"))
            self.host_ptrs.append(host)
            self.host[n] = _pinned_array(host, nbytes)
        self.h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self.d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """feeds -> outputs (fresh arrays) in the engine's output order."""
        cudart, ctx, stream = self.cudart, self.context, self.stream
        with self.lock:
            _call(cudart, cudart.cudaSetDevice(self.device), "cudaSetDevice")  # current device is per host thread
            for n in self.inputs:  # shape first, then address (TensorRT resolves output shapes from input shapes)
                x = np.ascontiguousarray(feeds[n], dtype=self.dtypes[n])
                if not ctx.set_input_shape(n, x.shape):
                    raise BigmodelError(f"TensorRT rejected input shape {x.shape} for {n}")
                staged = self.host[n][:x.nbytes].view(self.dtypes[n]).reshape(x.shape)
                np.copyto(staged, x)  # pageable -> pinned, so the copy below is a true async DMA
                if not ctx.set_tensor_address(n, self.addr[n]):
                    raise BigmodelError(f"TensorRT rejected the buffer address of {n}")
                _call(cudart, cudart.cudaMemcpyAsync(self.addr[n], staged.ctypes.data, x.nbytes, self.h2d, stream),
                      "cudaMemcpyAsync")
            shapes = []
            for n in self.outputs:  # resolved from the input shapes just set
                dims = ctx.get_tensor_shape(n)
                shapes.append(tuple(int(dims[i]) for i in range(len(dims))))
            for n in self.outputs:
                if not ctx.set_tensor_address(n, self.addr[n]):
                    raise BigmodelError(f"TensorRT rejected the buffer address of {n}")
            if not ctx.execute_async_v3(int(stream)):
                raise BigmodelError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
            staged_out = []
            for n, shape in zip(self.outputs, shapes, strict=True):
                nbytes = int(np.prod(shape, dtype=np.int64)) * self.dtypes[n].itemsize
                staged_out.append(self.host[n][:nbytes].view(self.dtypes[n]).reshape(shape))
                _call(cudart, cudart.cudaMemcpyAsync(staged_out[-1].ctypes.data, self.addr[n], nbytes, self.d2h,
                                                     stream), "cudaMemcpyAsync")
            _call(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return [o.copy() for o in staged_out]  # the pinned buffers are reused by the next call

    def close(self) -> None:
        for ptr in self.device_ptrs:
            self.cudart.cudaFree(ptr)
        for ptr in self.host_ptrs:
            self.cudart.cudaFreeHost(ptr)
        self.device_ptrs, self.host_ptrs, self.host = [], [], {}
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None


class TensorRTBackend:
    """Every role's engine deserialised once at load; `run` returns outputs in the manifest's order."""

    name = "tensorrt"

    def __init__(self, bundle: Path, manifest: Manifest, precision: str | None = None, device: int = 0):
        reason = unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailable(f"backend tensorrt: {reason}")
        import tensorrt as trt

        self.device = device
        self.local = local_tensorrt(device)
        # preflight: engine choice and compatibility with this GPU and TensorRT, before deserialising
        self.engines = select_engines(manifest, self.local.tensorrt_version, self.local.compute_capability,
                                      precision, path=bundle)
        self.profiles = {role: check_profile(e) for role, e in self.engines.items()}
        cudart = import_cudart()
        _call(cudart, cudart.cudaSetDevice(device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._roles: dict[str, _Role] = {}
        self._order: dict[str, list[int]] = {}
        self.settings = {"device_id": device, "tf32": any(e.tf32 for e in self.engines.values()),
                         "engines": {r: e.file for r, e in self.engines.items()}, "pinned_host_buffers": True}
        try:
            for role, spec in self.engines.items():
                engine = self._runtime.deserialize_cuda_engine((bundle / spec.file).read_bytes())
                if engine is None:
                    raise BundleError(f"TensorRT {self.local.tensorrt_version} could not deserialise {spec.file} "
                                      "(see TensorRT's log above); rebuild it with `bigmodel export RUN_DIR --engine`")
                r = _Role(cudart, engine, role, spec.file, self.profiles[role][2],
                          [t.name for t in manifest.roles[role].inputs], device)
                self._roles[role] = r
                wanted = [t.name for t in manifest.roles[role].outputs]
                if sorted(r.outputs) != sorted(wanted):
                    raise BundleError(f"engine {spec.file} has outputs {r.outputs}; the manifest's {role} has {wanted}")
                self._order[role] = [r.outputs.index(n) for n in wanted]
        except BaseException:
            self.close()
            raise

    def run(self, role: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self._roles[role].run(feeds)
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
