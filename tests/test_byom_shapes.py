"""Beyond MNIST shapes: codes of any shape, images of any size and range, several inputs, class labels.

Bundles of small torch modules no built-in family makes (`byom_models`: a DCGAN, a class-conditional
GAN, a BiGAN discriminator with two float inputs), exported with torch.onnx and run through the
runtime, parity's probes and check loop, int8 calibration and bench's feeds; every expected value
comes from the torch modules themselves.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from byom_models import (
    CLASSES,
    COND_Z,
    NZ,
    bigan_bundle,
    cgan_bundle,
    dcgan_bundle,
    label,
    latent,
    module_reference,
    torch_run,
)
from conftest import cli

from bigmodel.errors import BundleError, InputError
from bigmodel.manifest import LatentSpec, TensorSpec, read_manifest
from bigmodel.runtime import load

ATOL = 1e-4  # onnxruntime vs torch, float32


@pytest.fixture(scope="session")
def dcgan(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dcgan_bundle(tmp_path_factory.mktemp("dcgan") / "bundle")


@pytest.fixture(scope="session")
def cgan(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cgan_bundle(tmp_path_factory.mktemp("cgan") / "bundle")


@pytest.fixture(scope="session")
def cvae(tmp_path_factory):
    from byom_models import cvae_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cvae_bundle(tmp_path_factory.mktemp("cvae") / "bundle")


@pytest.fixture(scope="session")
def bigan(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bigan_bundle(tmp_path_factory.mktemp("bigan") / "bundle")


def refusal(call) -> str:
    with pytest.raises(InputError) as e:
        call()
    assert "\n" not in str(e.value)
    return str(e.value)


# ------------------------------------------------------------------------------------------- runtime
def test_dcgan_codes_of_shape_100_1_1_through_every_method(dcgan):
    bundle, torch_models = dcgan
    m = load(bundle, backend="ort-cpu", threads=1)
    assert m.latent_shape == (NZ, 1, 1) and m.latent_dim == NZ and m.classes is None
    assert m.offers == ("decode", "sample", "interpolate", "discriminate", "run")
    z = m.sample_latent(5, seed=0)
    assert z.shape == (5, NZ, 1, 1) and z.dtype == np.float32
    # the same values as a flat (n, dim) draw: one definition of the prior, whatever the shape
    flat = np.random.default_rng(0).standard_normal((5, NZ), dtype=np.float32)
    np.testing.assert_array_equal(z.reshape(5, NZ), flat)
    x = m.sample(5, seed=0)
    assert x.shape == (5, 3, 32, 32) and x.min() >= -1 and x.max() <= 1 and x.min() < 0  # tanh: [-1, 1]
    want = torch_run(torch_models["generator"], z)
    np.testing.assert_allclose(x, want, atol=ATOL)
    np.testing.assert_array_equal(m.decode(z), x)
    np.testing.assert_allclose(m.decode(z[2]), want[2:3], atol=ATOL)  # one code without the batch axis
    np.testing.assert_allclose(m.run("generator", {"z": z})["x"], want, atol=ATOL)
    path = m.interpolate(z[0], z[1], steps=4)
    ends = np.stack([z[0], z[1]]).reshape(2, NZ)
    t = np.linspace(0, 1, 4, dtype=np.float32)[:, None]
    codes = ((1 - t) * ends[0] + t * ends[1]).reshape(4, NZ, 1, 1)
    np.testing.assert_allclose(path, torch_run(torch_models["generator"], codes), atol=ATOL)
    assert m.interpolate(z[0], z[1], steps=3, method="slerp").shape == (3, 3, 32, 32)
    logits = m.discriminate(x)
    np.testing.assert_allclose(logits, torch_run(torch_models["discriminator"], x), atol=ATOL)
    assert "expected shape (batch, 100, 1, 1)" in refusal(lambda: m.decode(np.zeros((2, NZ), np.float32)))
    assert "expected one code for a, shape (100, 1, 1)" in refusal(lambda: m.interpolate(z[:2], z[1]))
    assert "cannot encode" in refusal(lambda: m.encode(x))


def test_images_are_checked_against_their_own_range(dcgan):
    bundle, torch_models = dcgan
    m = load(bundle, backend="ort-cpu", threads=1)
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    scaled = pixels.astype(np.float32) / np.float32(127.5) - 1  # uint8 -> [-1, 1]
    np.testing.assert_allclose(m.discriminate(pixels), torch_run(torch_models["discriminator"], scaled), atol=ATOL)
    ok = np.full((1, 3, 32, 32), -1.0, np.float32)  # the bottom of [-1, 1]: outside [0, 1], inside its range
    np.testing.assert_allclose(m.discriminate(ok), torch_run(torch_models["discriminator"], ok), atol=ATOL)
    text = refusal(lambda: m.discriminate(ok * 2))
    assert "discriminator input 'x'" in text and "its declared range [-1, 1]" in text and "got values from -2" in text


def test_a_mixture_prior_over_shaped_codes(dcgan, tmp_path):
    bundle, _ = dcgan
    means = np.random.default_rng(2).normal(size=(3, NZ)).round(3)
    manifest = read_manifest(bundle)
    manifest.latent = LatentSpec(NZ, "mixture", {"means": means.tolist(), "std": 0.1}, shape=[NZ, 1, 1])
    for f in bundle.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    manifest.save(tmp_path)
    m = load(tmp_path, backend="ort-cpu", threads=1)
    z = m.sample_latent(200, seed=0)
    assert z.shape == (200, NZ, 1, 1)
    nearest = np.abs(z.reshape(200, 1, NZ) - means[None]).max(axis=2).min(axis=1)
    assert nearest.max() < 0.6  # each code sits within a few std of one of the means
    # means given as (K, *code_shape) are the same prior
    manifest.latent = replace(manifest.latent, params={"means": means.reshape(3, NZ, 1, 1).tolist(), "std": 0.1})
    manifest.save(tmp_path)
    np.testing.assert_array_equal(load(tmp_path, backend="ort-cpu", threads=1).sample_latent(200, seed=0), z)
    manifest.latent = replace(manifest.latent, shape=[NZ, 2, 1])
    manifest.save(tmp_path)
    with pytest.raises(BundleError, match=r"latent.shape \[100, 2, 1\] holds 200 values; latent.dim says 100"):
        load(tmp_path, backend="ort-cpu", threads=1)


def test_conditional_gan_labels_in_sample_decode_interpolate_discriminate(cgan):
    bundle, torch_models = cgan
    gen, disc = torch_models["generator"], torch_models["discriminator"]
    m = load(bundle, backend="ort-cpu", threads=1)
    assert m.classes == CLASSES and m.latent_shape == (COND_Z,)
    z = m.sample_latent(6, seed=0)
    # no labels: uniform ones from Generator([seed, 1]), the same every time, all in range
    labels = m.sample_labels(6, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (6,) and 0 <= labels.min() and labels.max() < CLASSES
    np.testing.assert_array_equal(labels, np.random.default_rng([0, 1]).integers(CLASSES, size=6))
    x = m.sample(6, seed=0)
    np.testing.assert_allclose(x, torch_run(gen, z, labels), atol=ATOL)
    np.testing.assert_array_equal(m.sample(6, seed=0), x)
    # one class for all, or one per sample; an int, a list or an array of any integer dtype
    threes = torch_run(gen, z, np.full(6, 3))
    np.testing.assert_allclose(m.sample(6, seed=0, labels=3), threes, atol=ATOL)
    np.testing.assert_allclose(m.decode(z, labels=np.int32(3)), threes, atol=ATOL)
    mixed = np.array([0, 1, 2, 9, 8, 7])
    np.testing.assert_allclose(m.decode(z, labels=mixed.tolist()), torch_run(gen, z, mixed), atol=ATOL)
    np.testing.assert_allclose(m.decode(z, labels=mixed.astype(np.uint8)), torch_run(gen, z, mixed), atol=ATOL)
    np.testing.assert_allclose(m.decode(z[1], labels=4), torch_run(gen, z[1:2], np.array([4])), atol=ATOL)
    np.testing.assert_allclose(m.run("generator", {"z": z, "labels": mixed})["x"], torch_run(gen, z, mixed),
                               atol=ATOL)
    path = m.interpolate(z[0], z[1], steps=3, labels=5)
    t = np.linspace(0, 1, 3, dtype=np.float32)[:, None]
    np.testing.assert_allclose(path, torch_run(gen, (1 - t) * z[0] + t * z[1], np.full(3, 5)), atol=ATOL)
    np.testing.assert_allclose(m.discriminate(x, labels=mixed), torch_run(disc, x, mixed), atol=ATOL)


@pytest.mark.parametrize("call,expected", [
    (lambda m, z: m.decode(z), "generator is conditional on 10 classes: pass labels="),
    (lambda m, z: m.interpolate(z[0], z[1], 3), "generator is conditional on 10 classes"),
    (lambda m, z: m.discriminate(m.sample(2, seed=0)), "discriminator is conditional on 10 classes"),
    (lambda m, z: m.decode(z, labels=10), "generator input 'labels': expected class ids in [0, 10); got values "
                                          "from 10 to 10, the first outside at index 0 (10)"),
    (lambda m, z: m.decode(z, labels=[0, -1, 2, 3]), "expected class ids in [0, 10); got values from -1 to 3, "
                                                     "the first outside at index 1 (-1)"),
    (lambda m, z: m.decode(z, labels=np.zeros(4, np.float32)), "expected integer class ids (int64) of shape "
                                                               "(batch); got dtype float32"),
    (lambda m, z: m.decode(z, labels=True), "got dtype bool"),
    (lambda m, z: m.decode(z, labels=np.zeros((4, 1), np.int64)), "expected shape (batch); got (4, 1)"),
    (lambda m, z: m.decode(z, labels=np.zeros(3, np.int64)), "expected 4 labels, one per latent (or one int for "
                                                             "all); got 3"),
    (lambda m, z: m.sample(4, labels=[1, 2]), "expected 4 labels"),
    (lambda m, z: m.run("generator", {"z": z, "labels": np.arange(4) + 8}), "got values from 8 to 11"),
    (lambda m, z: m.run("generator", {"z": z}), "expected feeds {labels, z}; got ['z']"),
])
def test_label_errors_are_one_line_naming_what_came(cgan, call, expected):
    m = load(cgan[0], backend="ort-cpu", threads=1)
    text = refusal(lambda: call(m, m.sample_latent(4, seed=0)))
    assert expected in text, text


def test_a_conditional_vae_passes_labels_to_encoder_and_decoder(cvae, mnist5k):
    bundle, torch_models = cvae
    enc, dec = torch_models["encoder"], torch_models["decoder"]
    m = load(bundle, backend="ort-cpu", threads=1)
    x, y = mnist5k.val[:5], np.array([3, 1, 4, 1, 5])
    mu = torch_run(enc, x, y)
    np.testing.assert_allclose(m.encode(x, labels=y), mu, atol=ATOL)
    got_mu, got_logvar = m.encode(x, full=True, labels=y)
    np.testing.assert_allclose(got_logvar, torch_run(enc, x, y, output=1), atol=ATOL)
    np.testing.assert_allclose(m.reconstruct(x, labels=y), torch_run(dec, mu, y), atol=ATOL)
    np.testing.assert_allclose(m.decode(mu, labels=y, logits=True), torch_run(dec, mu, y, output=1), atol=ATOL)
    np.testing.assert_allclose(m.reconstruct(x, labels=2), torch_run(dec, torch_run(enc, x, np.full(5, 2)),
                                                                     np.full(5, 2)), atol=ATOL)
    for call in (lambda: m.encode(x), lambda: m.encode(x, full=True), lambda: m.reconstruct(x)):
        assert "encoder is conditional on 10 classes: pass labels=" in refusal(call)
    assert "decoder is conditional" in refusal(lambda: m.decode(mu, logits=True))


def test_eval_of_a_conditional_vae_uses_the_validation_labels(cvae, mnist5k, tmp_path):
    """Reconstruction and the NLL bounds of a conditional VAE, with the images' own labels, from torch."""
    from bigmodel.data import load_labels
    from bigmodel.eval import EvalOptions
    from bigmodel.eval import metrics as M
    from bigmodel.eval.run import nll, reconstruction

    bundle, torch_models = cvae
    enc, dec = torch_models["encoder"], torch_models["decoder"]
    m = load(bundle, backend="ort-cpu", threads=1)
    x, y = mnist5k.val[:6], load_labels("mnist-5k", seed=0)[1][:6]
    got = reconstruction(m, x, y)
    mu = torch_run(enc, x, y)
    assert got["bce"] == pytest.approx(float(M.bce_per_image(torch_run(dec, mu, y, output=1), x).mean()), rel=1e-4)
    opts = EvalOptions(k=3, nll_images=6)
    bounds = nll(m, x, opts, y)
    eps = np.random.default_rng(opts.seed).standard_normal((3, 6, COND_Z))
    w = M.log_weights(x, mu, torch_run(enc, x, y, output=1), eps,
                      lambda z: torch_run(dec, z, np.tile(y, 3), output=1))
    nelbo, iwae = M.nll_bounds(w)
    assert bounds["nelbo"] == pytest.approx(float(nelbo.mean()), rel=1e-4)
    assert bounds["iwae"] == pytest.approx(float(iwae.mean()), rel=1e-4)
    with pytest.raises(InputError, match="takes class labels, and the evaluation data has none"):
        reconstruction(m, x)


