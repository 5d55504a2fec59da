"""`bigmodel serve` on real bundles behind a real Triton Inference Server (PyTriton), called with tritonclient.

One server per test, started as the real command on free 127.0.0.1 ports with its own TMPDIR; every request
carries a client timeout and every loop a fixed count. Skips, with the reason, where the `serve` extra
(nvidia-pytriton, tritonclient[http,grpc]) is not installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from bigmodel.errors import BigmodelError, InputError
from bigmodel.runtime import load
from bigmodel.serve import (
    ServeOptions,
    check_options,
    interpreter_libpython,
    launched,
    libdir_fix,
    numpy_clash,
    split_outputs,
    stub_libpython,
    stub_path,
)

SERVE_REASON = ("the serve extra is not installed (nvidia-pytriton 0.7 needs numpy < 2 and tritonclient[grpc] "
                "protobuf < 7, which .ci/constraints.txt refuses; .ci/run runs these tests in a [cpu,test,serve] "
                "environment of their own): pip install -e '.[cpu,test,serve]'")
MAX_BATCH = 8
TIMEOUT_S = 30.0  # every request
CONCURRENT = 8


def _clients():
    pytest.importorskip("pytriton", reason=SERVE_REASON)
    if numpy_clash():
        pytest.skip(numpy_clash())
    http = pytest.importorskip("tritonclient.http", reason=SERVE_REASON)
    grpc = pytest.importorskip("tritonclient.grpc", reason=SERVE_REASON)
    return http, grpc


TRITON_TYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}


def infer(lib, client, model: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One request through `lib` (tritonclient.http or .grpc) -> every output of it as numpy."""
    inputs = []
    for name, a in feeds.items():
        i = lib.InferInput(name, list(a.shape), TRITON_TYPES[a.dtype])
        i.set_data_from_numpy(a)
        inputs.append(i)
    timeout = {"timeout": int(TIMEOUT_S * 1e6)} if lib.__name__.endswith("http") else {"client_timeout": TIMEOUT_S}
    r = client.infer(model, inputs, **timeout)
    names = [o["name"] for o in r.get_response(**({} if lib.__name__.endswith("http") else {"as_json": True}))
             ["outputs"]]
    return {n: r.as_numpy(n) for n in names}


def refused(lib, client, model: str, feeds: dict[str, np.ndarray]) -> str:
    """The error text the server answers `feeds` with (the test fails if it answers with outputs)."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as e:
        infer(lib, client, model, feeds)
    return str(e.value)


def runtime_error(call) -> str:
    """The InputError text the in-process runtime gives for the same bad input."""
    with pytest.raises(InputError) as e:
        call()
    return str(e.value)


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def good_requests(model, rng) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(role, feeds) for every role of the bundle: codes from the prior, images from the digits' range."""
    out = []
    for role, spec in model.manifest.roles.items():
        feeds = {}
        for t in spec.inputs:
            shape = (3, *t.shape[1:])
            if t.kind == "image":
                feeds[t.name] = rng.uniform(0, 1, shape).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        out.append((role, feeds))
    return out


