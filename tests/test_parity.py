"""`bigmodel parity` and `bigmodel.parity`: the check passes correct bundles and fails broken ones.

Bundles are exported once per session from conftest's tiny trained runs, each into its own folder
with a copy of its checkpoint beside it (how `bigmodel train` + `bigmodel export` lay them out).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as cli

from bigmodel.models.registry import list_models
from bigmodel.parity import PRECISIONS, TOLERANCES, Tolerance, compare, run_parity, save_inputs, tolerances_for
from bigmodel.parity.tolerances import rule
from bigmodel.progress import Progress

KINDS = ("image", "latent", "stat", "logit", "image_logit")
FAST_ARCHS = ("mlp",)  # conv runs train and export far slower on CPU: they are marked slow


@pytest.fixture(scope="session")
def bundle_of(exported):
    """Factory: `bundle_of(family, arch, precision)` -> conftest's shared bundle, checkpoint.pt beside it."""
    return exported




def copy_bundle(bundle: Path, dest: Path) -> Path:
    """A copy of the bundle with its checkpoint beside it, to alter without touching the shared one."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle.parent / "checkpoint.pt", dest / "checkpoint.pt")
    return Path(shutil.copytree(bundle, dest / "bundle"))


# --------------------------------------------------------------------------------------- tolerances
def test_tolerance_table_covers_every_precision_and_kind_and_loosens_with_precision():
    assert PRECISIONS == ("fp32", "fp16", "int8")
    for precision in PRECISIONS:
        assert set(TOLERANCES[precision]) == set(KINDS)
        for tol in TOLERANCES[precision].values():
            assert isinstance(tol, Tolerance) and tol.atol > 0 and 0 < tol.min_cosine < 1
    for kind in KINDS:
        fp32, fp16, int8 = (TOLERANCES[p][kind] for p in PRECISIONS)
        assert fp32.atol < fp16.atol < int8.atol
        assert fp32.min_cosine > fp16.min_cosine > int8.min_cosine
    assert TOLERANCES["fp32"]["image"].atol == 1e-5  # the same bar as export's own fp32 check
    assert all(TOLERANCES[p]["image"].min_psnr for p in PRECISIONS)
    assert all(TOLERANCES[p]["logit"].min_sign_agreement for p in PRECISIONS)
    # only int8 (which clips outside its calibrated range) relaxes on ±4σ codes and noise images;
    # fp32 and fp16 hold them to the same rule: ±4σ is where fp16 overflows
    for precision in PRECISIONS:
        for kind, tol in TOLERANCES[precision].items():
            assert rule(TOLERANCES[precision], kind, "val") is tol
            assert rule(TOLERANCES[precision], kind, "prior") is tol
            stress = rule(TOLERANCES[precision], kind, "extreme")
            assert (stress is tol) == (precision != "int8")
            assert rule(TOLERANCES[precision], kind, "noise") is stress
            assert stress.atol >= tol.atol and stress.min_cosine <= tol.min_cosine
    over = tolerances_for("int8", atol=0.01, rtol=0.0)
    assert over["image"].atol == over["image"].stress.atol == 0.01 and over["logit"].stress.rtol == 0.0
    assert tolerances_for("fp16")["image"] == TOLERANCES["fp16"]["image"]


# --------------------------------------------------------------------------------------- statistics
def test_compare_names_the_worst_element_and_both_values():
    rng = np.random.default_rng(0)
    want = rng.random((3, 1, 4, 4)).astype(np.float32)
    got = want.copy()
    got[2, 0, 1, 3] += 0.25
    check = compare(got, want, "image", TOLERANCES["fp32"]["image"])
    assert not check.passed
    assert check.worst_index == (2, 0, 1, 3)
    assert check.worst_got == pytest.approx(float(got[2, 0, 1, 3]))
    assert check.worst_want == pytest.approx(float(want[2, 0, 1, 3]))
    assert check.stats["max_abs"] == pytest.approx(0.25, rel=1e-6)
    assert check.stats["mean_abs"] == pytest.approx(0.25 / want.size, rel=1e-5)
    assert check.stats["psnr"] == pytest.approx(10 * np.log10(16 / 0.25**2), rel=1e-6)  # worst sample's PSNR
    failed = {f.statistic for f in check.failures}
    assert {"abs_error", "psnr", "cosine"} <= failed
    text = next(f for f in check.failures if f.statistic == "abs_error").describe()
    assert "(2, 0, 1, 3)" in text and f"{got[2, 0, 1, 3]:.6g}" in text and f"{want[2, 0, 1, 3]:.6g}" in text

    same = compare(want, want, "image", TOLERANCES["fp32"]["image"])
    assert same.passed and same.stats["max_abs"] == 0 and same.stats["cosine"] == pytest.approx(1.0)
    assert same.stats["psnr"] == float("inf") and same.stats["uint8_changed"] == 0


def test_compare_relative_error_cosine_and_uint8_share():
    want = np.array([[1.0, -2.0, 0.0, 4.0]])
    got = want * (1 + 1e-6)
    check = compare(got, want, "latent", TOLERANCES["fp32"]["latent"])
    assert check.passed
    assert check.stats["max_rel"] == pytest.approx(1e-6, rel=1e-3)
    assert check.stats["cosine"] == pytest.approx(1.0)
    # a pixel that moves from 100/255 to 101/255 changes its uint8 value: 1 of 4
    img = np.full((1, 1, 2, 2), 100 / 255)
    moved = img.copy()
    moved[0, 0, 0, 0] = 101 / 255
    assert compare(moved, img, "image", TOLERANCES["int8"]["image"]).stats["uint8_changed"] == 0.25


def test_compare_logit_sign_agreement_and_nonfinite_outputs():
    tol = TOLERANCES["fp32"]["logit"]
    want = np.array([[3.0], [-2.0], [1e-7], [5.0]])
    got = np.array([[3.0], [2.0], [-1e-7], [5.0]])  # one real flip; the ~0 logit has no sign to keep
    check = compare(got, want, "logit", tol)
    assert check.stats["sign_agreement"] == 0.75
    flip = next(f for f in check.failures if f.statistic == "sign_agreement")
    assert flip.index == (1, 0) and flip.got == 2.0 and flip.want == -2.0

    # one-number outputs: cosine over the batch (per sample it would only be a sign); a lone logit
    # within atol of zero may flip its sign (cosine -1) and still pass
    assert check.stats["cosine"] == pytest.approx((9 - 4 + 25) / 38, rel=1e-6)
    tiny = compare(np.array([[-2e-6]]), np.array([[1e-6]]), "logit", tol)
    assert tiny.passed and tiny.stats["cosine"] == -1.0 and tiny.stats["sign_agreement"] == 1.0

    bad = compare(np.array([[np.nan], [1.0]]), np.array([[0.5], [1.0]]), "logit", tol)
    assert not bad.passed and bad.stats["nonfinite"] == 1
    assert bad.failures[0].statistic == "nonfinite" and bad.failures[0].index == (0, 0)

    shape = compare(np.zeros((2, 3)), np.zeros((2, 4)), "latent", tol)
    assert not shape.passed and "got (2, 3), want (2, 4)" in shape.failures[0].describe()


def test_reduced_precision_logits_are_compared_as_probabilities():
    tol = TOLERANCES["int8"]["logit"]
    assert tol.probability and tol.stress.probability and not TOLERANCES["fp32"]["logit"].probability
    # fp32 -44 against int8 -4.6 (a noise image): both say p(real) ~ 0 -- the same answer
    want = np.array([[-44.0], [-30.0], [3.0], [-2.0]])
    got = np.array([[-4.6], [-5.0], [3.05], [-2.02]])
    check = compare(got, want, "logit", tol)
    assert check.passed, [f.describe() for f in check.failures]
    assert check.stats["max_abs"] == pytest.approx(1 / (1 + np.exp(4.6)), rel=1e-6)  # in probability units
    # 0.3 against -0.7 near the boundary changes the answer (p 0.57 vs 0.33): a failure, named in probabilities
    flip = compare(np.array([[0.3], [3.0]]), np.array([[-0.7], [3.0]]), "logit", tol)
    assert not flip.passed and {f.statistic for f in flip.failures} >= {"abs_error", "sign_agreement"}
    assert "(as probability)" in flip.failures[0].describe()
    assert flip.used > 1 and check.used <= 1


def test_codes_are_held_to_relative_error_per_sample():
    tol = TOLERANCES["int8"]["latent"]
    want = np.array([[1.0, -2.0, 0.5, 2.0], [0.1, 0.1, -0.1, 0.1]])
    near = want * 1.05
    assert compare(near, want, "latent", tol).passed
    # the second code is small and comes back 30% longer: same direction (cosine 1), 0.03 per element
    # (inside atol), but 30% off as a code
    off = want * np.array([[1.0], [1.3]])
    check = compare(off, want, "latent", tol)
    assert check.stats["rel_norm"] == pytest.approx(0.3, rel=1e-4)
    assert [f.statistic for f in check.failures] == ["rel_norm"] and check.failures[0].index[0] == 1


# --------------------------------------------------------------------------------- real bundles
MODELS = [pytest.param(m.family, m.arch, id=f"{m.family}-{m.arch}",
                       marks=() if m.arch in FAST_ARCHS else pytest.mark.slow) for m in list_models()]


@pytest.mark.parametrize("family, arch", MODELS)
def test_exported_bundle_passes_for_every_model(bundle_of, family, arch):
    bundle = bundle_of(family, arch)
    events: list[Progress] = []
    report = run_parity(bundle, backends="all", samples=5, progress=events.append)
    assert report.passed, report.messages()
    assert {p.stage for p in events} == {"parity"}
    for run in report.ran:  # one event before each check, then done == total as the backend ends
        mine = [p for p in events if p.message.startswith(run.backend + " ")]
        n = len(run.cases)
        assert [(p.done, p.total) for p in mine] == [(i, n) for i in range(n)] + [(n, n)]
        assert mine[-1].message == f"{run.backend} done"
    assert [b.backend for b in report.ran][:1] == ["ort-cpu"]
    cases = report.ran[0].cases
    roles = set(json.loads((bundle / "manifest.json").read_text())["roles"])
    chains = {"ae": {"encoder->decoder"}, "vae": {"encoder->decoder"}, "gan": {"generator->discriminator"},
              "aae": {"encoder->decoder", "encoder->discriminator"}}[family]
    assert {c.target for c in cases} == roles | chains
    assert {c.batch for c in cases} == {1, 5}
    assert {"val", "noise", "prior", "extreme"} <= {c.probe for c in cases}
    skipped = [b for b in report.backends if b.status == "skipped"]
    assert all(b.reason for b in skipped)
    ran = {b.backend for b in report.ran}
    try:  # OpenVINO parity on every family wherever the package is installed (the test extra installs it)
        import openvino  # noqa: F401

        assert "ov-cpu" in ran, [b.reason for b in report.backends if b.backend == "ov-cpu"]
    except ImportError:
        assert "bigmodel[openvino]" in next(b.reason for b in skipped if b.backend == "ov-cpu")


def test_cli_passes_and_writes_the_whole_report(bundle_of, tmp_path):
    out = tmp_path / "parity.json"
    code, text = cli("parity", str(bundle_of("vae")), "--samples", "5", "--seed", "3", "--json", str(out))
    assert code == 0, text
    assert "parity passed" in text and "encoder->decoder" in text and "decoder" in text
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["failures"] == []
    assert report["seed"] == 3 and report["tolerance_precision"] == "fp32"
    assert report["tolerances"]["image"]["atol"] == 1e-5
    assert {"python", "numpy", "torch", "onnxruntime", "bigmodel"} <= set(report["versions"])
    assert all(i["seed"] == 3 and len(i["sha256"]) == 64 for i in report["inputs"])
    ran = [b for b in report["backends"] if b["status"] == "ran"]
    output = ran[0]["cases"][0]["outputs"][0]
    assert {"max_abs", "mean_abs", "max_rel", "cosine"} <= set(output["stats"]) and output["passed"] is True
    for b in report["backends"]:
        assert b["status"] == "ran" or b["reason"], b  # skipped ones say why
        if b["status"] == "skipped":
            assert f"skipped {b['backend']}" in text


def test_a_changed_decoder_weight_fails_naming_the_decoder(bundle_of, tmp_path):
    import onnx
    from onnx import numpy_helper

    from bigmodel.fileio import sha256_file
    from bigmodel.manifest import read_manifest

    bundle = copy_bundle(bundle_of("vae"), tmp_path / "run")
    path = bundle / "decoder.onnx"
    graph = onnx.load(str(path))
    inits = {i.name: i for i in graph.graph.initializer}
    # the last bias the graph applies: +3 on one logit moves that pixel by up to 0.5 after sigmoid
    bias = [n for node in graph.graph.node for n in node.input
            if n in inits and len(inits[n].dims) == 1 and inits[n].data_type == onnx.TensorProto.FLOAT][-1]
    values = numpy_helper.to_array(inits[bias]).copy()
    values[len(values) // 2] += 3.0
    inits[bias].CopyFrom(numpy_helper.from_array(values, bias))
    onnx.save(graph, str(path))
    manifest = read_manifest(bundle)
    manifest.roles["decoder"] = dataclasses.replace(manifest.roles["decoder"], sha256=sha256_file(path))
    manifest.save(bundle)

    code, text = cli("parity", bundle, "--backend", "ort-cpu", "--samples", "5")
    assert code == 1, text
    assert "FAIL ort-cpu decoder output 'x'" in text and "parity failed" in text
    assert "worst element at index (" in text and "got " in text and "want " in text
    assert "FAIL ort-cpu encoder output" not in text  # the untouched encoder still passes


def test_usage_errors_exit_2(bundle_of, tmp_path):
    from bigmodel.runtime import backend_status

    bundle = bundle_of("vae")
    code, text = cli("parity", str(bundle), "--backend", "onnx-magic")
    assert code == 2 and "--backend must be one of" in text
    code, text = cli("parity", str(bundle), "--samples", "4")
    assert code == 2 and "odd" in text
    code, text = cli("parity", str(bundle), "--tolerances", "fp8")
    assert code == 2 and "--tolerances must be one of" in text
    wrong = tmp_path / "other.pt"
    wrong.write_bytes(b"not the checkpoint this bundle came from")
    code, text = cli("parity", str(bundle), "--checkpoint", str(wrong))
    assert code == 2 and "not the checkpoint this bundle was exported from" in text
    lone = tmp_path / "lone"
    shutil.copytree(bundle, lone)
    code, text = cli("parity", str(lone))
    assert code == 2 and "no checkpoint beside the bundle" in text
    missing = [name for name, reason in backend_status().items() if reason is not None]
    if missing:  # asking explicitly for a backend this machine lacks is an error, never a pass
        code, text = cli("parity", str(bundle), "--backend", missing[0])
        assert code == 2 and f"backend {missing[0]} cannot run here" in text


def test_fp16_bundle_passes_fp16_tolerances_and_fails_fp32_ones(bundle_of):
    pytest.importorskip("bigmodel.export.precision", reason="fp16 export (bigmodel/export/precision.py) not built")
    bundle = bundle_of("vae", precision="fp16")
    assert json.loads((bundle / "manifest.json").read_text())["precision"] == "fp16"
    code, text = cli("parity", str(bundle), "--backend", "ort-cpu", "--samples", "5")
    assert code == 0, text
    assert "fp16 tolerances" in text
    code, text = cli("parity", str(bundle), "--backend", "ort-cpu", "--samples", "5", "--tolerances", "fp32")
    assert code == 1, text
    assert "parity failed" in text and "fp32 tolerances" in text


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_bundles_pass_on_openvino(bundle_of, precision):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'bigmodel[openvino]')")
    report = run_parity(bundle_of("vae", precision=precision), backends="ov-cpu", samples=5)
    assert report.passed, report.messages()
    assert report.tolerance_precision == precision


def test_polygraphy_gives_the_outputs_our_ort_backend_gives(bundle_of, tmp_path):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install 'bigmodel[test]')")
    from polygraphy.json import load_json
    from polygraphy.tools import main as polygraphy_main

    from bigmodel.runtime import load

    bundle = bundle_of("vae")
    files = {f.stem: f for f in save_inputs(bundle, tmp_path / "inputs", samples=5, seed=1)}
    assert set(files) == {"encoder", "decoder"}
    model = load(bundle, backend="ort-cpu")
    for role in ("decoder",):  # prior and ±4σ codes; one polygraphy run keeps the suite quick
        out = tmp_path / f"{role}.outputs.json"
        # `polygraphy run`, in this process (its CLI entry point takes the argv): no second interpreter start
        with warnings.catch_warnings():  # polygraphy's plugin lookup uses a deprecated importlib.metadata API
            warnings.simplefilter("ignore", DeprecationWarning)
            status = polygraphy_main(["run", str(bundle / f"{role}.onnx"), "--onnxrt", "--load-inputs",
                                      str(files[role]), "--save-outputs", str(out)])
        assert status == 0
        feeds = load_json(str(files[role]))
        (_, iterations), = load_json(str(out)).items()
        assert len(iterations) == len(feeds) == 4  # 2 probe sets x batch 1 and batch 5
        for feed, theirs in zip(feeds, iterations, strict=True):
            ours = model.run(role, feed)
            assert set(ours) == set(theirs.keys())
            for name, value in ours.items():
                arr = theirs[name]
                arr = arr.load() if hasattr(arr, "load") else arr  # polygraphy may hand back a LazyArray
                np.testing.assert_allclose(np.asarray(arr), value, rtol=0, atol=1e-6)
