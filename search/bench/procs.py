"""Processes on Linux, read from ``/proc``: whose parent each one is."""

from __future__ import annotations

import os
from pathlib import Path


def parents(live_only: bool = False) -> dict[int, int]:
    """pid -> parent pid of every process (``/proc/PID/stat``); ``live_only`` leaves out zombies."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if live_only and state in ("Z", "X"):
            continue
        out[int(entry.name)] = int(parent)
    return out


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    return [child for child, parent in parents(live_only=True).items() if parent == pid]
