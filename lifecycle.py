"""How the server hears that it must stop, before uvicorn's own shutdown gets to the app.

uvicorn answers SIGINT and SIGTERM by closing its listeners, then waits for every open response to end, and only
then runs the app's lifespan shutdown. An event stream (``GET /training/{job_id}/events``) is such a response: it
kept the server up for seconds while its job trained on, past Docker's stop timeout. ``on_exit_signals`` hands the
signal to the app first (event streams close, jobs checkpoint), then to the handler that was there (uvicorn's).

Libraries that install their own handlers (Ray's driver makes SIGTERM a ``sys.exit``, which cut requests off with
a 500 and filled the log with tracebacks) are started inside ``keep_signal_handlers``, which gives the old ones back.
"""

import asyncio
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    # Python lets only the main thread set signal handlers: an app served by a TestClient runs in another one.
    return threading.current_thread() is threading.main_thread()


@contextmanager
def keep_signal_handlers() -> Iterator[None]:
    """Whatever the body installs for SIGINT and SIGTERM is undone when it ends."""
    if not _in_main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def on_exit_signals(callback: Callable[[], None]) -> Iterator[None]:
    """While in the body, SIGINT and SIGTERM first run ``callback`` on the running event loop, then go on to the
    handler that was there before (uvicorn's graceful shutdown; with no handler, the default action)."""
    if not _in_main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in EXIT_SIGNALS}
    called = False

    def handler(sig: int, frame: FrameType | None) -> None:
        nonlocal called
        if not called:  # a second Ctrl-C forces uvicorn out: pass it on, once is enough for the app
            called = True
            loop.call_soon_threadsafe(callback)
        _pass_on(previous[sig], sig, frame)

    for sig in EXIT_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _pass_on(handler: Any, sig: int, frame: FrameType | None) -> None:
    if callable(handler):
        handler(sig, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
