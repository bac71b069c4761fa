"""The demo's terminal output: one line per step, a live view updated in place on a terminal, and number formats."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO


class Console:
    """Steps on one line each; in place updates (`\\r`, cursor up) only when the stream is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._live_lines = 0

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    @contextmanager
    def step(self, text: str) -> Iterator[Step]:
        step = Step(self, text)
        step.begin()
        try:
            yield step
        except BaseException:
            step.end("failed")
            raise
        step.end("done")

    def fit(self, text: str) -> str:
        """Cut a line that is redrawn in place to the terminal's width: a wrapped line can't be redrawn."""
        width = shutil.get_terminal_size((120, 24)).columns - 1
        return text if len(text) <= width else text[: max(0, width - 3)] + "..."

    def live(self, lines: Sequence[str]) -> None:
        """Redraw the block of lines drawn last time, in place (terminals only)."""
        out = f"\x1b[{self._live_lines}F" if self._live_lines else ""
        out += "".join(f"\x1b[2K{self.fit(s)}\n" for s in lines)
        self.stream.write(out)
        self.stream.flush()
        self._live_lines = len(lines)

    def end_live(self) -> None:
        self._live_lines = 0


class Step:
    def __init__(self, console: Console, text: str) -> None:
        self.console = console
        self.text = text
        self.detail = ""
        self.started = time.monotonic()

    def begin(self) -> None:
        self.console.stream.write(f"{self.text} ...")
        self.console.stream.flush()

    def update(self, detail: str) -> None:
        """Progress of a long step: redrawn in place on a terminal, shown once at the end otherwise."""
        self.detail = detail
        if self.console.tty:
            self.console.stream.write("\r\x1b[2K" + self.console.fit(f"{self.text} ... {detail}"))
            self.console.stream.flush()

    def end(self, outcome: str) -> None:
        took = time.monotonic() - self.started
        detail = f" {self.detail}" if self.detail else ""
        if self.console.tty:
            self.console.stream.write(f"\r\x1b[2K{self.text} ...{detail} {outcome} ({took:.1f} s)\n")
        else:
            self.console.stream.write(f"{detail} {outcome} ({took:.1f} s)\n")
        self.console.stream.flush()


def fmt_latency(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def ratio(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"
