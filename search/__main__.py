"""``python -m search`` is the same as ``edgepareto``."""

from search.cli.main import entry

entry()