def test_labels_on_a_model_that_takes_none_are_refused(dcgan, bigan):
    m = load(dcgan[0], backend="ort-cpu", threads=1)
    z = m.sample_latent(2, seed=0)
    assert "takes no labels (it is not conditional)" in refusal(lambda: m.decode(z, labels=1))
    assert "takes no labels" in refusal(lambda: m.sample(2, labels=1))
    assert "takes no labels" in refusal(lambda: m.sample_labels(2))
    assert "takes no labels" in refusal(lambda: m.discriminate(m.decode(z), labels=[0, 1]))


def test_a_role_with_two_float_inputs_runs_through_run(bigan):
    bundle, torch_models = bigan
    m = load(bundle, backend="ort-cpu", threads=1)
    z = m.sample_latent(3, seed=0)
    x = m.decode(z)
    np.testing.assert_allclose(x, torch_run(torch_models["generator"], z), atol=ATOL)
    got = m.run("discriminator", {"x": x, "z": z})["logit"]
    np.testing.assert_allclose(got, torch_run(torch_models["discriminator"], x, z), atol=ATOL)
    text = refusal(lambda: m.discriminate(x))
    assert "takes several inputs (x, z); call run('discriminator', {...})" in text
    assert "same batch size" in refusal(lambda: m.run("discriminator", {"x": x, "z": z[:2]}))
    assert "expected values in the data range [0, 1]" in refusal(lambda: m.run("discriminator", {"x": x + 2, "z": z}))


