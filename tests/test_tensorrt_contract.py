"""The TensorRT backend's runner against stand-ins for `tensorrt` and cuda-python that ENFORCE their contract.

No GPU here, so the stand-ins keep "device" memory in host RAM, but they refuse what the real APIs
refuse or silently get wrong:
- TensorRT: an input's address set before its shape, an output's shape or address asked for before
  every input shape is set, executing with any I/O tensor unbound (each call must bind them all),
  a batch outside the engine profile, a stream handle that is not an int, running on another GPU
  than the context's;
- CUDA: an async copy from or to pageable host memory (only cudaMallocHost memory may be used),
  a stream created blocking, and nothing queued on a stream happens before cudaStreamSynchronize:
  outputs read early are stale.
The whole path runs through `bigmodel.runtime.load(..., backend="tensorrt", device="cuda:1")`.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bigmodel.errors import BigmodelError
from bigmodel.manifest import BATCH, DataSpec, EngineSpec, LatentSpec, Manifest, RoleSpec, TensorSpec
from bigmodel.runtime.backends import tensorrt as trt_backend

OK, INVALID_VALUE = 0, 1
NON_BLOCKING = 1
LO, HI = 1, 64  # engine profile batch range


class Err(int):
    """A cudaError_t stand-in: int() 0 is success."""


class Stream:
    """A cudaStream_t stand-in: an object whose int() is the handle."""

    def __init__(self, handle):
        self.handle = handle

    def __int__(self):
        return self.handle


class Override:
    """`inner` with some of its functions replaced (for runners that break the contract on purpose)."""

    def __init__(self, inner, **over):
        self._inner, self._over = inner, over

    def __getattr__(self, name):
        return self._over[name] if name in self._over else getattr(self._inner, name)


class FakeCuda(types.SimpleNamespace):
    """cuda-python's runtime module, with device memory simulated and stream order enforced."""

    def __init__(self, gpus: int = 2):
        super().__init__()
        self.gpus, self.current, self.allocs, self.pinned, self.queues = gpus, 0, {}, {}, {}
        self.freed: list[int] = []
        self.cudaStreamNonBlocking = NON_BLOCKING
        self.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="H2D", cudaMemcpyDeviceToHost="D2H")
        self.cudaDeviceAttr = types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor="ccmajor",
                                                    cudaDevAttrComputeCapabilityMinor="ccminor")

    # -- errors and devices
    def cudaGetErrorName(self, err):
        return Err(OK), b"cudaErrorInvalidValue" if int(err) == INVALID_VALUE else b"cudaErrorUnknown"

    def cudaGetErrorString(self, err):
        return Err(OK), b"invalid argument"

    def cudaGetDeviceCount(self):
        return Err(OK), self.gpus

    def cudaSetDevice(self, d):
        if not 0 <= d < self.gpus:
            return (Err(INVALID_VALUE),)
        self.current = d
        return (Err(OK),)

    def cudaDeviceGetAttribute(self, attr, d):
        return Err(OK), {"ccmajor": 9, "ccminor": 0}[attr]

    def cudaGetDeviceProperties(self, d):
        return Err(OK), types.SimpleNamespace(name=b"Fake H200\0\0")

    # -- memory: ctypes buffers at real addresses; device ones only reachable through copies and kernels
    def _alloc(self, n, table):
        buf = (ctypes.c_ubyte * n)()
        table[ctypes.addressof(buf)] = buf
        return Err(OK), ctypes.addressof(buf)

    def cudaMalloc(self, n):
        return self._alloc(n, self.allocs)

    def cudaMallocHost(self, n):
        return self._alloc(n, self.pinned)

    def cudaFree(self, p):
        self.freed.append(p)
        return (Err(OK),)

    cudaFreeHost = cudaFree

    @staticmethod
    def _inside(table, ptr, n) -> bool:
        return any(base <= ptr and ptr + n <= base + len(buf) for base, buf in table.items())

    def device_view(self, ptr, nbytes) -> np.ndarray:
        assert self._inside(self.allocs, ptr, nbytes), "kernel touches memory that is not a device allocation"
        return np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(ptr))

    # -- streams: work is queued and happens only at synchronisation
    def cudaStreamCreateWithFlags(self, flags):
        if flags != NON_BLOCKING:
            return Err(INVALID_VALUE), None
        handle = 1000 + len(self.queues)
        self.queues[handle] = []
        return Err(OK), Stream(handle)

    def cudaStreamDestroy(self, s):
        return (Err(OK),)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        host, dev = (src, dst) if kind == "H2D" else (dst, src)
        if not self._inside(self.pinned, host, n) or not self._inside(self.allocs, dev, n):
            return (Err(INVALID_VALUE),)  # pageable host memory cannot be copied asynchronously
        self.queues[stream.handle].append(lambda: ctypes.memmove(dst, src, n))
        return (Err(OK),)

    def cudaStreamSynchronize(self, stream):
        queue = self.queues[stream.handle]
        while queue:
            queue.pop(0)()
        return (Err(OK),)


