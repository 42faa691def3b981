"""Stopping cleanly: SIGTERM (what Slurm and Kubernetes send before they kill) is handled like Ctrl-C.

Inside :func:`handle_interrupts` both signals raise in the main thread (SIGTERM as :class:`Terminated`, a
``KeyboardInterrupt``), so the code unwinds as on Ctrl-C: temporary files are removed and ``finally``
blocks run. A :func:`hold_interrupts` block (the writes of one sample, a checkpoint) is finished first.

A process forked inside :func:`handle_interrupts` inherits its handler and the stack of the code that
forked. A signal that reaches it before it has handlers of its own (Slurm and a terminal's Ctrl-C signal
every process of the job; a pool's shutdown terminates its workers) would raise into that copy, and the
child would go on running the parent's clean-up. Forks go inside :func:`blocked_for_children`, and the
child calls :func:`unblock` once its handlers are set.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

_held = 0                                   # depth of hold_interrupts() blocks
_pending: KeyboardInterrupt | None = None   # what a signal held back will raise


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM (exit code 143 on the command line)."""


def _unwind(exc: KeyboardInterrupt) -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM must not cut the clean-up short
    raise exc


def _raise_for(signum: int, frame) -> None:
    global _pending
    exc = Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
    if _held and _pending is None:
        _pending = exc
        return
    _unwind(exc)


@contextlib.contextmanager
def handle_interrupts() -> Iterator[None]:
    """Inside the block SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`, or, in a
    :func:`hold_interrupts` block, at its end. The previous handlers come back after. Outside the main
    thread (where Python cannot set handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_for) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def hold_interrupts() -> Iterator[None]:
    """A signal that arrives inside the block is raised when the block ends, so that what the block writes
    is finished; a second signal raises at once. When the block ends by an exception, a signal that came
    meanwhile is raised instead, with that exception as its context: the signal often caused it (Slurm
    terminates the worker processes a block waits for along with this one). Needs
    :func:`handle_interrupts` around it to hold anything. Outside the main thread it holds nothing: the
    signals raise in the main thread only, and a hold in another thread would defer them there and raise
    them in that thread instead."""
    global _held, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        exc = None if _held else _pending
        if exc is not None:
            _pending = None
            _unwind(exc)


@contextlib.contextmanager
def save_on_interrupt(save: Callable[[], None]) -> Iterator[None]:
    """Keep the work in hand: when Ctrl-C or SIGTERM ends the block (or any ``KeyboardInterrupt``),
    ``save()`` runs (held: a further signal waits until it is done), then the interrupt goes on (exit code
    130 / 143 on the command line). ``save`` decides what there is to keep (a checkpoint of the step
    reached; nothing when the last one is current)."""
    try:
        yield
    except KeyboardInterrupt:
        with hold_interrupts():
            save()
        raise


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def blocked_for_children() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread inside the block (where the OS allows it): a process forked
    (or a thread started) here starts with them blocked, and they stay pending in it until it calls
    :func:`unblock`. In this thread they are delivered when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):           # pragma: no cover - Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def unblock() -> None:
    """In a child started inside :func:`blocked_for_children`, once it has its own handlers: let SIGINT
    and SIGTERM in (one that came meanwhile is delivered now)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child process: the OS sends it ``sig`` when the process that started it dies (Linux's
    ``PR_SET_PDEATHSIG``; elsewhere nothing), so a SIGKILLed command leaves no worker running on (they
    outlived it by 1.3-5.9 s, waiting for their own checks). If the parent is already gone, exit now."""
    import multiprocessing
    import os

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):                                 # pragma: no cover - not Linux / glibc
        return
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None and os.getppid() != parent.pid:
        os._exit(1)                                                   # it died before the prctl


def _end_worker(signum: int, frame) -> None:
    raise KeyboardInterrupt


def dataloader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of pccseg's DataLoaders, whose iterators start inside :func:`blocked_for_children`:
    SIGINT and SIGTERM end the worker quietly, it dies with the main process (:func:`die_with_parent`),
    then :func:`unblock`.

    Both raise ``KeyboardInterrupt``, which torch's worker loop takes as the end of the worker (exit code
    0). torch's own SIGTERM handler exits quietly only for the main process's SIGTERM; Slurm's, sent to
    every process of the job, killed the worker, and torch's SIGCHLD handler then raised "DataLoader
    worker ... is killed by signal: Terminated" in the main process, over its own SIGTERM (``pccseg train``
    exited 1 with a traceback)."""
    signal.signal(signal.SIGINT, _end_worker)
    signal.signal(signal.SIGTERM, _end_worker)
    die_with_parent(signal.SIGKILL)      # nothing to keep in a loader: gone at once with the main process
    unblock()
