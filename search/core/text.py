"""One-line text: how every error, reason and message is flattened before it reaches a user.

A failed trial's reason, a ``UserError`` quoting a library's message, a service error and a remote
agent's answer all go through :func:`one_line`. (``targets/agent.py`` keeps a standard-library copy,
since it runs alone on a device; a test holds the two to the same output.)
"""

from __future__ import annotations

#: The longest line a message keeps; longer ones end in "...".
MAX_LINE = 300
#: A failed trial's reason may say a little more (it is read in trials.csv, not on a terminal).
MAX_REASON = 400


def one_line(text: object, limit: int = MAX_LINE) -> str:
    """``text`` with its whitespace collapsed to single spaces, at most ``limit`` characters."""
    flat = " ".join(str(text).split()) or "no message"
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), shortened."""
    text = str(exc).strip()
    return one_line(text.splitlines()[0] if text else type(exc).__name__)


def reason(exc: BaseException, limit: int = MAX_REASON) -> str:
    """``Type: message`` on one line: why a trial or a job failed."""
    return f"{type(exc).__name__}: {one_line(exc, limit)}"