class FakeEngine:
    """An engine described by JSON: {"inputs": {name: [dims]}, "outputs": {...}, "weights": {out: [[...]]}}."""

    def __init__(self, trt, spec: dict, cuda: FakeCuda, device: int):
        self.trt, self.spec, self.cuda, self.device = trt, spec, cuda, device
        self.names = list(spec["inputs"]) + list(spec["outputs"])
        self.num_io_tensors = len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, n):
        return self.trt.TensorIOMode.INPUT if n in self.spec["inputs"] else self.trt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, n):
        return types.SimpleNamespace(name="FLOAT")

    def get_tensor_shape(self, n):
        return tuple(self.spec["inputs"].get(n) or self.spec["outputs"][n])

    def create_execution_context(self):
        return FakeContext(self)


class FakeContext:
    """Enforces TensorRT's execution contract; every call must bind all I/O again (stricter than TensorRT)."""

    def __init__(self, engine: FakeEngine):
        self.e, self.shapes, self.addrs = engine, {}, {}

    def set_input_shape(self, n, shape):
        dims = self.e.spec["inputs"][n]
        shape = tuple(shape)
        if len(shape) != len(dims) or shape[1:] != tuple(dims[1:]) or not LO <= shape[0] <= HI:
            return False
        self.shapes[n] = shape
        return True

    def _all_inputs_shaped(self):
        return all(n in self.shapes for n in self.e.spec["inputs"])

    def get_tensor_shape(self, n):
        assert self._all_inputs_shaped(), f"output shape of {n} asked for before every input shape was set"
        batch = self.shapes[next(iter(self.e.spec["inputs"]))][0]
        return (batch, *self.e.spec["outputs"][n][1:])

    def set_tensor_address(self, n, ptr):
        assert isinstance(ptr, int), "addresses are ints"
        if n in self.e.spec["inputs"]:
            assert n in self.shapes, f"address of input {n} set before its shape"
        else:
            assert self._all_inputs_shaped(), f"address of output {n} set before the input shapes"
        self.addrs[n] = ptr
        return True

    def execute_async_v3(self, stream_handle):
        assert type(stream_handle) is int, f"stream handle must be an int, got {type(stream_handle).__name__}"
        cuda = self.e.cuda
        assert stream_handle in cuda.queues, "unknown stream"
        assert cuda.current == self.e.device, f"executing on GPU {cuda.current}, context lives on {self.e.device}"
        unbound = [n for n in self.e.names if n not in self.addrs]
        assert not unbound and self._all_inputs_shaped(), f"unbound I/O tensors {unbound}"
        (name_in,) = self.e.spec["inputs"]
        shape_in = self.shapes[name_in]
        plan = {n: (self.addrs[n], self.get_tensor_shape(n)) for n in self.e.spec["outputs"]}
        src = self.addrs[name_in]

        def kernel():  # runs at synchronisation, in stream order
            x = cuda.device_view(src, int(np.prod(shape_in)) * 4).view(np.float32).reshape(shape_in)
            flat = x.reshape(len(x), -1)
            for n, (ptr, shape) in plan.items():
                w = np.asarray(self.e.spec["weights"][n], np.float32)
                y = np.tanh(flat @ w).reshape(shape)
                cuda.device_view(ptr, y.nbytes)[:] = y.astype(np.float32).view(np.uint8).ravel()

        cuda.queues[stream_handle].append(kernel)
        self.shapes, self.addrs = {}, {}  # next call binds everything again
        return True


def fake_tensorrt(cuda: FakeCuda, version: str = "10.13.0.35"):
    trt = types.SimpleNamespace(__version__=version, __spec__=importlib.machinery.ModuleSpec("tensorrt", None))
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            return FakeEngine(trt, json.loads(bytes(blob)), cuda, cuda.current)

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


# ------------------------------------------------------------------------------------------ a bundle
RNG = np.random.default_rng(0)
W_MU, W_LOGVAR, W_X = (RNG.standard_normal(s).astype(np.float32) * 0.3 for s in ((4, 3), (4, 3), (3, 4)))


