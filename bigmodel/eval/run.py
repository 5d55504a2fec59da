"""`evaluate`: generative quality of a bundle (any backend, any precision) or a run folder, via the runtime.

A run folder is exported to a temporary fp32 bundle first, so every number comes through the same
`bigmodel.runtime.Model` an application embeds. Reconstruction and the likelihood bounds use the
validation split the model was not trained on. Samples are compared (FID, KID, precision/recall)
with a reference: the whole training split by default, or the user's own images (`reference`); the
validation images against that reference give the floor a perfect model would score. The feature
net is trained on the training split (see `features.py`; docs/quality.md says why scoring against
the images it was trained on does not bias the reference).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.errors import InputError
from bigmodel.eval import metrics
from bigmodel.eval.features import ClassifierSettings, get_classifier
from bigmodel.manifest import MANIFEST_NAME, DataSpec
from bigmodel.progress import ProgressFn, reporter

RARE_CLASS = 0.01  # a class that gets under 1% of the samples is a dropped mode
PICTURE_PAIRS = 16  # samples shown beside their nearest training images
MIN_REFERENCE = 500  # fewer real images than this: FID's bias and KID's error swamp what they compare
PR_IMAGES = 5000  # precision/recall hold (N, N) distances: at most this many images a side
KID_SUBSETS = 10
FID_RESAMPLES = 20


EVAL_IMAGE_BYTES = 4 * 4 * 3 * 64 * 64  # a float32 image up to 3x64x64, about four copies (input, output, features)

# --metrics: what each name computes; the last three work in the feature space of a classifier trained on labels
METRICS = ("reconstruction", "nll", "fid", "precision-recall", "coverage")
NEEDS_LABELS = ("fid", "precision-recall", "coverage")
LABELLED = "labelled: mnist-5k, digits, mnist, fashion-mnist, cifar10, or a .npz with key 'y'"


def parse_metrics(text: str | None) -> tuple[str, ...] | None:
    """'reconstruction,nll' -> ('reconstruction', 'nll'); None, '' or 'all' -> None (every metric that applies)."""
    if text is None or text.strip() in ("", "all"):
        return None
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise InputError(f"--metrics must name some of {', '.join(METRICS)} (or all); got {text!r}")
    return names


@dataclass
class EvalOptions:
    """What `bigmodel eval` was asked; see its --help for each field."""

    k: int = 500  # importance samples per image for the IWAE bound
    nll_images: int = 500  # the fixed subset: the first N validation images (the split is seeded)
    samples: int = 10000  # generated images for FID, KID, precision/recall and coverage
    pr_k: int = 3  # the neighbourhood size of improved precision/recall
    seed: int = 0
    codes_per_call: int = 5000  # decoder batch in the IWAE
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = None
    cache_dir: Path | None = None
    picture: Path | None = None
    classifier: ClassifierSettings = field(default_factory=ClassifierSettings)
    metrics: tuple[str, ...] | None = None  # None: every metric that applies to the model and its data
    reference: Path | None = None  # real images for FID/KID/precision-recall; None: the training split
    precision: str | None = None  # which verified precision of a bundle, or "fastest" (runtime.load's precision)

    def validate(self) -> None:
        from bigmodel.limits import check_count, check_items, check_seed, check_threads

        for name in ("k", "nll_images", "samples", "pr_k", "codes_per_call"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer; got {v!r}")
        for name in ("k", "nll_images", "samples", "codes_per_call"):  # each one image (and its features) held
            check_items(getattr(self, name), f"--{name.replace('_', '-')}", EVAL_IMAGE_BYTES, "images")
        check_count(self.pr_k, "--pr-k", 1000)
        check_seed(self.seed)
        check_threads(self.threads)
        if self.samples <= self.pr_k or self.samples < 2 * KID_SUBSETS:
            raise InputError(f"--samples must exceed --pr-k ({self.pr_k}) and be at least {2 * KID_SUBSETS} "
                             f"(KID's {KID_SUBSETS} subsets); got {self.samples}")
        if self.metrics is not None:
            parse_metrics(",".join(self.metrics) or "-")

    def wants(self, metric: str) -> bool:
        return self.metrics is None or metric in self.metrics


@dataclass
class EvalData:
    """Training and validation images with labels, the classifier trained on them, and the reference's features."""

    train: np.ndarray
    val: np.ndarray
    classifier: Any  # features.Classifier; None without labels (or when no metric needs it)
    val_features: np.ndarray | None
    floor_fid: float | None  # FID of the validation images against the reference: what a perfect model gets
    val_labels: np.ndarray | None = None  # (N,) int64: a conditional model's labels for the validation images
    no_classifier: str | None = None  # why there is no classifier
    reference_features: np.ndarray | None = None  # (N, 128): the real side of FID, KID and precision/recall
    reference: dict[str, Any] | None = None  # {"source": what the reference is, "images": N}
    floor_kid: tuple[float, float] | None = None  # KID (mean, standard error) of the validation images


