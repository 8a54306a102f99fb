"""Ctrl-C during the training loop, never lost.

Python's own SIGINT handler raises ``KeyboardInterrupt`` in whatever Python code runs when the signal
lands. Where that is a callback whose exceptions Python only prints ("Exception ignored in ..."), such
as jax's garbage-collection callback ``_xla_gc_callback`` or a ``__del__``, the interrupt is printed
and lost, and the run goes on. Inside ``deferred_sigint`` the first SIGINT only sets a flag that the
training loop reads after every step (it checkpoints and raises ``KeyboardInterrupt`` there, in its
own frame); a second one raises at once, as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def deferred_sigint(enabled: bool = True) -> Iterator[Callable[[], bool]]:
    """Yield ``requested() -> bool``: whether SIGINT arrived since entry. The handler is installed only
    when ``enabled``, in the main thread, and while Python's default handler is in place (a handler of
    the caller's own, or SIGINT ignored, is left alone; ``requested`` then stays False); the previous
    handler is restored on exit. A SIGINT that arrived after the loop's last look raises
    ``KeyboardInterrupt`` on a normal exit, so none is dropped."""
    hits: list[int] = []

    def on_sigint(signum, frame):
        hits.append(signum)
        if len(hits) > 1:  # pressed again: the loop has not reached a step boundary yet; stop now
            raise KeyboardInterrupt

    install = (enabled and threading.current_thread() is threading.main_thread()
               and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if not install:
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)
    if hits:  # reached only when the body ended without an exception
        raise KeyboardInterrupt
