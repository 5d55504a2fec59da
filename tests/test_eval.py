"""bigmodel.eval: the metrics' own properties, the runtime access eval needs, and `bigmodel eval` end to end.

The feature classifier is a tiny one (2 epochs, width 8) trained once a session into a temporary
cache; models are conftest's 1-epoch runs. Sizes are tiny: K=4 importance samples, 200 samples.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from bigmodel.errors import BundleError, InputError
from bigmodel.eval import EvalOptions, evaluate, load_eval_data, metrics
from bigmodel.eval.features import ClassifierSettings
from bigmodel.manifest import LatentSpec
from bigmodel.priors import Prior, fit_mixture
from bigmodel.runtime import load

TINY = ClassifierSettings(epochs=2, width=8)


def tiny_options(cache: Path, **kw) -> EvalOptions:
    return EvalOptions(k=4, nll_images=16, samples=200, classifier=TINY, cache_dir=cache, **kw)


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="session")
def eval_data(mnist5k, eval_cache):
    """mnist-5k's split with the tiny classifier, trained once (and cached) for the session."""
    from bigmodel.manifest import DataSpec

    spec = DataSpec(source="mnist-5k", shape=(1, 28, 28))
    return load_eval_data(spec, tiny_options(eval_cache))


@pytest.fixture(scope="session")
def eval_bundle(exported):
    """Factory: `eval_bundle(family, precision="fp32")` -> conftest's shared mlp bundle."""
    return lambda family, precision="fp32": exported(family, "mlp", precision)


# ---------------------------------------------------------------------------------- the metrics alone
def test_fid_of_a_set_against_itself_is_zero_and_against_a_shuffled_copy_too(eval_data):
    f = eval_data.val_features
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(f, rowvar=False)))
    shuffled = f[np.random.default_rng(0).permutation(len(f))]
    assert metrics.frechet_distance(f, shuffled) == pytest.approx(0.0, abs=1e-6 * np.trace(np.cov(f, rowvar=False)))


def test_classifier_is_cached_by_data_and_loaded_back(eval_data, eval_cache):
    from bigmodel.manifest import DataSpec

    again = load_eval_data(DataSpec(source="mnist-5k", shape=(1, 28, 28)), tiny_options(eval_cache))
    assert again.classifier.cached and again.classifier.path == eval_data.classifier.path
    assert again.classifier.accuracy == eval_data.classifier.accuracy > 0.5  # far above chance (0.1)
    np.testing.assert_array_equal(again.val_features, eval_data.val_features)


def test_deep_feature_net_trains_caches_apart_and_loads_back_with_its_batch_norm(eval_data, eval_cache):
    from bigmodel.eval.features import cache_key, get_classifier

    train, val = eval_data.train[:600], eval_data.val
    labels = eval_data.classifier.features(train)[1]  # any labels: the net only has to learn them
    deep = ClassifierSettings(epochs=2, width=8, arch="deep", seed=1)
    first = get_classifier(train, labels, val, eval_data.val_labels, eval_cache, deep)
    again = get_classifier(train, labels, val, eval_data.val_labels, eval_cache, deep)
    assert not first.cached and again.cached and first.path == again.path
    feats, _ = again.features(val[:50])
    assert feats.shape == (50, 256)
    np.testing.assert_array_equal(feats, first.features(val[:50])[0])  # running stats saved, eval mode
    assert cache_key(train, labels, deep) != cache_key(train, labels, ClassifierSettings(epochs=2, width=8, seed=1))
    # the default arch keeps the key it had before `arch` existed: users' caches stay valid
    import hashlib

    old = hashlib.sha256(f"1|{train.shape}|ClassifierSettings(epochs=2, width=8, batch_size=128, lr=0.003, seed=0)"
                         .encode())
    old.update(train.tobytes())
    old.update(labels.astype(np.int64).tobytes())
    assert cache_key(train, labels, TINY) == old.hexdigest()[:24]
    with pytest.raises(InputError, match="conv, deep"):
        get_classifier(train, labels, val, eval_data.val_labels, eval_cache, ClassifierSettings(arch="vgg"))


def test_fid_of_two_halves_of_real_data_is_small_next_to_noise(eval_data):
    f = eval_data.val_features
    halves = metrics.frechet_distance(f[::2], f[1::2])
    noise = eval_data.classifier.features(np.random.default_rng(0).random((250, 1, 28, 28), dtype=np.float32))[0]
    assert halves < 0.2 * metrics.frechet_distance(noise, f)


