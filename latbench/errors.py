"""Errors a user can cause. The CLI prints them as one line, never a traceback."""

from __future__ import annotations


class LatbenchError(Exception):
    """A problem the user can fix: `message` says what, `hint` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def did_you_mean(word: str, choices) -> str:
    """ "did you mean 'rounds'?" for the choice closest to a mistyped `word`, else ""."""
    import difflib

    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


class UsageError(LatbenchError):
    """A bad name or argument on the command line (exit code 2)."""

    exit_code = 2


class StoreError(LatbenchError):
    """The measurement database cannot be opened or written."""


class ProfileError(LatbenchError):
    """A device profile is missing or invalid."""


class DeviceError(LatbenchError):
    """The device could not be reached or the runner failed on it.

    `partial_stdout`: what a command had printed when its connection was lost, so a runner
    keeps the results already finished instead of timing them again."""

    partial_stdout: str = ""
    timed_out: bool = False  # the command ran past its time limit and was killed


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM in a collection) while a device command ran, raised once that command
    was stopped. `partial_stdout` holds the whole lines it had printed, so the runner keeps the
    models it finished (`output`, its reading of them) instead of timing them again."""

    def __init__(self, partial_stdout: str = "", reason: str = "interrupted"):
        super().__init__(reason)
        self.partial_stdout = partial_stdout
        self.output = None  # a runners.base.BatchOutput, set by Runner.run_reading


def stopped_by(exc: KeyboardInterrupt) -> str:
    """A stopped batch's error: "stopped by Ctrl-C", "... by SIGTERM" (collect's handler raises
    KeyboardInterrupt("SIGTERM")), or "... by Ctrl-C on the head" (a farm unit's worker)."""
    reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    return f"stopped by {reason if reason not in ('', 'interrupted') else 'Ctrl-C'}"


class ExportError(LatbenchError):
    """A model could not be exported to the requested format."""
