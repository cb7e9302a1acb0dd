"""Imports the compiled extension and wires its errors to errors.py."""

from . import errors

try:
    from . import _native
except ImportError as exc:  # pragma: no cover - a broken install
    raise ImportError(
        f"htsparse_llama's native extension failed to load ({exc}); reinstall with `pip install .` from the repository"
    ) from exc

_native._register_errors(
    errors.InvalidArgumentError,
    errors.ModelNotFoundError,
    errors.InvalidModelFileError,
    errors.UnsupportedModelError,
    errors.ContextOverflowError,
    errors.BackendError,
    errors.AbortedError,
)

native = _native