def test_a_label_input_must_be_integer_ids_of_shape_batch(cgan, tmp_path):
    bundle, _ = cgan
    for f in bundle.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    manifest = read_manifest(bundle)
    spec = manifest.roles["generator"]
    manifest.roles["generator"] = replace(spec, inputs=[spec.inputs[0], replace(spec.inputs[1], dtype="float32")])
    manifest.save(tmp_path)
    with pytest.raises(BundleError, match=r"a label input is integer class ids of shape \(batch,\); the manifest says "
                                          r"float32 \['batch'\]"):
        load(tmp_path, backend="ort-cpu", threads=1, verify=False)


# -------------------------------------------------------------------------------------------- probes
def test_input_probes_keep_todays_sets_for_one_input_and_follow_the_kinds():
    from bigmodel.models.probes import input_probes, role_probes

    val = np.random.default_rng(5).random((20, 1, 28, 28), dtype=np.float32)
    spec = LatentSpec(20)
    image = [TensorSpec("x", "float32", ["batch", 1, 28, 28], "image")]
    for inputs, kind in ((image, "image"), ([latent("z", (20,))], "latent")):
        got, want = input_probes(inputs, spec, (0.0, 1.0), val, 31, 0), role_probes(kind, 20, val, 31, 0)
        assert list(got) == list(want)
        for probe, x in want.items():
            np.testing.assert_array_equal(got[probe][inputs[0].name], x)
    # a conditional generator: codes in their shape, seeded uniform labels in every set, manifest order
    cond = [label("y", 7), latent("z", (NZ, 1, 1))]
    sets = input_probes(cond, LatentSpec(NZ, shape=[NZ, 1, 1]), (-1.0, 1.0), None, 9, 0)
    assert list(sets) == ["prior", "extreme"]
    for feeds in sets.values():
        assert list(feeds) == ["y", "z"] and feeds["z"].shape == (9, NZ, 1, 1)
        assert feeds["y"].dtype == np.int64 and feeds["y"].shape == (9,) and 0 <= feeds["y"].min()
        assert feeds["y"].max() < 7
    assert np.abs(sets["extreme"]["z"]).max() == 4.0
    again = input_probes(cond, LatentSpec(NZ), (0.0, 1.0), None, 9, 0)
    np.testing.assert_array_equal(sets["prior"]["y"], again["prior"]["y"])  # seeded
    # images in their declared range, without validation images: noise only; tensors standard normal
    disc = [TensorSpec("img", "float32", ["batch", 3, 8, 8], "image", [-1.0, 1.0]),
            TensorSpec("t", "float32", ["batch", 4], "tensor")]
    sets = input_probes(disc, spec, (0.0, 1.0), None, 500, 0)
    assert list(sets) == ["noise"]
    x = sets["noise"]["img"]
    assert -1 <= x.min() < -0.99 and 0.99 < x.max() <= 1
    assert abs(sets["noise"]["t"].std() - 1) < 0.05
    # fewer validation images than n: every input cut to the images' rows
    with_val = input_probes([image[0], label("y")], spec, (0.0, 1.0), val, 31, 0)
    assert len(with_val["val"]["x"]) == len(with_val["val"]["y"]) == 20 and len(with_val["noise"]["y"]) == 31


