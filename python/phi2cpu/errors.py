"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class Phi2Error(Exception):
    """Base class: every error phi2cpu raises on purpose."""


class ModelFileError(Phi2Error):
    """A model file or checkpoint is missing, truncated, corrupt, or not a Phi-2 model."""


class ContextFullError(Phi2Error):
    """The prompt plus requested tokens do not fit in the context window."""


class SamplingError(Phi2Error, ValueError):
    """An invalid sampling or generation parameter."""


class GrammarError(Phi2Error, ValueError):
    """A JSON schema or grammar that cannot be used, or an output it cannot constrain."""


class TemplateError(Phi2Error, ValueError):
    """A chat template that cannot be read, compiled or rendered for the given messages."""


class DownloadError(Phi2Error):
    """Getting a model from the hub failed: not found, unreachable, cut short, or not the bytes it should be."""


def error_message(e: BaseException) -> str:
    """One line for the user: an OSError as 'path: reason', anything else as its text."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)