def load_reference(path: Path, spec: DataSpec) -> np.ndarray:
    """The user's reference images (a .npz/.npy array or an image folder, read by bigmodel.data) as float32
    (N, C, H, W) in [0, 1], of the model's image shape and at least MIN_REFERENCE of them: InputError otherwise."""
    from bigmodel.data import read_images
    from bigmodel.errors import DataError

    path = Path(path).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() in (".npz", ".npy"))):
        came = "no such file or folder" if not path.exists() else "another kind of file"
        raise InputError(f"--reference: expected a .npz/.npy file or a folder of images; got {path} ({came})")
    try:
        x, scale = read_images(str(path.resolve()))  # an absolute path is never taken for a dataset name
    except DataError as e:
        raise InputError(f"--reference: {e}") from e
    if tuple(x.shape[1:]) != tuple(spec.shape):
        raise InputError(f"--reference {path}: expected images of shape (C, H, W) {tuple(spec.shape)}, the "
                         f"model's data; got {tuple(x.shape[1:])}")
    if len(x) < MIN_REFERENCE:
        raise InputError(f"--reference {path}: expected at least {MIN_REFERENCE} images (fewer make FID and KID "
                         f"meaningless); got {len(x)}")
    return np.asarray(x, dtype=np.float32) / np.float32(scale)  # the reader refused pixels outside 0..255 or [0, 1]


def load_eval_data(spec: DataSpec, opts: EvalOptions) -> EvalData:
    """The model's own dataset and split (from its DataSpec), labels, the cached classifier and the reference.

    The reference is `opts.reference`'s images, read and checked before anything else (a bad one writes
    nothing, not even the classifier's cache), or else the whole training split.
    """
    from bigmodel.data import load_data, load_labels

    user_reference = None if opts.reference is None else load_reference(opts.reference, spec)
    data = load_data(spec.source, seed=spec.seed, val_fraction=spec.val_fraction)
    labels = load_labels(spec.source, seed=spec.seed, val_fraction=spec.val_fraction)
    asked = [m for m in NEEDS_LABELS if opts.metrics is not None and m in opts.metrics]
    if labels is None and user_reference is not None:
        raise InputError(f"--reference is the real side of fid, precision-recall and coverage, which need a feature "
                         f"classifier trained on class labels, and {spec.source} has none ({LABELLED})")
    if labels is None and asked:
        raise InputError(f"--metrics {','.join(asked)} needs a feature classifier trained on class labels, and "
                         f"{spec.source} has none ({LABELLED}); reconstruction and nll need none")
    if labels is None or not any(opts.wants(m) for m in NEEDS_LABELS):
        why = (f"needs a feature classifier trained on class labels; {spec.source} has none ({LABELLED})"
               if labels is None else "not asked for (--metrics)")
        return EvalData(data.train, data.val, None, None, None, None if labels is None else labels[1], why)
    clf = get_classifier(data.train, labels[0], data.val, labels[1], opts.cache_dir, opts.classifier)
    val_features = clf.features(data.val)[0]
    if user_reference is None:
        ref_features, reference = clf.features(data.train)[0], {"source": f"training split of {spec.source}"}
    else:
        ref_features, reference = clf.features(user_reference)[0], {"source": str(Path(opts.reference))}
    reference["images"] = len(ref_features)
    floor = metrics.frechet_distance(val_features, ref_features)
    floor_kid = metrics.kernel_inception_distance(val_features, ref_features, KID_SUBSETS, seed=opts.seed)
    return EvalData(data.train, data.val, clf, val_features, floor, labels[1], None, ref_features, reference,
                    floor_kid)


