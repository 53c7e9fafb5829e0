"""Where runs live: a local folder, or an fsspec URL that workers on several machines share.

A plain path (``runs``, ``/mnt/nfs/runs``) is used as it is: a shared file system shares it. An
fsspec URL (``s3://bucket/runs``, ``gs://...``, ``sftp://host/runs``, ``file:///...``) is mirrored:
every process works in a local staging folder (``$EDGEPARETO_STAGING``, else
``~/.cache/edgepareto/runs/<url>``) and copies through fsspec what others need:

- pulls the trained baselines and calibrations before it starts, and a run's files on resume;
- pushes the baselines it trained, the run's config, each trial's folder as soon as the trial ends,
  and the results (``pareto.csv``, ``trials.csv``, ``summary.json``) at the end;
- the driver pulls every trial's folder before it re-evaluates the front.

Files are copied one by one (``put_file``/``get_file``), so fsspec's folder-copy rules never nest a
folder inside another. fsspec is optional: ``pip install 'edgepareto[fsspec]'`` plus the file
system's own package (s3fs, gcsfs, ...).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.core.errors import UserError
from search.core.optional import require

URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(spec: str) -> bool:
    return bool(URL_RE.match(str(spec)))


def staging_for(url: str) -> Path:
    base = os.environ.get("EDGEPARETO_STAGING")
    if base:
        return Path(base)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", url).strip("-")
    return Path.home() / ".cache" / "edgepareto" / "runs" / slug


@dataclass(frozen=True)
class RunsRoot:
    """A runs root: ``local`` is where this process reads and writes; ``url`` (if any) is shared."""

    local: Path
    url: str | None = None

    @property
    def shared(self) -> bool:
        return self.url is not None

    def _fs(self) -> tuple[Any, str]:
        fsspec = require("fsspec", f"--runs-dir {self.url}")
        try:
            fs, base = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise UserError(f"cannot open --runs-dir {self.url}: {exc}") from None
        return fs, base.rstrip("/")

    def exists(self, rel: str) -> bool:
        if not self.shared:
            return (self.local / rel).exists()
        fs, base = self._fs()
        return fs.exists(f"{base}/{rel}")

    def push(self, rel: str | Path, recursive: bool = True) -> None:
        """Copy ``local/rel`` (a file or a folder; ``recursive=False``: its files only) to the
        shared root."""
        if not self.shared:
            return
        fs, base = self._fs()
        source = self.local / rel
        found = source.rglob("*") if recursive else source.glob("*")
        files = [source] if source.is_file() else sorted(p for p in found if p.is_file())
        for path in files:
            target = f"{base}/{path.relative_to(self.local).as_posix()}"
            fs.makedirs(target.rpartition("/")[0], exist_ok=True)
            fs.put_file(str(path), target)

    def pull(self, rel: str | Path, recursive: bool = True) -> None:
        """Copy ``rel`` (a file or a folder; ``recursive=False``: its files only) from the shared
        root into ``local``, skipping files already here with the same size; nothing when it does
        not exist there."""
        if not self.shared:
            return
        fs, base = self._fs()
        remote = f"{base}/{Path(rel).as_posix()}"
        if not fs.exists(remote):
            return
        if fs.isfile(remote):
            found = {remote: fs.info(remote)}
        elif recursive:
            found = fs.find(remote, detail=True)
        else:
            found = {i["name"]: i for i in fs.ls(remote, detail=True) if i["type"] == "file"}
        for path, info in found.items():
            target = self.local / str(path)[len(base):].lstrip("/")
            if target.is_file() and target.stat().st_size == info.get("size"):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, str(target))


def open_root(spec: str | Path) -> RunsRoot:
    """A path as it is; a URL mirrored through a local staging folder."""
    spec = str(spec)
    if is_url(spec):
        return RunsRoot(staging_for(spec), spec)
    return RunsRoot(Path(spec))
