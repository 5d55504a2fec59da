"""bench: the statistics, the report's shape, speed-ups, skipped backends, --device cuda without a GPU, --plot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli as cli

from bigmodel.bench import BenchSettings, parse_list, run_bench
from bigmodel.bench.adapters import role_inputs
from bigmodel.bench.report import table_rows
from bigmodel.bench.stats import add_speedups, percentile, summarize
from bigmodel.errors import BackendUnavailable, InputError
from bigmodel.manifest import read_manifest
from bigmodel.progress import Progress

STAT_KEYS = {"p50", "p90", "p99", "mean", "min", "max", "cv"}


@pytest.fixture(scope="module")
def bundle(exported) -> Path:
    """conftest's shared VAE bundle, its checkpoint beside it (the torch baseline's default place)."""
    return exported("vae")


@pytest.fixture(scope="module")
def bench_run(bundle) -> tuple[dict, list[Progress]]:
    """One small bench of torch and ort-cpu, every role at batch 1 and 3, and the progress events it reported."""
    events: list[Progress] = []
    settings = BenchSettings(backends=("torch", "ort-cpu"), batch_sizes=(1, 3), warmup=1, iters=5, threads=1)
    return run_bench(bundle, settings, progress=events.append), events


@pytest.fixture(scope="module")
def report(bench_run) -> dict:
    return bench_run[0]


def test_progress_counts_every_cell(bench_run, bundle):
    events = bench_run[1]
    assert {p.stage for p in events} == {"bench"}
    roles = list(read_manifest(bundle).roles)
    cells = [(r, b, n) for r in roles for b in (1, 3) for n in ("torch", "ort-cpu")]
    # each backend is announced as it starts on a (role, batch), then both alternate; done counts whole cells
    started = [(p.done, p.message) for p in events if p.message.startswith(("torch ", "ort-cpu "))]
    assert started == [(i - i % 2, f"{n} {r} batch {b}") for i, (r, b, n) in enumerate(cells)]
    rounds = [(p.done, p.message) for p in events if "alternating rounds" in p.message]
    assert rounds == [(2 * i, f"{r} batch {b}: torch, ort-cpu in 10 alternating rounds")
                      for i, (r, b) in enumerate((r, b) for r in roles for b in (1, 3))]
    assert all(p.total == len(cells) for p in events)
    assert [p.done for p in events] == sorted(p.done for p in events)
    assert (events[-1].done, events[-1].message) == (len(cells), "done")




# ------------------------------------------------------------------------------------------ statistics
def test_summarize_on_known_lists():
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert s["p50"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["mean"] == 2.5 and s["n"] == 4
    assert s["p90"] == pytest.approx(3.7) and s["p99"] == pytest.approx(3.97)
    assert s["cv"] == pytest.approx((1.25**0.5) / 2.5)  # population std / mean
    one = summarize([0.5])
    assert one["p50"] == one["p99"] == one["min"] == one["max"] == 0.5 and one["cv"] == 0.0
    hundred = summarize([float(i) for i in range(1, 101)])
    assert hundred["p50"] == 50.5 and hundred["p90"] == pytest.approx(90.1) and hundred["p99"] == pytest.approx(99.01)
    assert set(s) == STAT_KEYS | {"n"}


def test_percentile_matches_numpy_and_refuses_empty():
    import numpy as np

    values = sorted(np.random.default_rng(0).random(37).tolist())
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(InputError):
        summarize([])


def test_speedups_are_torch_p50_over_backend_p50_per_role_and_batch():
    def res(backend, role, batch, p50):
        return {"backend": backend, "role": role, "batch": batch, "warm": {"p50": p50}}

    results = [res("torch", "decoder", 1, 0.004), res("ort-cpu", "decoder", 1, 0.001),
               res("torch", "decoder", 8, 0.010), res("ort-cpu", "decoder", 8, 0.004),
               res("ort-cpu", "encoder", 1, 0.002)]
    add_speedups(results)
    assert [r["speedup_vs_torch"] for r in results] == [1.0, 4.0, 1.0, 2.5, None]


def test_alternate_takes_turns_in_rounds_and_splits_the_runs():
    from bigmodel.bench.timing import alternate

    calls: list[str] = []
    sides = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = alternate(sides, rounds=4, runs=10, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {"a": 10, "b": 10, "c": 10}
    assert all(t >= 0 for v in times.values() for t in v)
    timed = calls[3 * 2:]  # after each side's 2 warm-up calls
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    # 4 rounds; in each every side runs its share (3, 3, 2, 2) in one block, the order reshuffled per round
    blocks, i = [], 0
    for share in (3, 3, 2, 2):
        order = [timed[i + j * share] for j in range(3)]
        assert sorted(order) == ["a", "b", "c"]
        assert timed[i:i + 3 * share] == [k for k in order for _ in range(share)]
        blocks.append(order)
        i += 3 * share
    assert i == len(timed) and len({tuple(b) for b in blocks}) > 1  # not the same order every round


def test_alternate_by_time_runs_at_least_min_runs_and_drops_a_failing_side():
    from bigmodel.bench.timing import alternate

    count = {"bad": 0}

    def bad():
        count["bad"] += 1
        if count["bad"] > 6:
            raise MemoryError("out of memory at call 7")

    failed: dict = {}
    times = alternate({"ok": lambda: None, "bad": bad}, rounds=3, seconds=0.002, min_runs=9, failed=failed)
    assert len(times["ok"]) >= 9 and set(failed) == {"bad"} and "call 7" in str(failed["bad"])
    assert len(times["bad"]) < 9
    with pytest.raises(MemoryError):
        count["bad"] = 0
        alternate({"bad": bad}, rounds=3, runs=9)
    with pytest.raises(ValueError):
        alternate({"ok": lambda: None}, rounds=0, runs=3)


def test_parse_list():
    assert parse_list("1, 16,256", int) == (1, 16, 256)
    assert parse_list(None) is None and parse_list("  ") is None
    with pytest.raises(InputError, match="--batch-sizes"):
        parse_list("1,x", int, "--batch-sizes")


def test_role_inputs_follow_the_manifest(bundle):
    manifest = read_manifest(bundle)
    z = role_inputs(manifest, "decoder", 4, seed=0)["z"]
    x = role_inputs(manifest, "encoder", 3, seed=0)["x"]
    assert z.shape == (4, manifest.latent.dim) and z.dtype.name == "float32" and z.std() > 0.3
    assert x.shape == (3, 1, 28, 28) and 0.0 <= x.min() and x.max() < 1.0
    again = role_inputs(manifest, "decoder", 4, seed=0)["z"]
    assert (again == z).all()


# ------------------------------------------------------------------------------------------ the harness
def test_report_shape_and_speedups(report):
    assert set(report) == {"machine", "settings", "backend_settings", "results", "skipped", "roofline",
                           "int8_flops_share"}
    assert report["backend_settings"]["ort-cpu"]["tf32"] is False and report["settings"]["tf32"] is False
    assert report["settings"]["threads"] == 1 and report["settings"]["batch_sizes"] == [1, 3]
    assert report["settings"]["rounds"] == 10 and "rounds" in report["settings"]["timing"]
    assert report["machine"]["physical_cores"] >= 1 and report["machine"]["onnxruntime"]
    cells = {(r["backend"], r["role"], r["batch"]) for r in report["results"]}
    assert cells == {(b, r, n) for b in ("torch", "ort-cpu") for r in ("encoder", "decoder") for n in (1, 3)}
    p50 = {(r["backend"], r["role"], r["batch"]): r["warm"]["p50"] for r in report["results"]}
    rounds = {(r["backend"], r["role"], r["batch"]): r["round_p50"] for r in report["results"]}
    for r in report["results"]:
        assert {"backend", "role", "batch", "cold", "warm", "throughput", "speedup_vs_torch"} <= set(r)
        assert set(r["cold"]) == {"load_s", "prepare_s", "first_run_s", "build_s"} and r["cold"]["load_s"] > 0
        assert r["cold"]["build_s"] is None  # eager torch and onnxruntime build nothing with Inductor
        assert STAT_KEYS <= set(r["warm"]) and r["warm"]["n"] == 5
        w = r["warm"]
        assert 0 < w["min"] <= w["p50"] <= w["p90"] <= w["p99"] <= w["max"]
        assert r["throughput"] == pytest.approx(r["batch"] / w["p50"])
        if r["backend"] == "torch":
            assert r["speedup_vs_torch"] == 1.0
        else:
            want = p50[("torch", r["role"], r["batch"])] / w["p50"]
            assert r["speedup_vs_torch"] == pytest.approx(want, rel=1e-12)
        # 5 runs over 10 rounds: one run in each of the first five, the median of each round is that run
        assert len(r["round_p50"]) == 10 and r["round_p50"][5:] == [None] * 5
        assert sorted(r["round_p50"][:5])[2] == pytest.approx(w["p50"], rel=1e-12)  # the same five runs
        base = rounds[("torch", r["role"], r["batch"])][:5]
        paired = sorted(t / mine for t, mine in zip(base, r["round_p50"][:5], strict=True))
        assert r["speedup_paired_vs_torch"] == pytest.approx(paired[2], rel=1e-12)
        roof = r["roofline"]  # the same work per (role, batch) whichever backend did it, as % of one ceiling
        flops = report["roofline"]["costs"][r["role"]]["flops_per_sample"] * r["batch"]
        assert roof["gflops"] == pytest.approx(flops / w["p50"] / 1e9)
        assert roof["gflops_pct"] == pytest.approx(100 * roof["gflops"] / roof["gemm_ceiling_gflops"])
    assert report["roofline"]["memcpy_gbs"] > 0
    assert report["skipped"] == []
    json.dumps(report)  # plain data
    rows = table_rows(report)
    assert len(rows) == 8 and rows[0].cells[10] == rows[0].cells[11] == "1.00x" and "%)" in rows[0].cells[12]


def test_unavailable_backend_is_listed_as_skipped_with_the_reason(bundle):
    # roofline=False here and below: its ceilings take ~1 s of timing a run, and the report test checks them
    settings = BenchSettings(backends=("ort-cpu", "ort-cuda", "torch-cudagraph"), roles=("decoder",),
                             batch_sizes=(2,), warmup=0, iters=2, threads=1, roofline=False)
    report = run_bench(bundle, settings)
    skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"ort-cuda", "torch-cudagraph"}
    assert "--device cuda" in skipped["ort-cuda"] and "cuda" in skipped["torch-cudagraph"].lower()
    assert [(r["backend"], r["speedup_vs_torch"]) for r in report["results"]] == [("ort-cpu", None)]


def test_torch_baseline_without_its_checkpoint_is_skipped(bundle, tmp_path):
    lonely = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    report = run_bench(lonely, BenchSettings(backends=("torch", "ort-cpu"), roles=("decoder",), batch_sizes=(1,),
                                             warmup=0, iters=1, threads=1, roofline=False))
    assert [s["backend"] for s in report["skipped"]] == ["torch"]
    assert "checkpoint" in report["skipped"][0]["reason"]
    assert [r["backend"] for r in report["results"]] == ["ort-cpu"]


def test_bad_settings_are_input_errors(bundle):
    for bad in (BenchSettings(backends=("nope",)), BenchSettings(roles=("generator",)),
                BenchSettings(batch_sizes=(0,)), BenchSettings(iters=3, duration=1.0), BenchSettings(device="tpu"),
                BenchSettings(rounds=0)):
        with pytest.raises(InputError):
            run_bench(bundle, bad)


def test_device_cuda_without_a_gpu_says_what_was_looked_for(bundle):
    from bigmodel.bench.adapters import gpu_presence, has_gpu

    if has_gpu(gpu_presence()):
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailable) as e:
        run_bench(bundle, BenchSettings(device="cuda"))
    for looked in ("torch.cuda", "onnxruntime providers", "TensorRT"):
        assert looked in str(e.value)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_bench_writes_json_and_a_png(bundle, tmp_path):
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code, text = cli("bench", str(bundle), "--backends", "torch,ort-cpu,ort-trt", "--roles", "decoder",
                     "--batch-sizes", "1,3", "--warmup", "1", "--iters", "4", "--threads", "1",
                     "--json", str(out_json), "--plot", str(out_png))
    assert code == 0, text
    assert "p50 ms" in text and "vs torch" in text and "1.00x" in text
    assert "skipped ort-trt" in text
    report = json.loads(out_json.read_text())
    assert {(r["backend"], r["batch"]) for r in report["results"]} == {(b, n) for b in ("torch", "ort-cpu")
                                                                       for n in (1, 3)}
    assert report["skipped"][0]["backend"] == "ort-trt"
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    from PIL import Image

    with Image.open(out_png) as img:
        assert img.width >= 800 and img.height >= 300


def test_cli_bench_device_cuda_without_gpu_exits_2(bundle):
    from bigmodel.bench.adapters import gpu_presence, has_gpu

    if has_gpu(gpu_presence()):
        pytest.skip("this machine has a GPU")
    code, text = cli("bench", str(bundle), "--device", "cuda")
    assert code == 2
    assert "torch.cuda" in text and "onnxruntime providers" in text and "TensorRT" in text


def test_cli_bench_bad_batch_sizes_exit_2(bundle):
    code, text = cli("bench", str(bundle), "--batch-sizes", "1,two")
    assert code == 2 and "--batch-sizes" in text


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU visible to torch (torch.cuda.is_available() is False)")
def test_bench_cuda_every_backend_present(bundle):
    """On a GPU machine: torch and torch-cudagraph on CUDA, copies in and out, plus what the runtime has."""
    for copies in (True, False):
        report = run_bench(bundle, BenchSettings(device="cuda", batch_sizes=(1, 64), warmup=2, iters=10,
                                                 copies=copies))
        names = {r["backend"] for r in report["results"]}
        assert {"torch", "torch-cudagraph"} <= names
        assert all(r["copies"] is copies for r in report["results"] if r["backend"].startswith("torch"))
        assert report["machine"]["gpu"]["name"]
        # the % columns are of the GPU's own ceilings: cuBLAS GEMMs and a copy in GPU memory (> 100 GB/s on any
        # GPU torch supports; a host memcpy, which these would be by mistake, stays far below that)
        roof = report["roofline"]
        assert roof["device"] == "cuda:0" and "cuBLAS" in roof["blas"] and roof["memcpy_gbs"] > 100
        assert all(v > 0 for per_batch in roof["gemm_gflops"].values() for v in per_batch.values())
        assert all(r["roofline"]["gflops_pct"] > 0 for r in report["results"])
