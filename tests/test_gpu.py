"""On an NVIDIA GPU: fp32 parity with TF32 off and no CPU fallback, the GPU index reaching the providers,
and our TensorRT runner against Polygraphy's TrtRunner on the same engine. Each test skips with the
reason where its GPU piece is missing; under BIGMODEL_REQUIRE_GPU=1 (gpu_check.sh) a skip fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigmodel.runtime import backend_status, load

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_bundle(exported):
    """`gpu_bundle(backend)`: skips unless `backend` can run here, else an fp32 VAE bundle exported here."""
    made = []

    def get(name: str):
        reason = backend_status((name,))[name]
        if reason is not None:
            pytest.skip(f"{name}: {reason}")
        if not made:
            made.append(exported("vae"))
        return made[0]

    return get


@pytest.mark.parametrize("name", ["ort-cuda", "ort-trt"])
def test_fp32_parity_on_the_gpu_with_tf32_off_and_no_cpu_fallback(gpu_bundle, name):
    from bigmodel.parity import run_parity

    report = run_parity(gpu_bundle(name), backends=name, samples=9, strict=True, device="cuda:0")
    assert report.tolerance_precision == "fp32" and report.passed, report.messages()[:5]
    (run,) = report.ran
    assert run.settings["tf32"] is False and run.settings["device_id"] == 0
    wanted = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}[name]
    assert run.settings["placement"] and all(wanted in p for p in run.settings["placement"].values())


def test_device_and_tf32_choice_reach_the_cuda_provider(gpu_bundle):
    bundle = gpu_bundle("ort-cuda")
    model = load(bundle, backend="ort-cuda", device="cuda:0")
    options = model.backend.sessions["decoder"].get_provider_options()["CUDAExecutionProvider"]
    assert options["device_id"] == "0" and options["use_tf32"] == "0"
    opted = load(bundle, backend="ort-cuda", device_id=0, tf32=True)
    assert opted.backend.sessions["decoder"].get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "1"


def test_our_tensorrt_runner_matches_polygraphy_on_the_same_engine(gpu_bundle, tmp_path, monkeypatch):
    """Same engine file, same inputs: our runner (pinned buffers, one stream) == Polygraphy's TrtRunner."""
    fp32 = gpu_bundle("tensorrt")
    from bigmodel.export import ExportOptions, export_bundle

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from trt_vs_polygraphy import compare

    bundle = export_bundle(fp32.parent / "checkpoint.pt",
                           ExportOptions(out=tmp_path / "engine-bundle", engine=True, max_batch=16, opt_batch=8)).bundle
    rows = compare(bundle, batch=5)
    assert {r for r, _, _ in rows} == {"encoder", "decoder"}
    assert all(diff <= 1e-6 for _, _, diff in rows), rows
