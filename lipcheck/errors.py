"""Errors a user can cause, each with the exit code the CLI maps it to.

Exit codes (documented in the README):
  0  ok
  1  a `check` threshold failed
  2  user or model error (bad file, bad option, unsupported op, NaN weights, ...)
  3  no finite bound (the model contains an op that is not globally Lipschitz)
"""
from __future__ import annotations

EXIT_OK = 0
EXIT_THRESHOLD = 1
EXIT_USER_ERROR = 2
EXIT_NO_FINITE_BOUND = 3


class LipcheckError(Exception):
    """Base class: one clear line for the user, and an exit code."""

    exit_code = EXIT_USER_ERROR
    code = "error"


class UserError(LipcheckError):
    """A bad option or argument."""

    code = "user_error"


class ModelLoadError(LipcheckError):
    """The file is missing, not a model, corrupt or refused."""

    code = "model_error"


class UnsafeFileError(ModelLoadError):
    """Loading would run code or escape the model's folder."""

    code = "unsafe_file"


class ShapeError(LipcheckError):
    """Input shapes are dynamic, missing or do not fit the model."""

    code = "shape_error"


class GraphError(LipcheckError):
    """The graph is malformed (undefined values, cycles, duplicates)."""

    code = "graph_error"


class BadWeightsError(LipcheckError):
    """NaN or Inf in the model's parameters."""

    code = "bad_weights"


class UnsupportedOpsError(LipcheckError):
    """Ops the IR cannot represent; all of them are collected and reported at once."""

    code = "unsupported_op"

    def __init__(self, unsupported: dict[str, list[str]], detail: str = "") -> None:
        self.unsupported = unsupported  # op type -> node names
        parts = [f"{op} x{len(nodes)} ({', '.join(nodes[:3])}{', ...' if len(nodes) > 3 else ''})"
                 for op, nodes in sorted(unsupported.items())]
        message = "unsupported op(s): " + "; ".join(parts)
        if detail:
            message += f": {detail}"
        super().__init__(message)
