"""Ends the processes of the server's local Ray when the server ends, however it ends (``kill -9`` included).

Ray's raylet and GCS die with the process that started them (the kernel's parent-death signal), but the agents the
raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) first try to report to the GCS that is gone and
linger for about two minutes. So, before it starts a local Ray, the server marks its environment with
``GRPO_RAY_OWNER=<token>``, which every Ray process inherits, and starts this script (standard library only):

    python reaper.py <token>      # its stdin a pipe from the server

It waits until that pipe closes, which happens when the server's process ends, then kills every process whose
environment carries the marker. It runs in a session of its own, so that a Ctrl-C meant for the server does not end
it first. Linux only (it reads ``/proc``); elsewhere the server does without it.
"""

import os
import signal
import sys
from collections.abc import Iterator

MARKER = "GRPO_RAY_OWNER"


def marked_processes(token: str) -> Iterator[int]:
    """The processes started with ``GRPO_RAY_OWNER=<token>`` in their environment."""
    wanted = f"{MARKER}={token}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    yield int(name)
        except OSError:  # gone meanwhile, or not ours to read
            continue


def reap(token: str) -> int:
    """Kill the marked processes; returns how many were found."""
    found = 0
    for pid in marked_processes(token):
        found += 1
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return found


def main() -> None:
    token = sys.argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns once the server's end of the pipe is closed: the server is gone
    reap(token)


if __name__ == "__main__":
    main()
