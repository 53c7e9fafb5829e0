"""Error types that decide how a failure is reported."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: reported as one line on stderr, exit code 2, no traceback."""


class CandidateError(Exception):
    """A candidate that cannot be built or evaluated: becomes a FAIL trial with this reason."""
