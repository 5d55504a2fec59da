"""bench's torch-side peers: torch.compile (default and max-autotune-no-cudagraphs) and AOTInductor beside eager,
with their builds in the cold columns, the ratio to the best torch-side form, and one table at 80 columns."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pytest

from bigmodel.bench import BenchSettings, run_bench
from bigmodel.bench.adapters import COMPILED_BACKENDS, inductor_cache, inductor_unavailable
from bigmodel.bench.stats import add_speedups

PEERS = ("torch", "torch-compile", "torch-compile-max", "aoti", "ort-cpu")


def _inductor_reason() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    return inductor_unavailable("torch-compile", "cpu")


@pytest.fixture(scope="module")
def peers_report(exported) -> dict:
    """One bench of eager, both torch.compile modes, aoti and ort-cpu: the decoder at batch 2 (each Inductor form
    builds once; on 2 cores that is most of this module's time)."""
    reason = _inductor_reason()
    if reason:
        pytest.skip(reason)
    settings = BenchSettings(backends=PEERS, roles=("decoder",), batch_sizes=(2,), warmup=1, iters=6, rounds=2,
                             threads=1)
    return run_bench(exported("vae"), settings)


def test_torch_side_forms_in_one_bench(peers_report):
    """One test over the shared bench (several would each build it on another xdist worker): a row per
    backend, each Inductor form's build before its first run, `vs torch` on eager, `vs best` on the fastest
    torch-side form, and one table that fits 80 columns."""
    from rich.console import Console

    from bigmodel import tables

    report = peers_report
    assert report["skipped"] == []
    rows = {r["backend"]: r for r in report["results"]}
    assert list(rows) == list(PEERS)  # one row per backend
    for name in COMPILED_BACKENDS:
        cold = rows[name]["cold"]
        assert 0 < cold["build_s"] <= cold["prepare_s"], (name, cold)  # built right before the first run
    assert rows["torch"]["cold"]["build_s"] is None and rows["ort-cpu"]["cold"]["build_s"] is None
    used = report["backend_settings"]
    assert used["torch-compile"]["mode"] == "default" and used["torch-compile-max"]["freezing"] is True
    assert used["torch-compile-max"]["mode"] == "max-autotune-no-cudagraphs" and used["aoti"]["dynamic_batch"]
    assert "TORCHINDUCTOR_CACHE_DIR" in report["settings"]["build"]

    p50 = {name: r["warm"]["p50"] for name, r in rows.items()}
    best = min(("torch", *COMPILED_BACKENDS), key=p50.get)
    for name, r in rows.items():
        assert r["speedup_vs_torch"] in (None, pytest.approx(p50["torch"] / p50[name]))  # None: withheld (busy)
        assert r["best_torch"] == best
        assert r["speedup_vs_best_torch"] == pytest.approx(p50[best] / p50[name])
    assert rows[best]["speedup_vs_best_torch"] == 1.0

    out = io.StringIO()
    tables.bench_table(Console(file=out, width=80, highlight=False), report)
    lines = out.getvalue().splitlines()
    assert max(map(len, lines)) <= 80, [line for line in lines if len(line) > 80]
    body = [line.split()[0] for line in lines if line.split() and line.split()[0] in PEERS and "decoder" in line]
    assert body == list(PEERS)  # one table, a row per backend
    text = " ".join(out.getvalue().split())
    assert "first ms" in text and "torch-compile* includes compiling" in text
    wide = io.StringIO()
    tables.bench_table(Console(file=wide, width=200, highlight=False), report)
    assert "vs best" in wide.getvalue() and "the fastest torch-side form's p50" in wide.getvalue()


def test_best_torch_column_is_left_out_with_one_torch_side_form():
    from rich.console import Console

    from bigmodel import tables

    def res(backend, p50):
        return {"backend": backend, "role": "decoder", "batch": 1, "warm": {"p50": p50, "p90": p50, "p99": p50,
                                                                            "cv": 0.0},
                "cold": {"load_s": 0.1, "prepare_s": 0.0, "first_run_s": 0.01}, "throughput": 1 / p50,
                "noisy": False}

    results = [res("torch", 0.004), res("ort-cpu", 0.001)]
    add_speedups(results)
    assert [r["speedup_vs_best_torch"] for r in results] == [1.0, 4.0]
    report = {"settings": {"family": "vae", "arch": "mlp", "precision": "fp32", "device": "cpu", "threads": 1},
              "machine": {"cpu": "cpu"}, "results": results, "skipped": []}
    out = io.StringIO()
    tables.bench_table(Console(file=out, width=200, highlight=False), report)
    assert "vs torch" in out.getvalue() and "vs best" not in out.getvalue()


def test_inductor_cache_is_fresh_and_removed(tmp_path):
    pytest.importorskip("torch")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with inductor_cache() as folder:
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == folder and Path(folder).is_dir()
        assert Path(folder).parent == Path(tempfile.gettempdir()) and not any(Path(folder).iterdir())
        import torch._inductor.config as config

        assert config.fx_graph_cache is False and config.aot_inductor.precompile_headers is False
    assert not Path(folder).exists() and os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before
    with inductor_cache(False) as nothing:
        assert nothing is None


def test_without_a_cpp_compiler_the_inductor_forms_say_what_to_install():
    pytest.importorskip("torch")
    import torch._inductor.config as config

    with config.patch({"cpp.cxx": ("bigmodel-no-such-c++",)}):
        reason = inductor_unavailable("torch-compile", "cpu")
    assert "no C++ compiler" in reason and "apt-get install g++" in reason
