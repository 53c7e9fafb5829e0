"""Error types that decide how a failure is reported."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2, no traceback.

    ``field`` names the setting the error is about (a ``RunConfig`` field such as ``img_size``) when
    there is one, so the service answers 422 naming it without reading the message.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CandidateError(Exception):
    """A candidate that cannot be built or evaluated: becomes a FAIL trial with this reason."""
