"""Exceptions raised by htsparse_llama.

Every problem a user can cause (a missing or broken model file, a bad
argument, a prompt longer than the context) raises one of these; the native
runtime never aborts the interpreter.
"""


class HtsError(Exception):
    """Base class of every htsparse_llama error."""


class InvalidArgumentError(HtsError, ValueError):
    """A parameter value is out of range or inconsistent."""


class VideoError(InvalidArgumentError):
    """A video or image input cannot be used: the file is missing or
    unreadable, has no video stream, is empty, truncated or corrupt, or a
    sampling argument (fps, max frames, start/end, visual-token budget) is out
    of range for it."""


class ModelNotFoundError(HtsError, FileNotFoundError):
    """The model file does not exist or cannot be opened."""


class InvalidModelFileError(HtsError, ValueError):
    """The file is not GGUF, is truncated, or its tensors are inconsistent."""


class UnsupportedModelError(HtsError):
    """The GGUF holds an architecture this runtime does not run."""


class ContextOverflowError(HtsError):
    """The prompt or the generation does not fit the session's context."""


class BackendError(HtsError, RuntimeError):
    """A ggml backend failed (allocation, computation)."""


class AbortedError(HtsError):
    """A progress callback asked to stop midway; reset the session before using it again."""
