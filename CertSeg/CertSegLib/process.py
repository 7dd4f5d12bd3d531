"""Runs the CertSeg backend in a child process and reports its progress without blocking the GUI.

The child prints the progress-line protocol (certseg.progress, which also parses it); a reader thread
queues its output and the GUI drains the queue from a timer.  Cancel ends the
whole process tree: the child is started as the leader of a new process group
(a new console process group on Windows), and the group is killed.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from certseg.progress import parse_progress_line

EXIT_CANCELLED = -15


@dataclass
class Progress:
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def parse_line(line: str) -> Progress | str:
    """A progress event, or the line itself (log text).  Malformed progress lines are log text."""
    parsed = parse_progress_line(line)
    return line if parsed is None else Progress(*parsed)


class BackendProcess:
    """One backend run: start(), then poll() from a timer until finished; cancel() at any time."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        self.args = args
        self.env = env
        self.cancelled = False
        self._process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self) -> None:
        # Windows: no console window, and a process group of its own for cancel().
        options = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW} \
            if sys.platform == "win32" else {"start_new_session": True}
        # UTF-8 with replacement, never the locale's codec: one undecodable byte would kill the reader
        # thread and leave the child blocked on a full pipe.  Unbuffered, so progress arrives as it happens.
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1", "PYTHONUTF8": "1"}
        self._process = subprocess.Popen(
            self.args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            encoding="utf-8", errors="replace", bufsize=1, **options,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._lines.put(None)  # end of output

    def poll(self) -> list[Progress | str]:
        """Everything the child printed since the last call, parsed."""
        events = []
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return events
            if line is not None:
                events.append(parse_line(line))

    @property
    def finished(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    @property
    def returncode(self) -> int | None:
        if self._process is None or self._process.poll() is None:
            return None
        return EXIT_CANCELLED if self.cancelled else self._process.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.wait(timeout)
        return self.returncode

    @property
    def pid(self) -> int:
        return self._process.pid

    def cancel(self) -> None:
        """Kill the child and everything it started."""
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True)
        else:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()