def processes_alive(procs: dict[int, str], wait_s: float = 15.0) -> dict[int, str]:
    """Those of `procs` (pid -> command line) still running after up to `wait_s` seconds (orphans exit last)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = {}
        for p, cmd in procs.items():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
                now = Path(f"/proc/{p}/cmdline").read_text(errors="replace")
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z" and now == cmd:  # the same process, not a zombie
                alive[p] = cmd
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_serve_answers_like_the_runtime_refuses_bad_requests_and_stops_clean(family, exported, tmp_path):
    http, grpc = _clients()
    bundle = exported(family)
    model = load(bundle, device="cpu")
    # the server's own TMPDIR, short: PyTriton puts Unix sockets in it (their paths may not exceed 107 bytes)
    tmp = Path(tempfile.mkdtemp(prefix="bm-serve-"))
    env = {**os.environ, "TMPDIR": str(tmp)}
    rng = np.random.default_rng(0)
    with launched(bundle, "--max-batch", str(MAX_BATCH), log=tmp_path / "serve.log", env=env) as server:
        h = http.InferenceServerClient(server.http, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S,
                                       concurrency=CONCURRENT)
        g = grpc.InferenceServerClient(server.grpc)
        assert h.is_server_live() and h.is_server_ready() and g.is_server_ready()
        image_role = "decoder" if "decoder" in model.roles else "generator"
        for m in (*model.roles, "sample"):
            assert h.is_model_ready(m) and g.is_model_ready(m), m

        # every role, over HTTP and gRPC: the runtime's own answer for the same inputs
        for role, feeds in good_requests(model, rng):
            expected = model.run(role, feeds)
            same(infer(http, h, role, feeds), expected)
            same(infer(grpc, g, role, feeds), expected)
        seed = {"n": np.array([5], np.int64), "seed": np.array([11], np.int64)}
        drawn = {model.manifest.roles[image_role].outputs[0].name: model.sample(5, seed=11)}
        same(infer(http, h, "sample", seed), drawn)
        same(infer(grpc, g, "sample", seed), drawn)

        # concurrent batch-1 requests (Triton may batch them): each answer is the runtime's for its own codes
        z = rng.standard_normal((CONCURRENT, *model.manifest.roles[image_role].inputs[0].shape[1:]))
        z = z.astype(np.float32)
        name = model.manifest.roles[image_role].inputs[0].name
        pending = []
        for i in range(CONCURRENT):
            inp = http.InferInput(name, [1, *z.shape[1:]], "FP32")
            inp.set_data_from_numpy(z[i : i + 1])
            pending.append(h.async_infer(image_role, [inp], timeout=int(TIMEOUT_S * 1e6)))
        out_name = model.manifest.roles[image_role].outputs[0].name
        got = np.concatenate([p.get_result(timeout=TIMEOUT_S).as_numpy(out_name) for p in pending])
        np.testing.assert_array_equal(got, model.run(image_role, {name: z})[out_name])

        # bad requests: an error response each (the runtime's message where the runtime checks it), then service
        latent_shape = model.manifest.roles[image_role].inputs[0].shape[1:]
        wrong = {name: np.zeros((2, latent_shape[0] + 1, *latent_shape[1:]), np.float32)}
        nan = {name: np.full((2, *latent_shape), np.nan, np.float32)}
        image_in = "encoder" if "encoder" in model.roles else "discriminator"
        x_name = model.manifest.roles[image_in].inputs[0].name
        bright = {x_name: np.full((2, *model.data_shape), 3.0, np.float32)}
        for lib, client in ((http, h), (grpc, g)):
            assert runtime_error(lambda: model.run(image_role, wrong)) in refused(lib, client, image_role, wrong)
            assert runtime_error(lambda: model.run(image_role, nan)) in refused(lib, client, image_role, nan)
            assert runtime_error(lambda: model.run(image_in, bright)) in refused(lib, client, image_in, bright)
            assert runtime_error(lambda: model.sample(-1, seed=0)) in refused(
                lib, client, "sample", {"n": np.array([-1], np.int64), "seed": np.array([0], np.int64)})
            text = refused(lib, client, image_role, {name: np.zeros((2, *latent_shape), np.float64)})
            assert "FP64" in text and "FP32" in text  # Triton's own check: the dtype the model expects
            assert "unknown" in refused(lib, client, "no_such_model", nan).lower()
            assert "q" in refused(lib, client, image_role, {"q": nan[name]})
            big = {name: np.zeros((MAX_BATCH + 1, *latent_shape), np.float32)}
            assert f"<= {MAX_BATCH}" in refused(lib, client, image_role, big)
            feeds = good_requests(model, rng)[0]
            same(infer(lib, client, *feeds), model.run(*feeds))  # still serving
        assert h.is_server_ready()

        with urllib.request.urlopen(f"http://{server.metrics}/metrics", timeout=TIMEOUT_S) as r:
            metrics = r.read().decode()
        assert f'nv_inference_request_success{{model="{image_role}",version="1"}}' in metrics
        children = {p: Path(f"/proc/{p}/cmdline").read_text(errors="replace") for p in server.descendants()}
        assert any("tritonserver" in cmd for cmd in children.values()), children
        h.close()
        g.close()
        code = server.stop()
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "stopped: Triton and its workspace are gone" in log
    assert processes_alive(children) == {}, log[-3000:]
    # no workspace, no sockets left behind; .ses is onnxruntime's session-id file, which every onnxruntime
    # process writes to $TMPDIR and keeps (bigmodel.runtime in any process leaves the same one)
    assert sorted(p.name for p in tmp.iterdir() if p.name != ".ses") == []
    shutil.rmtree(tmp)
    assert [s for s in os.listdir("/dev/shm") if s.startswith(f"pytrtion{server.proc.pid}-")] == []


def test_the_libdir_fix_follows_what_the_loader_links():
    """The fix is asked for exactly when the loader gives PyTriton's stub another libpython than ours."""
    _clients()
    stub, own = stub_path(), interpreter_libpython()
    if stub is None or own is None:
        assert libdir_fix() is None
        return
    linked = stub_libpython(stub)
    assert (libdir_fix() is None) == (linked == own.resolve())
    # with our LIBDIR first on the loader's path, the stub links this interpreter's libpython
    env = {**os.environ, "LD_LIBRARY_PATH": str(own.parent)}
    assert stub_libpython(stub, env) == own.resolve()


def test_split_outputs_hands_each_request_its_rows():
    outs = {"x": np.arange(12).reshape(6, 2), "y": np.arange(6)}
    parts = split_outputs(outs, [1, 3, 2])
    assert [p["y"].tolist() for p in parts] == [[0], [1, 2, 3], [4, 5]]
    assert parts[2]["x"].tolist() == [[8, 9], [10, 11]]


@pytest.mark.parametrize(("options", "words"), [
    (ServeOptions(http_port=0), "--http-port must be a port number"),
    (ServeOptions(http_port=9000, grpc_port=9000), "must differ"),
    (ServeOptions(max_batch=0), "--max-batch must be >= 1"),
    (ServeOptions(queue_delay_us=-1), "--queue-delay-us must be >= 0"),
])
def test_bad_options_are_refused_before_anything_starts(options, words):
    with pytest.raises(BigmodelError, match=words):
        check_options(options)


def test_cli_refuses_a_bad_port_with_exit_2(exported):
    code, text = run_cli("serve", exported("vae"), "--http-port", "70000")
    assert code == 2 and "--http-port must be a port number 1..65535; got 70000" in text


def test_doctor_says_whether_serve_can_run_and_whether_the_libdir_fix_applies():
    from bigmodel.doctor import gather

    item = next(p for p in gather()["packages"] if p["name"] == "nvidia-pytriton")
    try:
        import pytriton  # noqa: F401
    except ImportError:
        assert not item["found"] and "bigmodel[serve]" in item["detail"]
        return
    assert item["found"]
    assert ("LIBDIR fix applies" in item["detail"]) == (libdir_fix() is not None)
