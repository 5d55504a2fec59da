"""`bigmodel tune` and `load(..., backend="auto")` with a tuning table: per-batch dispatch, staleness.

No timed assertions: tables whose figures should steer dispatch are written by hand (as a table
measured on another machine would be), and a real `tune` run is checked for its structure only.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from conftest import run_cli as cli

from bigmodel.runtime import load
from bigmodel.runtime.tuning import DispatchBackend, chooser, make_table, read_table, table_path, write_table

OV = "openvino is not installed (pip install 'bigmodel[openvino]')"


@pytest.fixture
def bundle(exported, tmp_path):
    """A copy of conftest's shared VAE bundle (without the checkpoint beside it): tune writes its table into it."""
    return shutil.copytree(exported("vae"), tmp_path / "bundle")


def _table(bundle, threads=1, small="ort-cpu", large="ov-cpu"):
    """A table in which `small` wins at batch 1 and 4, `large` at 64 and 256, for every role."""
    from bigmodel.manifest import read_manifest

    manifest = read_manifest(bundle)
    cell = {1: (small, large), 4: (small, large), 64: (large, small), 256: (large, small)}
    latency = {role: {b: {fast: 1e-4 * b, slow: 2e-4 * b} for b, (fast, slow) in cell.items()}
               for role in manifest.roles}
    return make_table(manifest, threads, latency)


def test_chooser_takes_the_nearest_measured_batch_on_a_log_scale():
    choose = chooser([(1, "a"), (16, "b"), (1024, "c")])
    assert [choose(n) for n in (1, 3, 4, 5, 16, 100, 128, 129, 5000)] == \
        ["a", "a", "a", "b", "b", "b", "b", "c", "c"]  # edges at sqrt(16)=4 and sqrt(16*1024)=128
    assert chooser([(8, "x")])(1000) == "x"


def test_auto_dispatches_each_call_to_the_fastest_backend_for_its_batch(bundle):
    pytest.importorskip("openvino", reason=OV)
    write_table(bundle, _table(bundle))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table that applies raises no warning
        model = load(bundle, threads=1)
    assert isinstance(model.backend, DispatchBackend)
    assert model.backend_name == "auto(ort-cpu,ov-cpu)"
    assert model.backend.pick("decoder", 2).name == "ort-cpu"
    assert model.backend.pick("decoder", 300).name == "ov-cpu"
    ov_decoder = model.backend.backends["ov-cpu"]._roles["decoder"]
    reference = load(bundle, backend="ort-cpu", threads=1)
    z = np.random.default_rng(0).standard_normal((2, model.latent_dim), dtype=np.float32)
    np.testing.assert_allclose(model.decode(z), reference.decode(z), atol=1e-6)
    assert getattr(ov_decoder.local, "requests", None) is None  # batch 2 never reached OpenVINO
    zz = np.random.default_rng(1).standard_normal((300, model.latent_dim), dtype=np.float32)
    np.testing.assert_allclose(model.decode(zz), reference.decode(zz), atol=1e-5)
    assert ov_decoder.local.requests  # batch 300 ran there
    mu, logvar = model.encode(model.decode(z), full=True)  # the other role and a multi-output call
    assert mu.shape == logvar.shape == (2, model.latent_dim)


def test_auto_takes_the_staged_path_of_the_backend_it_picks(bundle):
    """With a table, auto's fast path for small code batches is ort-cpu's staged run; a batch that goes to a
    backend without one (OpenVINO) answers None, and the Model's general path dispatches it."""
    pytest.importorskip("openvino", reason=OV)
    write_table(bundle, _table(bundle))
    model = load(bundle, threads=1)
    staged = model.backend.staged_runner("decoder")
    reference = load(bundle, backend="ort-cpu", threads=1)
    z = np.random.default_rng(2).standard_normal((2, model.latent_dim), dtype=np.float32)
    want = reference.backend.sessions["decoder"].run(None, {"z": z})
    for got, w in zip(staged(z), want, strict=True):
        np.testing.assert_array_equal(got, w)
    zz = np.random.default_rng(3).standard_normal((300, model.latent_dim), dtype=np.float32)
    assert staged(zz) is None
    np.testing.assert_allclose(model.run("decoder", {"z": zz})["x"], reference.decode(zz), atol=1e-5)


