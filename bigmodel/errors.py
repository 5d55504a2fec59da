"""Error kinds raised by library code; the command line (`bigmodel.cli`) turns them into one line and an exit code."""


class BigmodelError(Exception):
    """Base of every error bigmodel raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 2


class InputError(BigmodelError):
    """An input (array, argument, option value) is not what was expected."""


class DataError(InputError):
    """A dataset cannot be read or does not have the expected form."""


class ConfigError(InputError):
    """An unknown family/arch or an invalid model or training setting."""


class CheckpointError(BigmodelError):
    """A checkpoint is missing, truncated, or not one of ours."""


class BundleError(BigmodelError):
    """An exported bundle is missing, incomplete, altered or incompatible."""


class ExportError(BigmodelError):
    """Export could not produce a correct bundle."""


class BackendUnavailable(BigmodelError):
    """An optional package or device a backend needs is absent; the message names the extra."""


class StorageError(BigmodelError):
    """The machine refused a write: disk full, read-only filesystem, no permission. Exit code 3."""

    exit_code = 3


class CheckFailed(BigmodelError):
    """A verification (parity, doctor) ran and found a failure."""

    exit_code = 1


def missing_package(package: str, extra: str, purpose: str) -> BackendUnavailable:
    """The error for an optional package that is not installed."""
    return BackendUnavailable(
        f"{purpose} needs the '{package}' package, which is not installed; "
        f"install it with: pip install 'bigmodel[{extra}]'"
    )
