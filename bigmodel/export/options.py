"""What `bigmodel export` can be asked, checked before any work, and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bigmodel.errors import InputError
from bigmodel.limits import check_items
from bigmodel.manifest import Manifest

MIN_OPSET = 18  # the oldest opset torch.onnx's dynamo exporter writes natively
# The fp32 graph is held to `bigmodel parity`'s fp32 rules (bigmodel.parity.tolerances): images
# within 1e-5, codes and logits within 1e-5 + 1e-5·|value| (a discriminator's logits on noise images
# reach ~30-60, where float32 summation order alone moves them by ~1e-5), plus cosine/PSNR floors.
FP32_ATOL = 1e-5  # the image bound, TOLERANCES["fp32"]["image"].atol; what the CLI reports against

ABS_CHECKED = ("val", "prior", "extreme")  # the probe sets whose max abs error the CLI reports

PRECISIONS = ("fp32", "fp16", "int8", "bf16")

IO_DTYPES = ("fp32", "fp16")

INT8_MODES = ("static", "dynamic", "weights")

SAMPLE_BYTES = 4 * 3 * 64 * 64 * 4  # one float32 sample up to 3x64x64 with its activations and copies (bounds)

FP32_DIR = "fp32"  # fp16/int8 exports keep the fp32 graphs here while converting; removed before the rename


@dataclass
class ExportOptions:
    """What `bigmodel export` was asked; see its --help for each field."""

    out: Path | None = None
    opset: int = MIN_OPSET
    precision: str = "fp32"
    io: str = "fp32"  # fp16 bundles: dtype of graph inputs/outputs
    int8_mode: str = "static"  # static (QDQ, calibrated) | dynamic | weights (int8 weight-only MatMulNBits)
    calibration: int = 256
    max_batch: int = 1024
    opt_batch: int = 64
    engine: bool = False
    triton: Path | None = None
    force: bool = False
    external_data: bool | None = None  # None: only when the weights pass 2 GiB
    probes: int = 64  # inputs per probe set in the fp32 check against PyTorch
    allow_failing: bool = False  # fp16/int8: write a bundle whose checks failed, with the failures in its manifest
    forms: tuple[str, ...] = ()  # other precisions verified beside an fp32 default (--precision fp32,int8,bf16)


def split_precisions(value: str) -> tuple[str, tuple[str, ...]]:
    """'fp32,int8,bf16' -> ('fp32', ('int8', 'bf16')): the default precision, then the other forms."""
    names = [p.strip() for p in str(value).split(",")]
    return names[0], tuple(names[1:])


@dataclass
class RoleReport:
    role: str
    file: str
    bytes: int
    seconds: float
    max_abs_err: dict[str, float] = field(default_factory=dict)  # fp32 graph vs PyTorch, per probe set


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    roles: list[RoleReport]
    seconds: float
    quality: dict[str, dict] = field(default_factory=dict)  # fp16/int8 vs fp32 graphs, per role
    triton: Path | None = None
    failures: list[str] = field(default_factory=list)  # fp16/int8 checks that failed (only with allow_failing)

    def to_dict(self) -> dict:
        """The export report as JSON-ready data (`bigmodel export --json`)."""
        from dataclasses import asdict

        return {"bundle": str(self.bundle), "seconds": self.seconds, "roles": [asdict(r) for r in self.roles],
                "quality": self.quality, "failures": self.failures,
                "triton": str(self.triton) if self.triton else None, "manifest": self.manifest.to_dict()}


def validate_options(opts: ExportOptions) -> None:
    """Refuse bad option values before any work starts."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opts.opset <= newest:
        raise InputError(f"--opset must be between {MIN_OPSET} and {newest} (what the installed torch exporter and "
                         f"onnx {onnx.__version__} write); got {opts.opset}")
    if opts.precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)} (or several, fp32 first: "
                         f"fp32,int8,bf16); got {opts.precision!r}")
    if opts.forms:
        given = ",".join((opts.precision, *opts.forms))
        if opts.precision != "fp32":
            raise InputError(f"--precision with several precisions starts with fp32, the form the others are "
                             f"verified against; got {given}")
        bad = [p for p in opts.forms if p not in PRECISIONS or p == "fp32"]
        if bad or len(set(opts.forms)) != len(opts.forms):
            raise InputError(f"--precision: after fp32, each of {', '.join(p for p in PRECISIONS if p != 'fp32')} "
                             f"at most once; got {given}")
        if opts.engine:
            raise InputError(f"--engine builds TensorRT engines of one precision; got --precision {given}")
    if opts.io not in IO_DTYPES:
        raise InputError(f"--io must be one of {', '.join(IO_DTYPES)}; got {opts.io!r}")
    if opts.io == "fp16" and opts.precision != "fp16":
        raise InputError(f"--io fp16 needs --precision fp16; got --precision {opts.precision}")
    if opts.int8_mode not in INT8_MODES:
        raise InputError(f"--int8-mode must be one of {', '.join(INT8_MODES)}; got {opts.int8_mode!r}")
    if opts.calibration < 1:
        raise InputError(f"--calibration must be >= 1; got {opts.calibration}")
    if opts.max_batch < 1 or opts.opt_batch < 1:
        raise InputError(f"--max-batch and --opt-batch must be >= 1; got {opts.max_batch} and {opts.opt_batch}")
    check_items(opts.calibration, "--calibration", SAMPLE_BYTES, "calibration samples")
    check_items(opts.max_batch, "--max-batch", SAMPLE_BYTES, "samples of a batch")
    check_items(opts.probes, "probes", SAMPLE_BYTES, "probe samples", least=2)
    if opts.opt_batch > opts.max_batch:
        raise InputError(f"--opt-batch must be <= --max-batch; got {opts.opt_batch} > {opts.max_batch}")
    if opts.probes < 2:
        raise InputError(f"probes must be >= 2 (batch 1 and an odd batch are checked); got {opts.probes}")
    if opts.engine and opts.precision == "bf16":
        raise InputError("--engine with --precision bf16: bigmodel builds TensorRT engines in fp32, fp16 or int8; "
                         "bf16 runs on OpenVINO's CPU plugin (ov-cpu)")
    if opts.engine and opts.precision == "int8" and opts.int8_mode != "static":
        raise InputError(f"--engine with --precision int8 needs --int8-mode static: TensorRT builds int8 engines "
                         f"from QDQ graphs; got --int8-mode {opts.int8_mode}")
