"""Library chatter kept off the console: while a trial runs, what libraries log (Python ``logging``,
``warnings``) or print to stdout goes to the trial's log file (``trials/NNNN/trial.log``, see
``search.core.layout``). The console keeps our own progress lines and warnings, which
``search.study.progress`` writes to stderr.

onnxruntime's quantizer, for one, calls ``logging.warning`` on the root logger for every weight it
cannot quantize per channel (``Axis 1 is out-of-range ...``: dozens of lines for a ConvNeXt or a DeiT);
with no handler on the root logger, ``logging`` would print each of them to stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class LogFile(io.TextIOBase):
    """Text appended to ``path``, line-buffered. Until the folder of ``path`` exists (the objective
    creates the trial's folder itself, and never over an existing one) the text is held in memory;
    ``close`` writes what is still held, creating the folder then."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._held: list[str] = []
        self._file: TextIO | None = None

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._file is None and self.path.parent.is_dir():
            self._open()
        if self._file is None:
            self._held.append(text)
        else:
            self._file.write(text)
        return len(text)

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is None and self._held:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def _open(self) -> None:
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._file.write("".join(self._held))
        self._held.clear()


@contextlib.contextmanager
def library_output_to(path: Path) -> Iterator[LogFile]:
    """While inside: records reaching the root logger, ``warnings`` and stdout go to ``path`` and
    nowhere else; the root logger's handlers, the warnings capture and stdout are restored after."""
    log = LogFile(path)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [handler]  # a handler in place: logging.warning() no longer adds one for stderr
    capturing = _capturing_warnings()
    logging.captureWarnings(True)
    try:
        with contextlib.redirect_stdout(log):
            yield log
    finally:
        logging.captureWarnings(capturing)
        root.handlers = saved
        handler.close()
        log.close()


def _capturing_warnings() -> bool:
    """Whether ``warnings`` already go to ``logging`` (``logging.captureWarnings(True)``)."""
    return warnings.showwarning is logging._showwarning  # type: ignore[attr-defined]