def _write(path: Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def vae_bundle(folder: Path) -> Path:
    """A VAE bundle (images 1x2x2, latent 3) whose engines are JSON for the stand-in; encoder outputs reversed."""
    enc_engine = {"inputs": {"x": [-1, 1, 2, 2]}, "outputs": {"logvar": [-1, 3], "mu": [-1, 3]},
                  "weights": {"mu": W_MU.tolist(), "logvar": W_LOGVAR.tolist()}}
    dec_engine = {"inputs": {"z": [-1, 3]}, "outputs": {"x": [-1, 1, 2, 2]}, "weights": {"x": W_X.tolist()}}
    roles = {
        "encoder": RoleSpec("encoder.onnx", _write(folder / "encoder.onnx", b"enc"),
                            [TensorSpec("x", "float32", [BATCH, 1, 2, 2], "image")],
                            [TensorSpec("mu", "float32", [BATCH, 3], "latent"),
                             TensorSpec("logvar", "float32", [BATCH, 3], "stat")]),
        "decoder": RoleSpec("decoder.onnx", _write(folder / "decoder.onnx", b"dec"),
                            [TensorSpec("z", "float32", [BATCH, 3], "latent")],
                            [TensorSpec("x", "float32", [BATCH, 1, 2, 2], "image")]),
    }
    engines = [EngineSpec(role, f"engines/{role}.engine",
                          _write(folder / "engines" / f"{role}.engine", json.dumps(spec).encode()),
                          "10.13.0.35", "9.0", "fp32", {"min": LO, "opt": 16, "max": HI}, "Fake H200")
               for role, spec in (("encoder", enc_engine), ("decoder", dec_engine))]
    m = Manifest("vae", "mlp", DataSpec("test", (1, 2, 2), (0.0, 1.0)), LatentSpec(3), roles, engines=engines)
    m.save(folder)
    return folder


@pytest.fixture
def fakes(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(cuda))
    monkeypatch.setattr(trt_backend, "_find", lambda name: name in ("tensorrt", "cuda.bindings"))
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cuda)
    return cuda


def test_tensorrt_backend_runs_through_load_on_the_asked_gpu(fakes, tmp_path):
    from bigmodel.runtime import load

    model = load(vae_bundle(tmp_path / "b"), backend="tensorrt", device="cuda:1")
    assert model.backend.device == 1 and model.backend.settings["device_id"] == 1
    for n in (1, 5, HI, 150):  # 150 > the profile's max: the Model splits it into engine-sized calls
        z = RNG.standard_normal((n, 3)).astype(np.float32)
        np.testing.assert_allclose(model.decode(z), np.tanh(z @ W_X).reshape(n, 1, 2, 2), rtol=1e-6, atol=1e-6)
        x = RNG.random((n, 1, 2, 2), dtype=np.float32)
        out = model.run("encoder", {"x": x})  # the engine lists logvar first; the manifest's order wins
        np.testing.assert_allclose(out["mu"], np.tanh(x.reshape(n, 4) @ W_MU), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out["logvar"], np.tanh(x.reshape(n, 4) @ W_LOGVAR), rtol=1e-6, atol=1e-6)
    first = model.decode(np.zeros((2, 3), np.float32))
    model.decode(np.ones((2, 3), np.float32))
    assert np.all(first == 0)  # tanh(0): still 0 after the next call, so outputs are fresh arrays, not pinned views
    model.close()
    assert fakes.freed  # device and pinned buffers released


def test_the_stand_ins_catch_a_runner_that_breaks_the_contract(fakes, tmp_path):
    """Proof the stand-ins have teeth: each broken variant of the runner fails."""
    from bigmodel.runtime import load

    bundle = vae_bundle(tmp_path / "b")
    z = RNG.standard_normal((4, 3)).astype(np.float32)
    want = np.tanh(z @ W_X).reshape(4, 1, 2, 2)

    model = load(bundle, backend="tensorrt", device="cuda:1")
    role = model.backend._roles["decoder"]
    role.cudart = Override(fakes, cudaStreamSynchronize=lambda s: (Err(OK),))
    stale = model.backend.run("decoder", {"z": z})[0]  # no synchronisation: outputs read before the GPU wrote them
    assert not np.allclose(stale, want)
    model.close()

    model = load(bundle, backend="tensorrt", device="cuda:1")
    role = model.backend._roles["decoder"]
    role.host = {n: np.zeros_like(v) for n, v in role.host.items()}  # pageable staging instead of pinned
    with pytest.raises(BigmodelError, match="cudaMemcpyAsync failed: cudaErrorInvalidValue"):
        model.backend.run("decoder", {"z": z})
    model.close()

    spec = {"inputs": {"z": [-1, 3]}, "outputs": {"x": [-1, 4]}, "weights": {"x": W_X.tolist()}}
    ctx = FakeEngine(sys.modules["tensorrt"], spec, fakes, fakes.current).create_execution_context()
    with pytest.raises(AssertionError, match="before its shape"):
        ctx.set_tensor_address("z", 1)
    with pytest.raises(AssertionError, match="before every input shape"):
        ctx.get_tensor_shape("x")
    assert ctx.set_input_shape("z", (HI + 1, 3)) is False  # outside the profile
    assert ctx.set_input_shape("z", (2, 3)) and ctx.set_tensor_address("z", 1)
    with pytest.raises(AssertionError, match="unbound I/O tensors"):
        ctx.execute_async_v3(next(iter(fakes.queues)))
    with pytest.raises(AssertionError, match="must be an int"):
        ctx.execute_async_v3(Stream(1000))


