"""Console output shared by the subcommands: tables, JSON and messages on stderr."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    # Piped output (CI logs, files) gets a wide page for tables instead of rich's 80 columns,
    # and messages unwrapped: one message, one line, for grep and for log readers.
    width = None if tty or os.environ.get("COLUMNS") else 160
    # No markup: messages carry paths, errors and pip extras ('.[tflite]') that rich would eat.
    return Console(stderr=stderr, highlight=False, soft_wrap=not tty, width=width, markup=False)


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what anything in this process writes to stdout (file descriptor 1, C libraries
    too) to stderr until the block ends, so that stdout carries only what is printed after."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def json_text(data: Any, default=str) -> str:
    """JSON that every reader parses: a NaN or infinite float (an unknown IQR, a 0 ms median's
    ratio) is null, where json.dumps wrote NaN and Infinity, which jq and JSON.parse refuse."""
    return json.dumps(_finite(data), indent=2, default=default, allow_nan=False) + "\n"


def _finite(value: Any) -> Any:
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # np.float32, arrays
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(data: Any) -> None:
    sys.stdout.write(json_text(data))


def plural(n: int, noun: str) -> str:
    """ "1 row", "2 rows"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def format_cores(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5", the way Linux writes core lists."""
    runs: list[list[int]] = []
    for c in sorted(set(cores)):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def note(message: str, style: str | None = None) -> None:
    """A line for the human (stderr), so stdout stays clean for --json and --csv; printed as
    it is (no markup), in a rich `style` if given."""
    console(stderr=True).print(message, style=style)


def table(title: str | None, columns: list[str], rows: list[list[Any]], *, stderr: bool = False) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col, justify="right" if col.endswith(("_ms", "ms", "%", "count", "rounds")) else "left")
    for row in rows:
        t.add_row(*(_fmt(v) for v in row))
    console(stderr=stderr).print(t)


def _fmt(value: Any):
    if hasattr(value, "__rich_console__"):  # a rich Text, styled already
        return value
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def progress() -> "Bars":
    return Bars()


class Bars:
    """Progress bars on stderr that appear with their first task, so a command that fails
    before it has any prints its error alone (a started rich Progress prints a blank line
    when it stops), and that can be closed mid-command by `section`, so a later stage's line
    prints below the bars it follows, not above them."""

    #: Without a terminal (`| tee`, CI logs), a plain line per task at most this often, and at
    #: its end: rich's live bars draw nothing there until they stop, so a long collection
    #: printed nothing for minutes.
    PLAIN_EVERY_S = 15.0

    def __init__(self):
        self.console = console(stderr=True)
        self._progress = None
        self._plain: dict[int, dict] | None = None if self.console.is_terminal else {}
        self._plain_next = 0  # a removed task's id is never handed out again, as rich's are not

    def add_task(self, description: str, **kwargs) -> int:
        if self._plain is not None:
            task, self._plain_next = self._plain_next, self._plain_next + 1
            self._plain[task] = {"description": description, "completed": 0, "total": None,
                                 "started": time.monotonic(), "said": time.monotonic(), "ended": False}
            self._plain_update(task, **kwargs)
            return task
        if self._progress is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self._progress.start()
        return self._progress.add_task(description, **kwargs)

    def update(self, task: int, **kwargs) -> None:
        if self._plain is not None:
            self._plain_update(task, **kwargs)
            return
        self._progress.update(task, **kwargs)

    def remove_task(self, task: int) -> None:
        if self._plain is not None:
            self._plain.pop(task, None)
            return
        self._progress.remove_task(task)

    def _plain_update(self, task: int, **kwargs) -> None:
        state = self._plain.get(task)
        if state is None:
            return
        # a new description is a new stage of the task (an epoch, fit-predictor's next step):
        # said at once, since in a log that line is what tells the stages apart
        renamed = kwargs.get("description") not in (None, state["description"])
        if renamed:
            state["description"], state["ended"] = kwargs["description"], False
        for name in ("completed", "total"):
            if kwargs.get(name) is not None:
                state[name] = kwargs[name]
        if kwargs.get("advance"):
            state["completed"] += kwargs["advance"]
        now = time.monotonic()
        done = state["total"] is not None and state["completed"] >= state["total"]
        if state["ended"] or not (done or renamed or now - state["said"] >= self.PLAIN_EVERY_S):
            return
        state["said"], state["ended"] = now, done
        of = f"/{state['total']:g}" if state["total"] is not None else ""
        self.console.print(f"{state['description']}: {state['completed']:g}{of} "
                           f"({now - state['started']:.0f} s)", markup=False, highlight=False)

    def section(self, line: str) -> None:
        """Leave the bars so far printed as they stand and print `line` below them; the next
        `add_task` starts new bars (task ids start again)."""
        self.close()
        if self._plain is not None:
            self._plain.clear()
        self.console.print(line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