# -------------------------------------------------------------------------------------------- parity
def _parity(bundle: Path, modules: dict, reference=None, samples: int = 5, backend: str = "ort-cpu"):
    from bigmodel.parity.check import check_targets
    from bigmodel.parity.inputs import probe_inputs, targets_of
    from bigmodel.parity.tolerances import tolerances_for

    manifest = read_manifest(bundle)
    reference = reference or module_reference(modules, manifest)
    targets = targets_of(manifest)

    def generate(role, feeds):
        return reference((role,), ("_generated", 0), feeds)[0]

    inputs, feeds = probe_inputs(manifest, targets, None, "none", samples, 0, generate)
    model = load(bundle, backend=backend, threads=1)
    return targets, inputs, feeds, check_targets(model, reference, manifest, targets, feeds, tolerances_for("fp32"))


def test_parity_checks_a_dcgan_and_a_conditional_gan_against_their_torch_modules(dcgan, cgan):
    for bundle, modules in (dcgan, cgan):
        targets, inputs, feeds, cases = _parity(bundle, modules)
        assert targets == [("generator",), ("discriminator",), ("generator", "discriminator")]
        assert len(cases) == 12, [(c.target, c.probe, c.batch) for c in cases]  # 6 sets x batch 1, 5
        assert cases and all(c.passed for c in cases), [c for c in cases if not c.passed][:2]
        probes = {(c.target, c.probe) for c in cases}
        assert {("generator", "prior"), ("generator", "extreme"), ("discriminator", "noise"),
                ("discriminator", "generated"), ("generator->discriminator", "extreme")} <= probes
        assert {c.batch for c in cases} == {1, 5}
    # the conditional chain feeds the generator's labels to the discriminator, by name
    f = feeds["generator->discriminator", "prior"][1]
    assert list(f) == ["z", "labels"] and f["labels"].dtype == np.int64 and f["z"].shape == (5, COND_Z)
    generated = feeds["discriminator", "generated"][1]
    assert list(generated) == ["x", "labels"] and generated["x"].min() >= 0
    assert any("labels: seeded uniform class ids" in i.source for i in inputs)


