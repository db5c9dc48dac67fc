"""Progress of a benchmark run on stderr: tqdm where it is installed and stderr is a terminal
of known width, else one plain line, rewritten in place on a terminal and one line per case
in a log file."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}:{s:02d}"


def _columns(stream: TextIO) -> int:
    """The terminal's width; 0 where unknown (tqdm draws nothing in a 0-column pty)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None,
                 use_tqdm: bool | None = None) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and (self.tty and _columns(self.stream) >= 40 if use_tqdm is None
                        else use_tqdm):
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, file=self.stream, unit="case", dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                                           "[{elapsed}<{remaining}]")
        self._width = 0

    def line(self, label: str) -> str:
        """The plain progress line shown while case `done + 1` runs."""
        elapsed = time.perf_counter() - self.t0
        pct = 100 * self.done // max(self.total, 1)
        left = f", ~{_clock(elapsed / self.done * (self.total - self.done))} left" \
            if self.done else ""
        return f"[{self.done + 1}/{self.total} {pct:3d}% {_clock(elapsed)}{left}] {label}"

    def start(self, label: str) -> None:
        """Case `label` begins."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_description_str(label[:48], refresh=True)
            return
        text = self.line(label)
        if self.tty:
            width = _columns(self.stream)
            text = text[: width - 1] if width > 1 else text  # a wrapped line cannot be redrawn
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def write(self, text: str, file: TextIO | None = None) -> None:
        """Print `text` (to stdout by default) without tearing the progress line."""
        file = file or sys.stdout
        if self.bar is not None:
            self.bar.clear()
        elif self.tty and self._width and file.isatty():
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        print(text, file=file, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