def target_spec(target: Path) -> DataSpec:
    """The DataSpec of a bundle (its manifest) or a run folder (its config.json)."""
    import json

    from bigmodel.data import find_run_data
    from bigmodel.manifest import read_manifest

    target = Path(target)
    needs = ("eval needs its validation images", "`bigmodel export RUN --dataset PATH`, then evaluate that bundle")
    if (target / MANIFEST_NAME).is_file():
        m = read_manifest(target)
        return find_run_data(m.data, m.extra.get("dataset"), target, None, *needs).spec  # found where it moved
    config = target / "config.json"
    if not config.is_file():
        from bigmodel.models.checkpoint import foreign

        raise InputError(foreign(target, f"nor a bundle folder: no {MANIFEST_NAME}, no config.json + checkpoint.pt"))
    try:
        d = json.loads(config.read_text(encoding="utf-8"))
        spec = DataSpec.from_dict(d["data_spec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{config}: cannot read its data_spec ({type(e).__name__}: {e})") from e
    return find_run_data(spec, d.get("dataset"), target, None, *needs).spec


def same_data(targets: list[Path]) -> DataSpec:
    """The one DataSpec every target shares (source, split), or InputError: a comparison needs the same images."""
    specs = [target_spec(t) for t in targets]
    keys = {(s.source, s.seed, s.val_fraction, tuple(s.shape)) for s in specs}
    if len(keys) > 1:
        raise InputError(f"--compare needs models of the same dataset and split; got {sorted(keys)}")
    return specs[0]


def evaluate(target: str | Path, opts: EvalOptions | None = None, data: EvalData | None = None,
             progress: ProgressFn | None = None) -> dict[str, Any]:
    """Evaluate a bundle folder or a run folder (exported to a temporary fp32 bundle) -> report dict."""
    from bigmodel.runtime import load

    opts = opts or EvalOptions()
    opts.validate()
    say = reporter(progress, "eval")
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="bigmodel-eval-") as tmp:
        bundle = resolve_bundle(target, Path(tmp), say)
        with load(bundle, backend=opts.backend, device=opts.device, threads=opts.threads,
                  precision=opts.precision) as model:
            m = model.manifest
            name = {"target": str(target), "family": m.family, "arch": m.arch,
                    "precision": "fastest" if opts.precision == "fastest" else m.precision,
                    "backend": model.backend_name}
            return evaluate_model(model, m.data, name, opts, data, progress)


def resolve_bundle(target: Path, tmp: Path, say: Callable[[str], None]) -> Path:
    """A bundle folder as is; a run folder (checkpoint.pt) exported into `tmp` first."""
    if (target / MANIFEST_NAME).is_file():
        return target
    from bigmodel.models.checkpoint import CHECKPOINT_NAME

    if (target / CHECKPOINT_NAME).is_file():
        from bigmodel.export import ExportOptions, export_bundle

        say(f"exporting {target} to a temporary fp32 bundle")
        return export_bundle(target, ExportOptions(out=tmp / "bundle")).bundle
    raise InputError(f"{target}: expected a bundle folder (with {MANIFEST_NAME}) or a run folder (with "
                     f"{CHECKPOINT_NAME})")