def test_parity_on_openvino_feeds_labels_and_shaped_codes_too(dcgan, cgan):
    from bigmodel.runtime import backend_status

    reason = backend_status(("ov-cpu",))["ov-cpu"]
    if reason is not None:
        pytest.skip(f"ov-cpu cannot run here: {reason}")
    for bundle, modules in (dcgan, cgan):
        _, _, _, cases = _parity(bundle, modules, backend="ov-cpu")
        assert len(cases) == 12 and all(c.passed for c in cases), [c for c in cases if not c.passed][:1]


def test_parity_of_a_conditional_vae_chain(cvae):
    targets, _, feeds, cases = _parity(*cvae)
    assert ("encoder", "decoder") in targets and all(c.passed for c in cases)
    assert {o.output for c in cases if c.target == "encoder->decoder" for o in c.outputs} == {"x", "logits"}
    assert list(feeds["encoder->decoder", "noise"][1]) == ["x", "labels"]


def test_parity_fails_when_the_reference_differs(cgan):
    from byom_models import cgan_modules

    bundle, _ = cgan
    other = cgan_modules(seed=7)  # other weights: every check must fail
    _, _, _, cases = _parity(bundle, other)
    assert cases and not any(c.passed for c in cases if c.target == "generator")


def test_a_chain_takes_its_extra_inputs_by_name_or_is_no_target(bigan):
    from bigmodel.parity.inputs import targets_of

    targets, _, feeds, cases = _parity(*bigan)
    # BiGAN: D(G(z), z), the generator's own codes go to the discriminator's input of that name
    assert targets == [("generator",), ("discriminator",), ("generator", "discriminator")]
    assert list(feeds["discriminator", "noise"][0]) == ["x", "z"]
    assert all(c.passed for c in cases) and {c.target for c in cases} == {"generator", "discriminator",
                                                                         "generator->discriminator"}
    manifest = read_manifest(bigan[0])
    spec = manifest.roles["discriminator"]
    manifest.roles["discriminator"] = replace(spec, inputs=[spec.inputs[0], replace(spec.inputs[1], name="code")])
    assert targets_of(manifest) == [("generator",), ("discriminator",)]  # no "code" among the generator's inputs


