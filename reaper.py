"""Ends the processes of the server's local Ray when the server ends, however it ends (``kill -9`` included).

Ray's raylet and GCS die with the process that started them (the kernel's parent-death signal), but the agents the
raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) first try to report to the GCS that is gone and
linger for about two minutes. The server starts this script (standard library only) before it starts a local Ray:

    python reaper.py <token>      # its stdin a pipe from the server

It waits until that pipe closes, which happens when the server's process ends, then kills what the server started.
Two records of that, because neither is enough alone:

- the server's process tree, read from ``/proc`` every half second while it waits: the agents are the raylet's
  children, but once the server is gone they are orphans that no tree leads to;
- ``GRPO_RAY_OWNER=<token>`` in a process's environment, which the server sets before starting Ray and every Ray
  process inherits: it finds processes started after the last look at the tree. Not the agents: they rename
  themselves (``setproctitle``), which overwrites the environment ``/proc`` shows.

It runs in a session of its own, so that a Ctrl-C meant for the server does not end it first. Linux only (it reads
``/proc``); elsewhere the server does without it.
"""

import os
import select
import signal
import sys
import time
from collections.abc import Iterable, Iterator

MARKER = "GRPO_RAY_OWNER"
LOOK_INTERVAL_S = 0.5

# A process is known by its pid and its start time (field 22 of /proc/<pid>/stat), so that a pid the kernel has
# given to a newer process since is never killed by mistake.
Process = tuple[int, int]


def _stat(pid: int) -> tuple[int, int] | None:
    """The parent and start time of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19])


def _pids() -> Iterator[int]:
    return (int(name) for name in os.listdir("/proc") if name.isdigit())


def descendants(root: int) -> set[Process]:
    """Every process below ``root`` in the process tree now."""
    children: dict[int, list[Process]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append((pid, stat[1]))
    found: set[Process] = set()
    parents = [root]
    while parents:
        for child in children.get(parents.pop(), []):
            if child not in found:
                found.add(child)
                parents.append(child[0])
    return found


def marked_processes(token: str) -> Iterator[Process]:
    """The processes started with ``GRPO_RAY_OWNER=<token>`` in their environment."""
    wanted = f"{MARKER}={token}".encode()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                marked = wanted in environ.read().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        stat = _stat(pid)
        if marked and stat is not None:
            yield pid, stat[1]


def reap(token: str, seen: Iterable[Process] = ()) -> int:
    """Kill the marked processes and those of ``seen`` still running; returns how many were killed."""
    killed = 0
    for pid, started in {*seen, *marked_processes(token)}:
        if pid == os.getpid() or (stat := _stat(pid)) is None or stat[1] != started:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


def wait_for_server(server: int) -> set[Process]:
    """Block until stdin closes (the server is gone); returns the server's descendants as last seen."""
    seen: set[Process] = set()
    while True:
        readable, _, _ = select.select([sys.stdin.buffer], [], [], LOOK_INTERVAL_S)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            return seen
        if os.getppid() != server:  # the pipe is held open elsewhere, but the server is gone all the same
            return seen
        seen |= descendants(server)


def main() -> None:
    token = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seen = wait_for_server(os.getppid())
    reap(token, seen)
    # The raylet may still start a process in the moment it takes to die: a second pass finds it by its marker.
    time.sleep(LOOK_INTERVAL_S)
    reap(token, seen)


if __name__ == "__main__":
    main()
