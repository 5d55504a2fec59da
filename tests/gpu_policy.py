"""pytest hook: with BIGMODEL_REQUIRE_GPU=1, a `gpu` test that skips is a failure (benchmarks/gpu_check.sh sets it).

On a GPU machine every GPU test must run; a skip there means a missing library or a broken install,
which the check exists to catch.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_GPU = "BIGMODEL_REQUIRE_GPU"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(REQUIRE_GPU) == "1" and item.get_closest_marker("gpu") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_GPU}=1 and this GPU test skipped: {reason}"