def test_torch_reference_calls_role_modules_in_the_manifest_order(cgan):
    from bigmodel.parity.reference import TorchReference

    bundle, modules = cgan
    manifest = read_manifest(bundle)

    ref = TorchReference(modules, manifest)
    z = np.random.default_rng(0).standard_normal((3, COND_Z), dtype=np.float32)
    y = np.array([1, 5, 9])
    want = torch_run(modules["discriminator"], torch_run(modules["generator"], z, y), y)
    np.testing.assert_allclose(ref(("generator", "discriminator"), ("p", 3), {"z": z, "labels": y})[0], want,
                               atol=1e-6)
    np.testing.assert_allclose(ref.generate("generator", {"labels": y, "z": z}), torch_run(modules["generator"], z, y),
                               atol=1e-6)


def test_save_inputs_writes_every_input(cgan, tmp_path):
    from bigmodel.parity import save_inputs

    files = {f.stem: f for f in save_inputs(cgan[0], tmp_path / "inputs", samples=3, seed=0)}
    rows = json.loads(files["discriminator"].read_text())

    def dec(a):
        return np.load(io.BytesIO(base64.b64decode(a["array"])), allow_pickle=False)

    assert len(rows) == 4 and all(set(r) == {"x", "labels"} for r in rows)  # val, noise x batch 1, 3
    assert dec(rows[1]["labels"]).dtype == np.int64 and dec(rows[1]["x"]).shape == (3, 1, 28, 28)


