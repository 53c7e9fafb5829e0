"""Run folders for tests: trained baselines shared by the session, and what a running search shows.

A search trains its base model once per runs dir and caches it under ``RUNS/.cache/baselines/<key>/``
(``search.task.baseline``). Tests give every search a runs dir of its own, so :class:`Baselines` trains
each baseline once per session and :func:`seed` copies its cache folder into a fresh runs dir: the
search finds it cached, as a user's second search would.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.config.run_config import RunConfig
from search.task.baseline import CACHE_DIR, prepare


def _quiet(_message: str) -> None:
    pass


class Baselines:
    """Baselines trained once each under ``root`` (one runs root per setting), by the same code a
    search uses, so their cache keys are the ones a search with those settings computes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._made: dict[str, list[Path]] = {}

    def folders(self, model: str = "test_resnet", img_size: int = 16, epochs: int = 2,
                **settings: Any) -> list[Path]:
        """The cache folders (``.cache/baselines/<key>``) of ``model`` (a comma list: each of them)
        and of a named ``teacher``, trained with these settings; the defaults are ``TINY``'s flags."""
        key = json.dumps({"model": model, "img_size": img_size, "epochs": epochs, **settings},
                         sort_keys=True, default=str)
        if key not in self._made:
            root = self.root / f"setting-{len(self._made)}"
            cfg = RunConfig(model=model, img_size=img_size, epochs=epochs, **settings)
            for name in cfg.models:
                prepare(cfg, name, root, _quiet, _quiet)
            self._made[key] = sorted((root / CACHE_DIR).iterdir())
        return self._made[key]

    def seed(self, runs: Path, **settings: Any) -> Path:
        """Copy the baselines of :meth:`folders` (``settings``) into ``runs``; returns ``runs``."""
        return seed(runs, *self.folders(**settings))


def seed(runs: Path, *folders: Path) -> Path:
    """Copy baseline cache folders into the runs dir ``runs`` (made if missing); returns ``runs``."""
    for folder in folders:
        shutil.copytree(folder, Path(runs) / CACHE_DIR / folder.name, dirs_exist_ok=True)
    return Path(runs)


def building(run: Path, number: int) -> bool:
    """Trial ``number`` of ``run`` is in its torch or export steps: started, its result not yet
    written (so not yet reported or told either)."""
    folder = run / "trials" / f"{number:04d}"
    return (folder / "params.json").is_file() and not (folder / "metrics.json").exists()


def slow_space(folder: Path) -> Path:
    """A space file in ``folder`` whose trials take a few seconds each (pruning, then fine-tuning),
    so that a test can interrupt a search in the middle of a trial."""
    space = folder / "space.yaml"
    space.write_text(
        "techniques:\n  prune: {ratio: [0.2, 0.6]}\n  distill: {enabled: always, epochs: 3}\n"
    )
    return space


def wait_until(condition: Callable[[], Any], timeout: float, what: str, poll: float = 0.05,
               alive: Callable[[], None] | None = None) -> Any:
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what``); ``alive`` may raise meanwhile, e.g. when a process died."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)
