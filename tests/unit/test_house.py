"""The house rules (.ci/house.py): the project keeps them, and the checker catches each breach."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / ".ci" / "house.py"

spec = importlib.util.spec_from_file_location("house", CHECKER)
house = importlib.util.module_from_spec(spec)
spec.loader.exec_module(house)


def tree(root: Path, files: dict[str, str]) -> Path:
    """A project of the three packages with the given modules (path -> source)."""
    for package in ("search", "spaces", "targets"):
        (root / package).mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").touch()
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != root and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").touch()
        path.write_text(source)
    return root


def test_the_project_keeps_the_rules():
    done = subprocess.run([sys.executable, str(CHECKER), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("house rules hold")


def test_a_cycle_through_a_function_level_import_is_caught(tmp_path):
    root = tree(tmp_path, {
        "search/study/engine.py": "from search.study.ray import run\n",
        "search/study/ray.py": "def run():\n    from search.study.engine import loop\n",
    })
    found = house.violations(root)
    assert found == ["rule 1: import cycle: search.study.engine <-> search.study.ray"]


def test_relative_imports_and_type_checking_blocks(tmp_path):
    root = tree(tmp_path, {
        "search/front/run.py": "from ..outputs import export\n",
        "search/outputs/export.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from search.front.run import Report\n"
        ),
    })
    assert house.violations(root) == []  # a type-only import never runs
    (root / "search/outputs/export.py").write_text("from search.front import run\n")
    assert house.violations(root) == ["rule 1: import cycle: search.front.run <-> search.outputs.export"]


def test_libraries_may_import_only_the_core(tmp_path):
    root = tree(tmp_path, {
        "search/core/errors.py": "class UserError(Exception): ...\n",
        "search/study/engine.py": "",
        "spaces/base.py": "from search.core.errors import UserError\n",
        "targets/host.py": "def f():\n    import search.study.engine\n",
        "spaces/train.py": "from search import RunConfig\n",
    })
    assert house.violations(root) == [
        "rule 2: spaces.train imports search (libraries may import only search.core)",
        "rule 2: targets.host imports search.study.engine (libraries may import only search.core)",
    ]


def test_at_most_eight_modules_directly_in_search(tmp_path):
    root = tree(tmp_path, {f"search/m{i}.py": "" for i in range(8)})
    found = house.violations(root)
    assert len(found) == 1 and found[0].startswith("rule 3: 9 modules directly in search/")
    assert house.main(["house.py", str(root)]) == 1
