"""Running the CLI as a test would (in-process, or ``python -m search`` in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from search.cli.main import main

#: The repository root.
ROOT = Path(__file__).resolve().parents[2]
#: The tiny model every quick search uses (its baseline is trained once per session, see
#: ``tests/support/runs.py`` and the ``tiny_baseline`` fixture).
TINY = ["--model", "test_resnet", "--img-size", "16", "--epochs", "2", "--quiet"]


def run_cli(args: list[str], capfd) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(args)
    out, err = capfd.readouterr()
    return code, out, err


def run_module(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m search`` in a subprocess, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env=env,
    )