# ------------------------------------------------------------------------------------- int8 and bench
def test_int8_calibration_feeds_follow_kinds_and_ranges(cgan, dcgan, tmp_path):
    from bigmodel.export.int8 import calibration_inputs, to_int8_file
    from bigmodel.export.verify import runtime_model

    val = np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32)
    bundle, modules = cgan
    manifest = read_manifest(bundle)
    fp32 = runtime_model(bundle, manifest)

    def run_first(roles, feeds):
        role = next((r for r in roles if r in manifest.roles), None)
        return None if role is None else fp32.run(role, feeds)[manifest.roles[role].outputs[0].name]

    calib = calibration_inputs(manifest, "discriminator", val, 32, run_first, stress=True)
    assert list(calib) == ["x", "labels"] and len(calib["x"]) == len(calib["labels"]) == 32 + 32 + 8
    assert calib["labels"].dtype == np.int64 and calib["labels"].max() < CLASSES
    # the generated third of the set: the generator's images of the labels it was given
    made, made_labels = calib["x"][32:64], calib["labels"][32:64]
    z = read_prior(manifest, 32)
    np.testing.assert_allclose(made, torch_run(modules["generator"], z, made_labels), atol=ATOL)
    gen = calibration_inputs(manifest, "generator", val, 32, run_first)
    assert list(gen) == ["z", "labels"] and gen["z"].shape == (32, COND_Z)
    for role, feeds in (("generator", gen), ("discriminator", calib)):
        dst = tmp_path / f"{role}.int8.onnx"
        to_int8_file(bundle / manifest.roles[role].file, dst, "static", feeds)
        import onnxruntime as ort

        got = ort.InferenceSession(str(dst)).run(None, {k: v[:8] for k, v in feeds.items()})[0]
        want = torch_run(modules[role], *[v[:8] for v in feeds.values()])
        assert np.abs(got - want).max() < 0.1 * max(1.0, np.abs(want).max())  # int8: close, not equal
    # DCGAN: codes in their shape, images in [-1, 1] (the generator's own, and noise rescaled to the range)
    bundle, _ = dcgan
    manifest = read_manifest(bundle)
    fp32 = runtime_model(bundle, manifest)
    rgb = np.random.default_rng(0).uniform(-1, 1, (16, 3, 32, 32)).astype(np.float32)
    gen = calibration_inputs(manifest, "generator", rgb, 16, run_first, stress=True)
    assert gen["z"].shape == (16 + 4, NZ, 1, 1) and np.abs(gen["z"][16:]).max() == 4.0
    disc = calibration_inputs(manifest, "discriminator", rgb, 16, run_first, stress=True)["x"]
    assert disc.shape == (36, 3, 32, 32) and disc.min() >= -1 and disc[32:].min() < -0.5  # noise in [-1, 1]


def read_prior(manifest, n):
    from bigmodel.priors import draw

    return draw(manifest.latent, n, seed=1)


def test_bench_role_inputs_follow_labels_ranges_and_code_shapes(cgan, dcgan):
    from bigmodel.bench.adapters import role_inputs

    cond = read_manifest(cgan[0])
    feeds = role_inputs(cond, "discriminator", 64, seed=0)
    assert feeds["labels"].dtype == np.int64 and feeds["labels"].shape == (64,)
    assert 0 <= feeds["labels"].min() and feeds["labels"].max() < CLASSES and len(set(feeds["labels"])) > 5
    m = load(cgan[0], backend="ort-cpu", threads=1)
    assert m.run("discriminator", feeds)["logit"].shape == (64, 1)  # feeds the runtime accepts as they are
    dc = read_manifest(dcgan[0])
    assert role_inputs(dc, "generator", 3, seed=0)["z"].shape == (3, NZ, 1, 1)
    x = role_inputs(dc, "discriminator", 50, seed=0)["x"]
    assert x.min() < -0.9 and x.max() > 0.9 and x.min() >= -1


