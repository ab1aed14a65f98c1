"""Child processes of a fleet run (the fleet soak, the kill tests): started, read, signalled.

Theory of operation
-------------------
A :class:`Child` is one process started with pipes on its stdin and stdout.  A daemon thread
pumps its stdout into a queue, so the parent never blocks on it; :meth:`Child.read` takes in
every *complete* line printed so far (a line cut short by a kill is dropped) and hands each
one to :meth:`Child.take`, which subclasses override to parse their protocol.  Commands go to
the child's stdin, one per line.  :meth:`Child.kill` is ``kill -9``; every line the child wrote
before it died stays readable.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import IO, Any

__all__ = ["Child"]


class Child:
    """One child process and the lines it printed (see the module docstring)."""

    def __init__(self, label: str, argv: list[str], cwd: Path, stderr: Path | None = None) -> None:
        self.label = label
        self.stderr = stderr
        self.argv = argv
        self.cwd = cwd
        self.process: subprocess.Popen[str] | None = None
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.pump: threading.Thread | None = None

    def start(self, *extra: str) -> None:
        """Start the process: ``argv`` followed by ``extra``; its stderr goes to the file
        ``stderr`` (appended), or is discarded."""
        self.lines = queue.SimpleQueue()
        with contextlib.ExitStack() as stack:
            err: Any = subprocess.DEVNULL
            if self.stderr is not None:
                err = stack.enter_context(self.stderr.open("a"))
            self.process = subprocess.Popen(
                [*self.argv, *extra],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=self.cwd,
            )
        stdout = self.process.stdout
        assert stdout is not None
        self.pump = threading.Thread(target=_pump, args=(stdout, self.lines), daemon=True)
        self.pump.start()

    def read(self) -> None:
        """Hand every complete line printed so far to :meth:`take`."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return
            if line.endswith("\n"):  # else cut short by a kill
                self.take(line.rstrip("\n"))

    def take(self, line: str) -> None:
        """One line the child printed (without its newline)."""

    def send(self, command: str) -> None:
        """Write ``command`` to the child's stdin, as one line."""
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def signal(self, number: int) -> None:
        assert self.process is not None
        os.kill(self.process.pid, number)

    def kill(self) -> None:
        """``kill -9``, then reap it, take in what it printed before (up to the end of its
        stdout: nothing it wrote is lost to the kill) and close its pipes."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        if self.pump is not None:
            self.pump.join(timeout=10)
        self.close()

    def close(self) -> None:
        assert self.process is not None
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _pump(stream: IO[str], lines: queue.SimpleQueue[str]) -> None:
    try:
        for line in stream:
            lines.put(line)
    except ValueError:  # closed by the parent meanwhile
        pass
