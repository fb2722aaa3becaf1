"""Which process streams a reply, and whether it still runs.

A reply's row is ``streaming`` from its first moment until its process stores how it
ended. A process killed mid-reply never does, so the next kvchat to open the store marks
such rows ``interrupted`` — but only those whose process is gone: another kvchat (a
second ``kvchat ask``, the app) may be streaming into the same store right now.

Each streaming row names its owner: the host, the process id and the process's start
time (Linux: the boot's id and the start in clock ticks from ``/proc``; elsewhere what
``ps -o lstart`` says), so a process id the system has since given to another process
does not pass for the owner. On the owner's host the owner is gone when no process has
that id, or the one that has it started at another time. Where that cannot be told (a
store shared with another host, a system without ``/proc`` or ``ps``, a row from before
owners were recorded), the row's ``updated_at`` is its heartbeat: the reply's text is
saved every second while tokens come, and a row not written for :data:`STALE_S` is
taken for dead.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
from pathlib import Path

OWNER_SCHEMA = """
ALTER TABLE messages ADD COLUMN owner TEXT;
"""
"""Schema version 6: the process that streams a reply (JSON: host, pid, start)."""

STALE_S = 600.0
"""A streaming row whose owner cannot be checked is dead once unwritten this long: longer
than any wait for a first token (a large prompt read on a slow machine)."""


def _linux_start(pid: int) -> str | None:
    """``boot id:start ticks`` of ``pid``; None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended: only its exit status is left
        return None
    return f"{boot}:{fields[19]}"


def process_start(pid: int) -> str | None:
    """When ``pid`` started, as a string to compare; ``""`` where this system does not
    say; None when no process has that id."""
    if Path("/proc/self/stat").exists():
        try:
            return _linux_start(pid)
        except (OSError, ValueError, IndexError):
            return ""
    if os.name == "nt":
        return ""
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() or None


def this_process() -> str:
    """The owner this process writes into the rows it streams."""
    return _owner_text(os.getpid())  # by pid: a forked child is an owner of its own


@functools.cache
def _owner_text(pid: int) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": pid,
                       "start": process_start(pid) or ""}, separators=(",", ":"))


def owner_alive(owner: str | None, updated_at: float, now: float) -> bool:
    """Whether the process named by ``owner`` may still be streaming its row."""
    fresh = now - updated_at < STALE_S
    try:
        who = json.loads(owner) if owner else None
        host, pid, start = who["host"], int(who["pid"]), str(who["start"])
    except (ValueError, TypeError, KeyError):
        return fresh
    if host != socket.gethostname() or os.name == "nt":
        return fresh
    if pid == os.getpid():
        return owner == this_process()
    now_start = process_start(pid)
    if now_start is None:
        return False
    if now_start and start:
        return now_start == start
    return fresh
