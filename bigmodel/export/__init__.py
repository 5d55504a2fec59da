"""Export to a bundle: one ONNX graph per role, manifest.json, optional engines.

`export_bundle(RUN_DIR)` exports a `bigmodel train` run; `export_modules(roles, data, out, ...)`
the user's own modules (declared with `IO` / `Role`, or a family preset).
"""

from bigmodel.export.bundle import ExportOptions, ExportResult, export_bundle
from bigmodel.export.declare import IO, Role
from bigmodel.export.modules import export_modules

__all__ = ["IO", "ExportOptions", "ExportResult", "Role", "export_bundle", "export_modules"]