def evaluate_model(model, spec: DataSpec, name: dict[str, Any], opts: EvalOptions, data: EvalData | None = None,
                   progress: ProgressFn | None = None) -> dict[str, Any]:
    """Every metric for anything with the runtime Model's methods (family, offers, encode, decode, sample)."""
    say = reporter(progress, "eval")
    t0 = time.perf_counter()
    opts.validate()
    if data is None:
        say("loading data and the feature classifier")
        data = load_eval_data(spec, opts)
    clf = data.classifier
    report: dict[str, Any] = {
        "model": name,
        "data": {"source": spec.source, "split": "validation", "images": len(data.val)},
        "classifier": None if clf is None else {"accuracy": clf.accuracy, "cache": str(clf.path),
                                                "cached": clf.cached},
        "skipped": {},  # metric -> why it was not computed
    }
    skipped = report["skipped"]
    x, y = data.val, data.val_labels
    if not opts.wants("reconstruction"):
        skipped["reconstruction"] = "not asked for (--metrics)"
    elif "encode" not in model.offers:
        skipped["reconstruction"] = f"a {model.family} has no encoder"
    else:
        say("reconstruction")
        report["reconstruction"] = reconstruction(model, x, y)
    if not opts.wants("nll"):
        skipped["nll"] = "not asked for (--metrics)"
    elif model.family != "vae":
        skipped["nll"] = f"-ELBO and IWAE need a VAE's likelihood; this is a {model.family}"
    else:
        say(f"-ELBO and IWAE bound, K={opts.k} on {min(opts.nll_images, len(x))} images")
        report["nll"] = nll(model, x[: opts.nll_images], opts, None if y is None else y[: opts.nll_images])
    if clf is None:
        skipped.update({m: data.no_classifier for m in NEEDS_LABELS if m not in skipped})
        if opts.picture is not None:
            write_picture(opts.picture, draw(model, PICTURE_PAIRS, opts.seed)[0], data.train)
            report["picture"] = str(opts.picture)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        return report
    say(f"{opts.samples} samples: FID, KID, precision/recall, coverage")
    # a conditional model samples its classes uniformly (Model.sample's rule); the classifier then says how
    # often a sample shows the class it was drawn for
    samples, drawn = draw(model, opts.samples, opts.seed)
    feats, predicted = clf.features(samples)
    if drawn is not None:
        report["label_agreement"] = float(np.mean(predicted == drawn))
    ref = data.reference_features
    report.update({"samples": len(feats), "reference": data.reference})
    coverage = metrics.class_coverage(predicted, clf.classes)
    if opts.wants("fid"):  # FID and KID, each with its standard error and its floor
        kid, kid_se = metrics.kernel_inception_distance(feats, ref, KID_SUBSETS, seed=opts.seed)
        report.update({"fid": metrics.frechet_distance(feats, ref),
                       "fid_se": metrics.fid_standard_error(feats, ref, FID_RESAMPLES, opts.seed),
                       "fid_floor": data.floor_fid, "kid": kid, "kid_se": kid_se,
                       "kid_floor": data.floor_kid[0], "kid_floor_se": data.floor_kid[1]})
    else:
        skipped["fid"] = "not asked for (--metrics)"
    if opts.wants("precision-recall"):
        n = min(len(feats), len(ref), PR_IMAGES)  # the same number of images a side: radii depend on it
        pick = np.random.default_rng(opts.seed).permutation(len(ref))[:n]  # a folder may be sorted by class
        precision, recall = metrics.precision_recall(ref[pick], feats[:n], opts.pr_k)
        report.update({"precision": precision, "recall": recall, "precision_recall_images": n})
    else:
        skipped["precision-recall"] = "not asked for (--metrics)"
    if opts.wants("coverage"):
        report.update({"coverage": [round(float(c), 4) for c in coverage],
                       "rare_classes": [int(i) for i in np.flatnonzero(coverage < RARE_CLASS)]})
    else:
        skipped["coverage"] = "not asked for (--metrics)"
    if opts.picture is not None:
        write_picture(opts.picture, samples[:PICTURE_PAIRS], data.train)
        report["picture"] = str(opts.picture)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def reconstruction(model, x: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """BCE (from the decoder's logits) and squared error of decode(encode(x)), summed per image, mean.

    labels: the images' classes, passed to the encoder and decoder that take them (a conditional VAE).
    """
    enc, dec = _labels_for(model, "encoder", labels), _labels_for(model, _image_role(model), labels)
    codes = _coded(model, model.encode(x) if enc is None else model.encode(x, labels=enc))
    bce = metrics.bce_per_image(_decode(model, codes, dec, logits=True), x)
    sse = metrics.sse_per_image(_decode(model, codes, dec), x)
    return {"bce": float(bce.mean()), "mse": float(sse.mean())}


def nll(model, x: np.ndarray, opts: EvalOptions, labels: np.ndarray | None = None) -> dict[str, float]:
    """-ELBO and the importance-weighted NLL bound (nats per image) from the same K draws per image.

    Codes of any shape are handled flat, (B, dim); labels go to the roles that take them.
    """
    rng = np.random.default_rng(opts.seed)
    per_call = max(1, opts.codes_per_call // opts.k)
    enc, dec = _labels_for(model, "encoder", labels), _labels_for(model, _image_role(model), labels)
    nelbo, iwae = [], []
    for i in range(0, len(x), per_call):
        xb = x[i : i + per_call]
        mu, logvar = model.encode(xb, full=True) if enc is None else \
            model.encode(xb, full=True, labels=enc[i : i + per_call])
        mu, logvar = mu.reshape(len(xb), -1), logvar.reshape(len(xb), -1)
        eps = rng.standard_normal((opts.k, len(xb), mu.shape[1]))
        yb = None if dec is None else np.tile(dec[i : i + per_call], opts.k)  # the K draws are k-major

        def decode_logits(z, yb=yb):
            return _decode(model, _coded(model, z), yb, logits=True)

        w = metrics.log_weights(xb, mu, logvar, eps, decode_logits)
        a, b = metrics.nll_bounds(w)
        nelbo.append(a)
        iwae.append(b)
    return {"k": opts.k, "images": len(x), "nelbo": float(np.concatenate(nelbo).mean()),
            "iwae": float(np.concatenate(iwae).mean())}


def _image_role(model) -> str:
    return "decoder" if "decoder" in model.manifest.roles else "generator"


def _labels_for(model, role: str, labels: np.ndarray | None) -> np.ndarray | None:
    """`labels` if the model's `role` takes class labels, else None."""
    spec = model.manifest.roles.get(role)
    takes = spec is not None and any(t.kind == "label" for t in spec.inputs)
    if takes and labels is None:
        raise InputError(f"this model's {role} takes class labels, and the evaluation data has none")
    return labels if takes else None


def _coded(model, codes: np.ndarray) -> np.ndarray:
    """Codes in the shape the decoder takes (an encoder's (B, dim) for a decoder of (B, dim, 1, 1) codes)."""
    shape = tuple(getattr(model, "latent_shape", codes.shape[1:]))
    return codes if codes.shape[1:] == shape else codes.reshape(len(codes), *shape)


def _decode(model, codes: np.ndarray, labels: np.ndarray | None, logits: bool = False) -> np.ndarray:
    return model.decode(codes, logits=logits) if labels is None else model.decode(codes, labels=labels, logits=logits)


def draw(model, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """n samples, and the classes a conditional model drew them for (uniform: Model.sample's rule) or None."""
    drawn = model.sample_labels(n, seed=seed) if getattr(model, "classes", None) else None
    return (model.sample(n, seed=seed) if drawn is None else model.sample(n, seed=seed, labels=drawn)), drawn


def write_picture(path: Path, samples: np.ndarray, train: np.ndarray) -> None:
    """Rows of 8 samples, each row followed by their nearest training images (pixel distance)."""
    from bigmodel.images import save_grid

    idx = metrics.nearest(samples, train)
    rows = []
    for i in range(0, len(samples), 8):
        rows += [samples[i : i + 8], train[idx[i : i + 8]]]
    save_grid(path, np.concatenate(rows), ncol=8)


NUMBERS = (("reconstruction", "bce"), ("reconstruction", "mse"), ("nll", "nelbo"), ("nll", "iwae"),
           ("fid",), ("kid",), ("precision",), ("recall",), ("label_agreement",))


def lookup(report: dict[str, Any], key: tuple[str, ...]) -> float | None:
    v: Any = report
    for k in key:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return float(v)


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per metric: a's value, b's value and b - a (None where one side lacks the metric)."""
    out = {}
    for key in NUMBERS:
        va, vb = lookup(a, key), lookup(b, key)
        if va is None and vb is None:
            continue
        out[".".join(key)] = {"this": va, "other": vb, "delta": None if va is None or vb is None else vb - va}
    return out