def test_a_table_with_one_winner_loads_that_backend_alone(bundle):
    write_table(bundle, _table(bundle, small="ort-cpu", large="ort-cpu"))
    model = load(bundle, threads=1)
    assert model.backend_name == "ort-cpu" and not isinstance(model.backend, DispatchBackend)


@pytest.mark.parametrize("change, says", [
    (lambda t: t["machine"].update(cpu="Some Other CPU 9000"), "measured on CPU 'Some Other CPU 9000'"),
    (lambda t: t["machine"].update(threads=7), "measured with 7 threads"),
    (lambda t: t["machine"]["versions"].update(onnxruntime="0.1"), "measured with onnxruntime 0.1"),
    (lambda t: t["graphs"].update(decoder="0" * 64), "another decoder graph"),
])
def test_a_stale_table_is_ignored_with_a_warning(bundle, change, says):
    table = _table(bundle, small="ort-cpu", large="ort-cpu")
    change(table)
    write_table(bundle, table)
    with pytest.warns(RuntimeWarning, match="stale tuning table") as record:
        model = load(bundle, threads=1)
    assert says in str(record[0].message)
    assert model.backend_name == "ort-cpu"  # auto's usual rule


def test_a_table_measured_with_other_threads_is_stale_for_this_load_only(bundle):
    write_table(bundle, _table(bundle, threads=2, small="ort-cpu", large="ort-cpu"))
    with pytest.warns(RuntimeWarning, match="measured with 2 threads, this load uses 1"):
        load(bundle, threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load(bundle, threads=2).backend_name == "ort-cpu"


def test_an_unreadable_table_is_ignored_with_a_warning(bundle):
    table_path(bundle).write_text("{not json")
    with pytest.warns(RuntimeWarning, match="not a tuning table"):
        assert load(bundle, threads=1).backend_name == "ort-cpu"


def test_tune_measures_every_backend_per_role_and_batch_and_info_shows_it(bundle):
    from bigmodel.runtime.backends import registry

    code, text = cli("tune", str(bundle), "--batch-sizes", "1,3", "--threads", "1", "--seconds", "0.03")
    assert code == 0, text
    table = read_table(bundle)
    ran = [n for n in registry.names_for("cpu") if n not in table["skipped"]]
    assert table["backends"] == sorted(ran) and "ort-cpu" in ran
    assert set(table["roles"]) == {"encoder", "decoder"}
    for cells in table["roles"].values():
        assert set(cells) == {"1", "3"}
        for cell in cells.values():
            assert set(cell["p50_s"]) == set(ran) and all(v > 0 for v in cell["p50_s"].values())
            assert cell["p50_s"][cell["best"]] == min(cell["p50_s"].values())
    assert table["machine"]["threads"] == 1 and table["machine"]["cpu"]
    assert "fastest" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load(bundle, threads=1)  # the fresh table applies
    code, text = cli("info", str(bundle))
    assert code == 0 and "tuning table applies here" in text
    code, text = cli("info", str(bundle), "--json")
    assert json.loads(text)["tuning"]["stale"] is None
    # a second run never replaces the table silently: one-line refusal naming the file, before measuring
    before = table_path(bundle).read_bytes()
    code, text = cli("tune", str(bundle), "--batch-sizes", "2", "--threads", "1", "--seconds", "0.03")
    assert code == 2 and f"{table_path(bundle)} already exists" in text and "--force" in text, text
    assert table_path(bundle).read_bytes() == before
    code, text = cli("tune", str(bundle), "--batch-sizes", "2", "--threads", "1", "--seconds", "0.03", "--force")
    assert code == 0, text
    assert all(set(cells) == {"2"} for cells in read_table(bundle)["roles"].values())
