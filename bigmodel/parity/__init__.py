"""Parity: every backend's outputs against the PyTorch model from the checkpoint, per role and chain.

The reference is the checkpoint the bundle was exported from (its sha256 must match the
manifest's), in eval mode, on the CPU, in float32. Each role graph, and the composed chains
(encoder -> decoder, generator -> discriminator, an AAE's encoder -> discriminator), runs through
`bigmodel.runtime.load(bundle, backend=...)` and `Model.run` -- what users run -- on real
validation images, uniform-noise images, prior samples and latents out to ±4σ, at batch 1 and at
an odd batch > 1. Every output is compared in float64 against tolerances named per precision and
per kind of output (`TOLERANCES`). A failure is a failure: `ParityReport.passed` is False and the
CLI exits 1 naming the role, output, statistic, the worst element's index and both values.

>>> report = run_parity("runs/vae/bundle")
>>> report.passed, report.failures()[:1]
"""

from bigmodel.parity.inputs import CHAINS, DEFAULT_SAMPLES, save_inputs, save_polygraphy_inputs
from bigmodel.parity.report import BackendRun, Case, ParityReport, ProbeInput
from bigmodel.parity.run import run_parity
from bigmodel.parity.stats import Failure, OutputCheck, compare
from bigmodel.parity.tolerances import PRECISIONS, REL_EPS, TOLERANCES, Tolerance, tolerances_for

__all__ = ["BackendRun", "CHAINS", "Case", "DEFAULT_SAMPLES", "Failure", "OutputCheck", "PRECISIONS", "ParityReport",
           "ProbeInput", "REL_EPS", "TOLERANCES", "Tolerance", "compare", "run_parity", "save_inputs",
           "save_polygraphy_inputs", "tolerances_for"]
