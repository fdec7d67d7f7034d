"""The one exception type users see as a one-line message instead of a traceback."""

from __future__ import annotations


class FramebagError(Exception):
    """Bad input or a failed run, explained in one sentence naming the culprit.

    The CLI prints it on stderr with a non-zero exit and no traceback (unless
    ``--debug``); the Python API raises it as is.
    """

    exit_code = 2


class FrameError(FramebagError):
    """A registered function raised on a frame (names function, scan index and cause)."""


class ValueKindError(FrameError):
    """A function returned a value that is not numeric, or not of its first value's dtype
    (or shape, for a stack). Never skipped by ``on_error="skip"``: it is a bug in the
    function, not a bad frame."""

    #: what fixes it, for the sentence that stops the run; "" for the usual advice (one
    #: fixed shape and dtype for every frame)
    fix: str = ""

class SetupError(FramebagError):
    """A per-worker setup function raised (names the setup, the process it ran in and the
    cause)."""