def test_a_blocking_stream_or_wrong_gpu_is_refused(fakes, tmp_path):
    from bigmodel.runtime import load

    with pytest.raises(BigmodelError, match="GPU 2 was asked for, but this process sees 2 GPU"):
        load(vae_bundle(tmp_path / "b"), backend="tensorrt", device="cuda:2")
    assert fakes.cudaStreamCreateWithFlags(0)[1] is None  # the stand-in refuses a blocking stream


# ------------------------------------------------------- bench's onnxruntime I/O-binding runner (CUDA, no copies)
class FakeValue:
    def __init__(self, array, device, device_id):
        self.array, self.device, self.device_id = array, device, device_id


class FakeBinding:
    """onnxruntime's IOBinding contract: every input and output bound on the GPU asked for, outputs readable
    only after synchronize_outputs()."""

    def __init__(self, session, device_id):
        self.session, self.device_id, self.inputs, self.outputs = session, device_id, {}, set()
        self.pending = self.ready = None

    def bind_ortvalue_input(self, name, value):
        assert (value.device, value.device_id) == ("cuda", self.device_id), "input bound on another device"
        self.inputs[name] = value.array

    def bind_output(self, name, device_type, device_id):
        assert (device_type, device_id) == ("cuda", self.device_id), "output bound on another device"
        self.outputs.add(name)

    def run(self):
        names = [i.name for i in self.session.get_inputs()]
        assert sorted(self.inputs) == sorted(names), f"unbound inputs: {set(names) - set(self.inputs)}"
        assert self.outputs == {o.name for o in self.session.get_outputs()}, "unbound outputs"
        self.pending = dict(zip(sorted(self.outputs), self.session.run(sorted(self.outputs), self.inputs),
                                strict=True))
        self.ready = None

    def synchronize_outputs(self):
        self.ready, self.pending = self.pending, None

    def copy_outputs_to_cpu(self):
        assert self.ready is not None, "outputs read before synchronize_outputs()"
        return self.ready


class FakeSession:
    def __init__(self, real, device_id):
        self.real, self.binding = real, FakeBinding(real, device_id)

    def io_binding(self):
        return self.binding

    def run_with_iobinding(self, binding):
        binding.run()


def test_bench_bound_runner_binds_everything_on_the_asked_gpu_and_synchronises(exported, monkeypatch):
    import onnxruntime as ort

    from bigmodel.bench.adapters import RuntimeAdapter
    from bigmodel.bench.run import BenchSettings
    from bigmodel.runtime import load

    bundle = exported("gan")  # conftest's shared fp32 bundle, only read
    model = load(bundle, backend="ort-cpu", threads=1)
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda x, dev, i: FakeValue(x, dev, i)))
    adapter = RuntimeAdapter("ort-cuda", bundle, model.manifest, BenchSettings(device="cuda", device_id=1,
                                                                               copies=False))
    adapter.model, adapter.copies = model, False
    z = RNG.standard_normal((3, model.latent_dim)).astype(np.float32)
    sessions = model.backend.sessions
    fake = FakeSession(sessions["generator"], 1)
    sessions["generator"] = fake
    run = adapter.runner("generator", {"z": z})
    run()
    got = fake.binding.copy_outputs_to_cpu()
    want = load(bundle, backend="ort-cpu", threads=1).run("generator", {"z": z})
    for name, value in got.items():
        np.testing.assert_array_equal(value, want[name])
    fake.binding.synchronize_outputs = lambda: None  # a runner that forgot to synchronise is caught
    run()
    with pytest.raises(AssertionError, match="before synchronize_outputs"):
        fake.binding.copy_outputs_to_cpu()