def test_fid_matches_the_textbook_formula_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) * 2 + 1
    mu_a, s_a, mu_b, s_b = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    want = ((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)


def _linear_vae(seed: int = 0):
    """A random linear-decoder 'VAE' on 6-pixel images: enough to check the bounds' algebra."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    x = rng.random((5, 1, 2, 3))
    mu, logvar = rng.standard_normal((5, 3)), rng.standard_normal((5, 3)) * 0.3
    return x, mu, logvar, lambda z: (z @ w).reshape(len(z), 1, 2, 3)


def test_iwae_is_never_above_the_negative_elbo_and_equals_it_at_k1():
    x, mu, logvar, dec = _linear_vae()
    eps = np.random.default_rng(2).standard_normal((64, 5, 3))
    nelbo, iwae = metrics.nll_bounds(metrics.log_weights(x, mu, logvar, eps, dec))
    assert (iwae <= nelbo + 1e-9).all() and (iwae < nelbo).any()
    one = metrics.log_weights(x, mu, logvar, eps[:1], dec)
    nelbo1, iwae1 = metrics.nll_bounds(one)
    np.testing.assert_allclose(iwae1, nelbo1, rtol=0, atol=1e-9)
    np.testing.assert_allclose(nelbo1, -one[:, 0])


def test_log_weight_is_bernoulli_loglik_plus_prior_minus_posterior_by_hand():
    x, mu, logvar, dec = _linear_vae()
    eps = np.random.default_rng(3).standard_normal((1, 5, 3))
    z = mu + np.exp(0.5 * logvar) * eps[0]
    p = 1 / (1 + np.exp(-dec(z.astype(np.float32)).astype(np.float64)))
    log_px = (x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(5, -1).sum(1)
    log_pz = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(1)
    log_qz = (-0.5 * eps[0] ** 2 - 0.5 * logvar - 0.5 * np.log(2 * np.pi)).sum(1)
    np.testing.assert_allclose(metrics.log_weights(x, mu, logvar, eps, dec)[:, 0], log_px + log_pz - log_qz,
                               rtol=1e-5)


def test_precision_recall_of_a_set_against_itself_is_one_and_against_a_far_set_zero():
    a = np.random.default_rng(0).standard_normal((200, 5))
    assert metrics.precision_recall(a, a, k=3) == (1.0, 1.0)
    assert metrics.precision_recall(a, a + 100.0, k=3) == (0.0, 0.0)
    # samples from one corner of the data: precise, but they cover little of it
    corner = a[a[:, 0] > 1.0]
    precision, recall = metrics.precision_recall(a, corner, k=3)
    assert precision > 0.9 and recall < 0.5


def test_coverage_counts_each_class_share():
    shares = metrics.class_coverage(np.array([0, 0, 1, 3]), 5)
    np.testing.assert_allclose(shares, [0.5, 0.25, 0.0, 0.25, 0.0])


def test_bad_metric_inputs_raise_input_errors():
    a = np.zeros((10, 3))
    with pytest.raises(InputError, match="same dimension"):
        metrics.frechet_distance(a, np.zeros((10, 4)))
    with pytest.raises(InputError, match="N >= 2"):
        metrics.frechet_distance(a[:1], a[:1])
    with pytest.raises(InputError, match="k must be"):
        metrics.precision_recall(a, a, k=10)


# ---------------------------------------------------------------------------------- the AE's fitted prior
def test_fit_mixture_recovers_separated_clusters_and_the_runtime_draws_from_it():
    rng = np.random.default_rng(0)
    centres = np.array([[-5.0, 0.0], [5.0, 0.0], [0.0, 6.0]])
    sizes = (600, 300, 100)
    codes = np.concatenate([c + 0.3 * rng.standard_normal((n, 2)) for c, n in zip(centres, sizes, strict=True)])
    fit = fit_mixture(codes, components=3, seed=0)
    order = np.argsort(np.array(fit["means"])[:, 0] + 0.01 * np.array(fit["means"])[:, 1])
    np.testing.assert_allclose(np.array(fit["means"])[order], centres[[0, 2, 1]], atol=0.1)
    np.testing.assert_allclose(np.array(fit["weights"])[order], [0.6, 0.1, 0.3], atol=0.02)
    np.testing.assert_allclose(np.array(fit["stds"]), 0.3, atol=0.05)
    prior = Prior(LatentSpec(dim=2, prior="mixture", params=fit))
    z = prior.draw(3000, seed=1)
    assert z.shape == (3000, 2) and z.dtype == np.float32
    assert abs((z[:, 0] < -2.5).mean() - 0.6) < 0.04


def test_mixture_prior_with_bad_stds_is_a_bundle_error():
    params = {"means": [[0.0, 0.0], [1.0, 1.0]], "stds": [[1.0, 1.0]]}
    with pytest.raises(BundleError, match="stds of shape"):
        Prior(LatentSpec(dim=2, prior="mixture", params=params))
    with pytest.raises(BundleError, match="std > 0"):
        Prior(LatentSpec(dim=2, prior="mixture", params={"means": [[0.0, 0.0]], "stds": [[0.0, 1.0]]}))


def test_ae_bundle_carries_a_prior_fitted_to_its_codes_and_samples_from_it(eval_bundle):
    bundle = eval_bundle("ae")
    with load(bundle, device="cpu") as m:
        latent = m.manifest.latent
        assert latent.prior == "mixture" and "training images" in latent.params["source"]
        codes = m.encode(load_eval_data_images()[:200])
        z = m.sample_latent(2000, seed=0)
        # the fitted prior sits where the codes are, not at N(0, I)
        assert np.abs(z.mean(0) - codes.mean(0)).max() < 0.5 * codes.std(0).max()
        assert m.sample(4, seed=0).shape == (4, 1, 28, 28)
    code, out = run_cli("info", str(bundle))
    assert code == 0 and "fitted at export" in out


def load_eval_data_images() -> np.ndarray:
    from bigmodel.data import load_data

    return load_data("mnist-5k", seed=0).train


# ---------------------------------------------------------------------------------- runtime access
def test_vae_encode_full_and_decode_logits_agree_with_the_plain_calls(eval_bundle):
    with load(eval_bundle("vae"), device="cpu") as m:
        x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
        mu, logvar = m.encode(x, full=True)
        raw = m.run("encoder", {"x": x})
        np.testing.assert_array_equal(mu, raw["mu"])
        np.testing.assert_array_equal(logvar, raw["logvar"])
        np.testing.assert_array_equal(m.encode(x), mu)
        logits = m.decode(mu, logits=True)
        assert logits.shape == (5, 1, 28, 28) and logits.dtype == np.float32
        np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), m.decode(mu), atol=1e-6)


def test_encode_full_on_a_deterministic_encoder_and_logits_on_an_old_bundle_are_input_errors(eval_bundle,
                                                                                           tmp_path):
    with load(eval_bundle("ae"), device="cpu") as m, pytest.raises(InputError, match="deterministic"):
        m.encode(np.zeros((1, 1, 28, 28), np.float32), full=True)
    old = Path(shutil.copytree(eval_bundle("gan"), tmp_path / "old"))
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["roles"]["generator"]["outputs"] = manifest["roles"]["generator"]["outputs"][:1]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with load(old, device="cpu") as m:
        assert m.decode(np.zeros((1, m.latent_dim), np.float32)).shape == (1, 1, 28, 28)
        with pytest.raises(InputError, match="no output logits"):
            m.decode(np.zeros((1, m.latent_dim), np.float32), logits=True)


# ---------------------------------------------------------------------------------- evaluate, end to end
@pytest.mark.parametrize("family", ["vae", "ae", "gan", "aae"])
def test_evaluate_every_family(eval_bundle, eval_data, eval_cache, family, tmp_path):
    picture = tmp_path / "nearest.png"
    r = evaluate(eval_bundle(family), tiny_options(eval_cache, picture=picture), eval_data)
    assert r["model"]["family"] == family and Path(r["classifier"]["cache"]).is_file()
    assert r["fid"] > r["fid_floor"] > 0
    assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1
    assert sum(r["coverage"]) == pytest.approx(1.0, abs=1e-3)
    assert picture.stat().st_size > 0
    assert ("reconstruction" in r) == (family != "gan")
    assert ("nll" in r) == (family == "vae")
    if family == "vae":
        assert r["nll"]["iwae"] <= r["nll"]["nelbo"]
        assert r["nll"]["k"] == 4 and r["nll"]["images"] == 16


@pytest.fixture(scope="module")
def fp32_vae_report(eval_bundle, eval_data, eval_cache) -> dict:
    """`evaluate` of the fp32 VAE bundle with tiny_options: what each lower precision is compared with."""
    return evaluate(eval_bundle("vae"), tiny_options(eval_cache), eval_data)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_evaluate_lower_precision_bundles_stays_near_fp32(eval_bundle, eval_data, eval_cache, fp32_vae_report,
                                                          precision):
    from bigmodel.eval import compare

    base = fp32_vae_report
    other = evaluate(eval_bundle("vae", precision), tiny_options(eval_cache), eval_data)
    assert other["model"]["precision"] == precision
    deltas = compare(base, other)
    assert abs(deltas["nll.iwae"]["delta"]) < 0.05 * base["nll"]["iwae"]
    assert deltas["fid"]["this"] == base["fid"]


def test_eval_cli_on_a_run_folder_with_json(trained_run, eval_cache, tmp_path, monkeypatch):
    import functools

    import bigmodel.eval

    # the command's own code path, with the tiny feature classifier the other tests share (cached once)
    monkeypatch.setattr(bigmodel.eval, "EvalOptions", functools.partial(EvalOptions, classifier=TINY))
    out = tmp_path / "report.json"
    code, text = run_cli("eval", str(trained_run("vae")), "--k", "2", "--nll-images", "8", "--samples", "100",
                         "--cache-dir", str(eval_cache), "--picture", str(tmp_path / "p.png"), "--json", str(out))
    assert code == 0, text
    assert "IWAE NLL (K=2)" in text and "FID" in text
    report = json.loads(out.read_text())["report"]
    assert report["nll"]["k"] == 2 and (tmp_path / "p.png").is_file()


def test_eval_cli_writes_no_picture_unless_asked(eval_bundle, eval_cache, monkeypatch):
    import functools

    import bigmodel.eval

    monkeypatch.setattr(bigmodel.eval, "EvalOptions", functools.partial(EvalOptions, classifier=TINY))
    target, other = eval_bundle("ae"), eval_bundle("ae", "fp16")
    folders = {target.parent, other.parent}
    before = {f: sorted(p.name for p in f.iterdir()) for f in folders}
    code, text = run_cli("eval", str(target), "--compare", str(other), "--samples", "100",
                         "--cache-dir", str(eval_cache))
    assert code == 0, text
    assert {f: sorted(p.name for p in f.iterdir()) for f in folders} == before  # nothing new beside either bundle
    assert "nearest training images" not in text


def test_eval_cli_bad_inputs_exit_2(trained_run, eval_cache, tmp_path, mnist_npy):
    code, out = run_cli("eval", str(tmp_path / "nothing"))
    assert code == 2 and "bundle folder" in out
    code, out = run_cli("eval", str(trained_run("vae")), "--k", "0", "--cache-dir", str(eval_cache))
    assert code == 2 and "--k must be a positive integer" in out
    from bigmodel.training.loop import TrainSettings, train

    unlabelled = train(TrainSettings(family="ae", dataset=str(mnist_npy), epochs=1, batch_size=64, device="cpu",
                                     out=str(tmp_path / "npy-run"))).out
    code, out = run_cli("eval", str(unlabelled), "--metrics", "reconstruction,fid", "--cache-dir", str(eval_cache))
    assert code == 2 and "--metrics fid needs a feature classifier trained on class labels" in out and "has none" in out
    code, out = run_cli("eval", str(unlabelled), "--metrics", "recon")
    assert code == 2 and "--metrics must name some of reconstruction, nll, fid" in out and "'recon'" in out
    code, out = run_cli("eval", str(trained_run("vae")), "--compare", str(unlabelled),
                        "--cache-dir", str(eval_cache))
    assert code == 2 and "same dataset" in out


def test_eval_without_labels_computes_what_needs_none_and_names_the_rest(tmp_path, mnist_npy, eval_cache):
    import json

    from bigmodel.training.loop import TrainSettings, train

    run = train(TrainSettings(family="vae", dataset=str(mnist_npy), epochs=1, batch_size=64, device="cpu",
                              out=str(tmp_path / "npy-run"))).out  # a .npy of images: no class labels
    code, out = run_cli("eval", str(run), "--k", "4", "--nll-images", "16", "--samples", "200",
                        "--cache-dir", str(eval_cache), "--json", str(tmp_path / "eval.json"))
    assert code == 0, out
    for metric in ("reconstruction BCE", "reconstruction MSE", "-ELBO", "IWAE NLL (K=4)"):
        assert metric in out
    assert "skipped fid: needs a feature classifier trained on class labels" in out and "has none" in out
    report = json.loads((tmp_path / "eval.json").read_text())["report"]
    assert set(report["skipped"]) == {"fid", "precision-recall", "coverage"} and report["classifier"] is None
    assert report["nll"]["iwae"] > 0 and report["reconstruction"]["bce"] > 0 and "fid" not in report


def test_eval_metrics_chooses(eval_bundle, eval_data):
    opts = tiny_options(Path("."), metrics=("reconstruction",))
    from bigmodel.eval import evaluate_model

    with load(eval_bundle("vae")) as model:
        report = evaluate_model(model, model.manifest.data, {"family": "vae"}, opts, eval_data)
    assert "reconstruction" in report and "nll" not in report and "fid" not in report and "precision" not in report
    left = ("nll", "fid", "precision-recall", "coverage")
    assert report["skipped"] == dict.fromkeys(left, "not asked for (--metrics)")
