"""Several verified precisions in one bundle, `bigmodel tune` across them, and load(precision="fastest").

One export (`--precision fp32,int8[,bf16]`) of conftest's 1-epoch MLP VAE, shared by the module:
each form passes the same checks as a bundle of that precision alone; tune measures every
(backend, precision); "fastest" dispatches each call to the table's pick for the nearest batch,
and what it returns stays within the verified tolerances of the fp32 graphs.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as cli

from bigmodel.errors import BundleError, InputError
from bigmodel.manifest import read_manifest
from bigmodel.parity.stats import compare
from bigmodel.parity.tolerances import rule, tolerances_for
from bigmodel.runtime import load
from bigmodel.runtime.tuning import split_key


def _bf16_here() -> bool:
    try:
        from bigmodel.runtime.backends.openvino import bf16_reason

        return bf16_reason() is None
    except Exception:  # OpenVINO missing
        return False


FORMS = ("int8", "bf16") if _bf16_here() else ("int8",)


@pytest.fixture(scope="module")
def multi(trained_run, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("forms-run")
    shutil.copy(trained_run("vae", "mlp") / "checkpoint.pt", run / "checkpoint.pt")
    out = run / "bundle"
    code, text = cli("export", run, "--out", out, "--precision", ",".join(("fp32", *FORMS)), "--calibration", "64")
    assert code == 0, text
    flat = " ".join(text.split())
    for p in FORMS:
        assert f"{p} check against the fp32 graphs (bigmodel parity's checks and {p} tolerances): pass" in flat, text
    return out


def test_each_form_is_recorded_verified_and_loadable(multi):
    m = read_manifest(multi)
    assert m.precision == "fp32" and m.precisions == ("fp32", *FORMS)
    assert m.forms["int8"].roles["decoder"].file == "int8/decoder.onnx"
    assert m.forms["int8"].verification["passed"] is True
    assert m.forms["int8"].quality["encoder"]["int8_flops_share"]["ort-cpu"] == 1.0
    assert m.forms["int8"].quality["decoder"]["shallow_float"]  # its 20-input first layer, float by design
    z = np.random.default_rng(0).standard_normal((32, m.latent.dim)).astype(np.float32)
    with load(multi) as fp32, load(multi, precision="int8") as int8:
        a, b = fp32.decode(z), int8.decode(z)
        assert int8.manifest.precision == "int8" and not np.array_equal(a, b)  # the int8 graph really ran
        assert not compare(b, a, "image", rule(tolerances_for("int8"), "image", "prior"), (0.0, 1.0), "x").failures
    code, text = cli("info", multi)
    assert code == 0 and "int8 form: verified against the fp32 graphs on ort-cpu: pass" in " ".join(text.split())
    with pytest.raises(InputError, match="carries fp32, int8"):
        load(multi, precision="fp16")


@pytest.mark.parametrize("precision", FORMS)
def test_parity_checks_each_form_export_verified(multi, precision):
    """What export said of a form, `bigmodel parity --precision P` says too, against PyTorch."""
    code, text = cli("parity", multi, "--precision", precision)
    assert code == 0 and f"({precision} tolerances)" in text, text
    if precision == "bf16":
        assert "on ov-cpu" in text


def test_a_stale_table_gives_fastest_one_warning(multi, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(multi, bundle)
    code, text = cli("tune", bundle, "--batch-sizes", "1", "--seconds", "0.1", "--threads", "1")
    assert code == 0, text
    with warnings.catch_warnings(record=True) as caught:  # measured on 1 thread, loaded on 2
        warnings.simplefilter("always")
        load(bundle, precision="fastest", threads=2).close()
    said = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1 and "precision='fastest'" in said[0] and "threads" in said[0], said


def test_a_changed_form_file_is_refused_when_that_form_loads(multi, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(multi, bundle)
    with open(bundle / "int8" / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    load(bundle).close()  # the default form's files are intact
    with pytest.raises(BundleError, match="does not match the manifest"):
        load(bundle, precision="int8")


@pytest.mark.parametrize("given, expected", [("int8,fp32", "starts with fp32"), ("fp32,int8,int8", "at most once"),
                                             ("fp32,fp64", "at most once")])
def test_bad_precision_lists_are_refused_in_one_line(trained_run, tmp_path, given, expected):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run("vae", "mlp") / "checkpoint.pt", run / "checkpoint.pt")
    code, text = cli("export", run, "--precision", given)
    assert code == 2 and expected in text and given in text, text
    assert not (run / "bundle").exists()


def test_fastest_dispatches_per_batch_from_tune_and_stays_within_verified_tolerances(multi, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(multi, bundle)
    with warnings.catch_warnings(record=True) as caught:  # no table yet: the default, with one warning
        warnings.simplefilter("always")
        with load(bundle, precision="fastest") as m:
            assert m.backend_name == "ort-cpu"
    assert len([w for w in caught if "precision='fastest'" in str(w.message)]) == 1, [str(w.message) for w in caught]

    code, text = cli("tune", bundle, "--batch-sizes", "1,64", "--seconds", "0.2", "--json")
    assert code == 0, text
    table = json.loads((bundle / "tuning.json").read_text())
    cell = table["roles"]["decoder"]["1"]
    assert {"ort-cpu:fp32", "ort-cpu:int8"} <= set(cell["forms_p50_s"])
    if "bf16" in FORMS:
        assert "ov-cpu:bf16" in cell["forms_p50_s"] and "ort-cpu:bf16" not in cell["forms_p50_s"]
    assert cell["fastest"] == min(cell["forms_p50_s"], key=cell["forms_p50_s"].get)
    assert cell["best"] in cell["p50_s"]  # backend='auto' keeps choosing among the default precision

    m = read_manifest(bundle)
    with load(bundle, precision="fastest") as fast, load(bundle, backend="ort-cpu") as fp32:
        for batch in (1, 64):
            chosen = table["roles"]["decoder"][str(batch)]["fastest"]
            z = np.random.default_rng(batch).standard_normal((batch, m.latent.dim)).astype(np.float32)
            got, want = fast.decode(z), fp32.decode(z)
            precision = split_key(chosen)[1]
            tol = rule(tolerances_for(precision), "image", "prior")
            assert not compare(got, want, "image", tol, (0.0, 1.0), "x").failures, (batch, chosen)
        picks = {b: c["fastest"] for b, c in table["roles"]["decoder"].items()}
        # a dispatcher over the table's picks, even when one form won everywhere: its settings say what was chosen
        assert fast.backend.settings["chosen"]["decoder"] == picks
        assert fast.backend_name.startswith("fastest(") and split_key(picks["1"])[0] in fast.backend_name


def test_eval_scores_a_chosen_form_against_the_default(multi, tmp_path, monkeypatch):
    """`bigmodel eval B --compare B --compare-precision int8`: both sides of one bundle, the int8 side really
    run in int8 (its report says so), and the deltas between them printed."""
    import functools

    import bigmodel.eval
    from bigmodel.eval import EvalOptions
    from bigmodel.eval.features import ClassifierSettings

    monkeypatch.setattr(bigmodel.eval, "EvalOptions",
                        functools.partial(EvalOptions, classifier=ClassifierSettings(epochs=2, width=8)))
    out = tmp_path / "eval.json"
    code, text = cli("eval", multi, "--compare", multi, "--compare-precision", "int8", "--samples", "200",
                     "--k", "4", "--nll-images", "16", "--cache-dir", tmp_path / "cache", "--json", out)
    assert code == 0, text
    report = json.loads(out.read_text())
    assert report["report"]["model"]["precision"] == "fp32" and report["compare"]["model"]["precision"] == "int8"
    assert report["deltas"] and "(int8)" in text
    code, text = cli("eval", multi, "--precision", "fp16", "--cache-dir", tmp_path / "cache")
    assert code == 2 and "carries fp32, int8" in text, text


def test_bench_times_a_chosen_form_against_the_same_torch_baseline(multi, tmp_path):
    """`bigmodel bench B --precision int8`: the runtime backends run the int8 graphs (their rows say int8, the
    report carries the int8 share export read), torch stays the fp32 reference; an absent form is refused."""
    import json

    out = tmp_path / "bench.json"
    code, text = cli("bench", multi, "--precision", "int8", "--backends", "torch,ort-cpu", "--roles", "decoder",
                     "--batch-sizes", "4", "--iters", "5", "--warmup", "1", "--rounds", "1", "--no-roofline",
                     "--json", out)
    assert code == 0, text
    report = json.loads(out.read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert rows["ort-cpu"]["precision"] == "int8" and rows["torch"]["precision"] == "fp32"
    assert report["settings"]["precision"] == "int8"
    share = read_manifest(multi).forms["int8"].quality["decoder"]["int8_flops_share"]
    assert report["int8_flops_share"] == {"decoder": share}
    with load(multi, backend="ort-cpu", precision="int8") as m:
        assert m.manifest.precision == "int8"  # what bench's ort-cpu row ran
    code, text = cli("bench", multi, "--precision", "fp16", "--backends", "ort-cpu", "--iters", "1")
    assert code != 0 and "carries fp32, int8" in " ".join(text.split()), text