def test_cli_sample_of_a_dcgan_and_a_conditional_gan(dcgan, cgan, tmp_path):
    for bundle, _ in (dcgan, cgan):
        npy, png = tmp_path / f"{bundle.parent.name}.npy", tmp_path / f"{bundle.parent.name}.png"
        code, out, err = cli("sample", bundle, "-n", "6", "--seed", "2", "--out", png, "--npy", npy,
                             "--backend", "ort-cpu")
        assert code == 0, out + err
        m = load(bundle, backend="ort-cpu", threads=1)
        np.testing.assert_allclose(np.load(npy), m.sample(6, seed=2), atol=1e-6)  # labels too: Model.sample's
        assert png.is_file()
    m = load(cgan[0], backend="ort-cpu", threads=1)
    code, out, err = cli("sample", cgan[0], "-n", "4", "--label", "7", "--out", tmp_path / "7.png", "--npy",
                         tmp_path / "7.npy", "--latents", tmp_path / "z.npy", "--backend", "ort-cpu")
    assert code == 0, out + err
    np.testing.assert_allclose(np.load(tmp_path / "7.npy"), m.sample(4, seed=0, labels=7), atol=1e-6)
    code, out, err = cli("decode", cgan[0], tmp_path / "z.npy", "--label", "7", "--out", tmp_path / "x.npy",
                         "--backend", "ort-cpu")
    assert code == 0, out + err
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), np.load(tmp_path / "7.npy"), atol=1e-6)
    code, out, err = cli("decode", cgan[0], tmp_path / "z.npy", "--label", "10", "--out", tmp_path / "y.npy",
                         "--backend", "ort-cpu")
    assert code == 2 and "expected class ids in [0, 10)" in out + err, out + err
    code, out, err = cli("sample", dcgan[0], "--label", "1", "--out", tmp_path / "d.png", "--backend", "ort-cpu")
    assert code == 2 and "takes no labels" in out + err, out + err


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_fp16_and_int8_bundles_of_a_dcgan_and_a_conditional_gan(dcgan, cgan, mnist5k, tmp_path, precision):
    """export's conversion (calibration, the search, the checks against the fp32 graphs) on bundles with
    shaped codes, a [-1, 1] image range and class labels; the result runs in the runtime like the fp32 one."""
    import shutil

    from bigmodel.export.options import FP32_DIR, ExportOptions
    from bigmodel.export.precision import convert_bundle

    rgb = np.random.default_rng(0).uniform(-1, 1, (64, 3, 32, 32)).astype(np.float32)
    for (bundle, modules), val in ((dcgan, rgb), (cgan, mnist5k.val)):
        folder = tmp_path / f"{bundle.parent.name}-{precision}"
        shutil.copytree(bundle, folder)
        manifest = read_manifest(folder)
        said: list[str] = []
        quality, failures = convert_bundle(folder, manifest, ExportOptions(precision=precision, calibration=64),
                                           val, said.append)
        assert failures == [], failures
        shutil.rmtree(folder / FP32_DIR)
        manifest.save(folder)
        assert [t.dtype for t in manifest.roles["discriminator"].inputs][1:] == (["int64"] if bundle == cgan[0]
                                                                               else [])
        m = load(folder, backend="ort-cpu", threads=1)
        assert m.manifest.precision == precision and set(quality) == {"generator", "discriminator"}
        z = m.sample_latent(8, seed=0)
        labels = m.sample_labels(8, seed=0) if m.classes else None
        want = torch_run(modules["generator"], z, *([labels] if labels is not None else []))
        got = m.sample(8, seed=0)
        assert np.abs(got - want).max() < 0.15, (precision, bundle, np.abs(got - want).max())
        assert any("pass" in line for line in said)


# ---------------------------------------------------------------------------------------------- eval
def test_eval_of_a_conditional_generator_measures_label_agreement(mnist5k, tmp_path):
    """A generator that draws class k as a real digit the feature net reads as k agrees with the net on
    (nearly) every sample; the same table shifted by one class agrees on (nearly) none."""
    from byom_models import lookup_bundle

    from bigmodel.data import load_labels
    from bigmodel.eval import EvalOptions, load_eval_data
    from bigmodel.eval.features import ClassifierSettings
    from bigmodel.eval.run import evaluate_model
    from bigmodel.manifest import DataSpec

    opts = EvalOptions(samples=200, classifier=ClassifierSettings(epochs=2, width=8), cache_dir=tmp_path / "cache")
    data = load_eval_data(DataSpec("mnist-5k", (1, 28, 28)), opts)
    val_labels = load_labels("mnist-5k", seed=0)[1]
    read = data.classifier.features(mnist5k.val)[1]
    table = np.stack([mnist5k.val[np.flatnonzero((val_labels == k) & (read == k))[0]] for k in range(CLASSES)])
    reports = {}
    for name, t in (("right", table), ("shifted", np.roll(table, 1, axis=0))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bundle, _ = lookup_bundle(tmp_path / name, t)
        m = load(bundle, backend="ort-cpu", threads=1)
        reports[name] = evaluate_model(m, m.manifest.data, {"bundle": str(bundle)}, opts, data)
    assert reports["right"]["label_agreement"] > 0.95, reports["right"]
    assert reports["shifted"]["label_agreement"] < 0.05, reports["shifted"]
    assert "reconstruction" not in reports["right"]  # no encoder


def test_the_docs_example_runs(cgan):
    """docs/shapes-and-labels.md's runtime example, run on a conditional GAN bundle."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "shapes-and-labels.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code.replace('"cgan_bundle"', repr(str(cgan[0]))), scope)  # noqa: S102 (our own docs)
    assert (scope["gan"].classes, scope["gan"].latent_shape) == (CLASSES, (COND_Z,))
    assert scope["sevens"].shape == scope["mixed"].shape == (8, 1, 28, 28) and scope["logits"].shape == (8, 1)
