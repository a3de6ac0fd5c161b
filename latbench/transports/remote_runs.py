"""Runs on a device that can be ended later: each command's shell first prints its pid, the
boot id and its start time, and `KILL_SCRIPT` ends what that shell started, over a new
connection (a dropped one, Ctrl-C, a timeout). Used by the SSH and adb transports."""

from __future__ import annotations

import re

PID_MARK = "LATBENCH_PID="

# Before each command its shell prints its pid, the boot id and its /proc stat line, so a later
# kill can tell the same process from a reused pid (sshd and adbd setsid() the shell: pid = group
# = session).
PID_PREFIX = (f"s=; b=; read -r s 2>/dev/null < /proc/$$/stat; "
               f"read -r b 2>/dev/null < /proc/sys/kernel/random/boot_id; "
               f"printf '%s\\n' \"{PID_MARK}$$ ${{b:--}} $s\"; ")
# End the process group a command's login shell leads; $1 = pid, $2 = its start time, $3 = boot
# id ("-" = unknown). Nothing is killed on another boot or when the pid now names another
# process; a gone leader with live group members is still ours (Linux keeps a pgid unused),
# unless $4 is "strict" (a run listed long ago: by now the numbers may have come round again).
# It prints "ended" when something of the run was left to end.
KILL_SCRIPT = r"""
pid=$1 start=$2 boot=$3 strict=${4:-} b= s=
read -r b 2>/dev/null < /proc/sys/kernel/random/boot_id
[ "$boot" = - ] || [ -z "$b" ] || [ "$b" = "$boot" ] || exit 0
if read -r s 2>/dev/null < "/proc/$pid/stat"; then
  set -- ${s##*) }
  [ "$start" = - ] || [ "${20}" = "$start" ] || exit 0
elif [ "$strict" = strict ]; then
  exit 0
fi
# The shell leads its session; `timeout` (in every batch script) moves a tool
# into a process group of its own but not out of the session, so the session is what is killed.
members() {
  for f in /proc/[0-9]*/stat; do
    read -r t 2>/dev/null < "$f" || continue
    set -- ${t##*) }
    [ "$4" = "$pid" ] && { m=${f#/proc/}; echo "${m%/stat}"; }
  done
}
alive() { kill -0 -"$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || [ -n "$(members)" ]; }
signal() {
  kill -"$1" -"$pid" 2>/dev/null; kill -"$1" "$pid" 2>/dev/null
  for m in $(members); do kill -"$1" "$m" 2>/dev/null; done
}
alive || exit 0
echo ended
signal TERM
i=0
while alive && [ "$i" -lt 20 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i + 1)); done
signal KILL
true
"""


def kill_argv(mark: tuple[str, str, str], strict: bool = False) -> list[str]:
    """The command that runs KILL_SCRIPT for the run `mark` names, on the device (or here)."""
    return ["sh", "-c", KILL_SCRIPT, "sh", *mark, *(["strict"] if strict else [])]


def command_stdout(out: bytearray) -> str:
    """A run's stdout without the pid line `PID_PREFIX` printed first."""
    stdout = out.decode("utf-8", "replace")
    if stdout.startswith(PID_MARK):
        stdout = stdout.split("\n", 1)[1] if "\n" in stdout else ""
    return stdout


def run_mark(out: bytes | bytearray) -> tuple[str, str, str] | None:
    """(pid, start time, boot id) from the first line `PID_PREFIX` printed, "-" for what the
    board did not tell; None before the whole line arrived."""
    if b"\n" not in out:
        return None
    first = bytes(out).split(b"\n", 1)[0].decode("ascii", "replace")
    if not first.startswith(PID_MARK):
        return None
    fields = first[len(PID_MARK):].split(" ", 2)
    if not fields[0].isdigit():
        return None
    boot = fields[1] if len(fields) > 1 and fields[1] else "-"
    stat = fields[2].rsplit(")", 1)[-1].split() if len(fields) > 2 else []
    start = stat[19] if len(stat) > 19 and stat[19].isdigit() else "-"
    return fields[0], start, boot


def shell_missed(program: str, stderr: str) -> bool:
    """Whether a run's exit 127 is the device saying it found no `program`, not the program's
    own exit status: dash "sh: 1: P: not found", bash "bash: line 1: P: command not found", zsh
    "command not found: P" (a path: "no such file or directory: P"), Android's mksh
    "/system/bin/sh: P: inaccessible or not found", a path (a `python:` whose venv was never
    made) "...: P: No such file or directory", and under `timeout`, toybox "timeout: exec P: No
    such file or directory" or GNU "timeout: failed to run command 'P': No such file or
    directory" (quotes curly in a UTF-8 locale). Not bash's "bash: s.sh: No such file or
    directory" for a missing script, nor a message of the program itself."""
    p = re.escape(program)
    return re.search(rf"(?m)(?:^|: |: exec |['\u2018]){p}['\u2019]?: "
                     rf"(?:(?:command |inaccessible or )?not found|No such file or directory)$"
                     rf"|(?:command not found|no such file or directory): {p}$", stderr) is not None
