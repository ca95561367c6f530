"""The CLI's console streams: :class:`Tee` (every console line also in the run's log file) and
:func:`launcher_output_to_log`, which keeps a launcher's own output off a quiet console.

Why the launcher needs its own switch: TorchDistributor streams everything torchrun prints (the
elastic agent's INFO lines and, on this machine, an "Error waiting on exit barrier ...
DistNetworkError" traceback after every successful run) to the driver, where a server thread
writes it to ``sys.stderr``. Without ``--verbose`` those lines belong in the log file only; a
failed fit still reaches the console as the error :func:`.models.neural.distributed.run_with_retries`
raises, which names the rank and its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Tee:
    """A text stream that writes to the console stream and to the log file (every line of the
    console is in the log); a terminal or not is the console's answer. ``quiet``: the console
    was asked for without ``--verbose`` (:func:`launcher_output_to_log` then sends a launcher's
    output to the log only)."""

    def __init__(self, console: TextIO, log: TextIO, quiet: bool = False) -> None:
        self.console, self.log, self.quiet = console, log, quiet

    def write(self, text: str) -> int:
        """Write ``text`` to both; the log never stops the console."""
        write_log(self.log, text)
        return self.console.write(text)

    def flush(self) -> None:
        """Flush both streams."""
        self.console.flush()
        if not self.log.closed:
            self.log.flush()

    def isatty(self) -> bool:
        """Whether the console is a terminal (progress lines draw a bar of blocks there)."""
        return self.console.isatty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


class LogOnly:
    """A text stream that writes to a log file only (what a quiet console leaves out)."""

    def __init__(self, log: TextIO) -> None:
        self.log = log

    def write(self, text: str) -> int:
        """Write ``text`` to the log."""
        write_log(self.log, text)
        return len(text)

    def flush(self) -> None:
        """Flush the log."""
        if not self.log.closed:
            self.log.flush()

    def isatty(self) -> bool:
        """Never a terminal."""
        return False


def write_log(log: TextIO, text: str) -> None:
    """Append ``text`` to ``log``, unless the log is closed already (a late write at interpreter exit)."""
    try:
        log.write(text)
    except ValueError:
        pass


@contextmanager
def launcher_output_to_log() -> Iterator[None]:
    """Inside the block, ``sys.stderr`` goes to the log file only when it is a quiet :class:`Tee`
    (the CLI without ``--verbose``); anywhere else (``--verbose``, a notebook, pytest, a library
    caller) nothing changes. Meant for the span of one launcher run, whose helper threads write
    to ``sys.stderr`` while the caller waits."""
    stream = sys.stderr
    if not (isinstance(stream, Tee) and stream.quiet):
        yield
        return
    sys.stderr = LogOnly(stream.log)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr = stream
