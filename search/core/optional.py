"""Optional dependencies, imported on first use through one mechanism (after Optuna's ``try_import``).

A missing package is a ``UserError`` that names the feature needing it and the command installing it,
never a traceback from deep inside a search. ``import search`` and reading a finished run need none
of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from search.core.errors import UserError

#: Top-level package -> what to install for it.
INSTALL = {
    "ray": "pip install 'edgepareto[ray]'",
    "fsspec": "pip install 'edgepareto[fsspec]'",
    "psycopg2": "pip install 'edgepareto[postgres]'",
    "plotly": "pip install plotly",
    "fastapi": "pip install fastapi uvicorn",
    "uvicorn": "pip install fastapi uvicorn",
    "nni": "pip install 'edgepareto[nni]'",
}


def require(module: str, feature: str) -> ModuleType:
    """``import module`` for ``feature``; a ``UserError`` naming the package to install otherwise."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there, but something it imports is broken: show the real error
        how = INSTALL.get(top, f"pip install {top}")
        raise UserError(f"{feature} needs {top}, which is not installed: {how}") from None


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None

