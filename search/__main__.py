"""``python -m search`` is the same as ``edgepareto``."""

from search.cli import entry

entry()
