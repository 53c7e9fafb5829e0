"""edgepareto: compression search for vision models, returning Pareto-optimal ONNX files.

The Python API (the CLI is a thin layer over it)::

    from search import RunConfig, load_run, run_search
    run_search(RunConfig(name="demo", trials=20))
    run = load_run("runs/demo")
    print(run.pareto)                                  # the front, a pandas DataFrame
    print(run.select(max_latency_ms=5.0).message())    # best accuracy under 5 ms

Heavy modules are imported on first use, so ``import search`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig", "UserError", "load_report", "load_run", "resume_search", "run_search", "run_worker"]

_LAZY = {
    "RunConfig": "search.config.run_config",
    "UserError": "search.core.errors",
    "run_search": "search.study.engine",
    "resume_search": "search.study.engine",
    "run_worker": "search.study.engine",
    "load_report": "search.front.run",
    "load_run": "search.front.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
