"""Is a setting a file or a name? One rule for the CLI, the worker and the service.

``--teacher`` takes ``base``, a timm model name, or a checkpoint file; ``--space`` takes ``auto``, a
preset name, or a YAML file. A value is a file when it holds a path separator or ends in one of the
setting's file suffixes; anything else is a name and is never looked up on disk. The service confines
every file to its data root by this same rule, so a name that happens to match a file in the worker's
folder (``service.db``) can never be loaded as a checkpoint or a space.
"""

from __future__ import annotations

import re
from pathlib import PurePath

#: Suffixes of checkpoint files (PyTorch, timm training checkpoints, safetensors).
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: Suffixes of search-space files.
SPACE_SUFFIXES = (".yaml", ".yml")


#: What a name (a timm model, a space preset) is made of: never a path, never a control character.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_name(value: str) -> bool:
    """Whether ``value`` can be a name: letters, digits, ``_``, ``.`` and ``-``, and not a file."""
    return bool(NAME_RE.match(value)) and not is_file_reference(value, ())


def is_file_reference(value: str, suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> bool:
    """Whether ``value`` names a file (a separator, or one of ``suffixes``) rather than a name."""
    return "/" in value or "\\" in value or PurePath(value).suffix.lower() in suffixes
