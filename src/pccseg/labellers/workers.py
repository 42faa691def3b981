"""Labelling in worker processes with one torch thread each: it scales with the cores and keeps sampling going.

Labelling one capture is a chain of small torch and OpenCV operations. Run with torch's default threads on
a busy machine, OpenMP oversubscribes the cores and one capture can take 25x its quiet time. A
:class:`LabelPool` instead labels in ``processes`` worker processes (0: in this process), each with ONE
torch thread: captures are labelled side by side, one per core, and the masks are those of a single thread
whatever the number of processes. ``pccseg label --workers N`` labels saved captures so
(:meth:`LabelPool.map_dirs`), and ``generate`` on the CPU hands each batch's captures to one worker and
samples the next batch meanwhile (:meth:`LabelPool.submit`).

Workers are forked on Linux for the CPU (they start in milliseconds, with the modules already imported) and
spawned otherwise (CUDA, other systems). They ignore Ctrl-C (the main process stops them), die on SIGTERM,
and exit when the main process dies, even by SIGKILL. Captures go to a worker as NumPy arrays through a
pipe (no shared-memory segments, which small ``/dev/shm`` mounts in containers cannot hold).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..capture.format import Capture, load_capture
from ..errors import InputError
from ..signals import blocked_for_children, die_with_parent, hold_interrupts, unblock
from .pcc import torch_threads


def default_workers(device: str | torch.device = "cpu") -> int:
    """The CPU cores this process may run on (at least 1); 1 for a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass
class Labelled:
    """What labelling one capture gives back: the (H, W) uint8 mask, its share of 255, the seconds, and the
    labeller's seconds per stage."""

    mask: np.ndarray
    uncertain_share: float
    seconds: float
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def describe(self) -> str:
        """``0.412 s (pca 0.095, kmeans 0.088, ...)``: for ``-v``'s debug lines."""
        stages = ", ".join(f"{k} {v:.3f}" for k, v in self.timings.items() if k != "total")
        return f"{self.seconds:.3f} s" + (f" ({stages})" if stages else "")


def _labelled(label_fn: Callable, capture: Capture, params: Any) -> Labelled:
    t0 = time.perf_counter()
    res = label_fn(capture, params)
    return Labelled(res.mask.cpu().numpy(), float(res.uncertain_share), time.perf_counter() - t0,
                    {k: float(v) for k, v in (getattr(res, "timings", None) or {}).items()})


def _label_path(label_fn: Callable, path: Path, params: Any, device: torch.device) -> Labelled | InputError:
    """Load and label one capture directory; bad input comes back as the :class:`InputError`."""
    try:
        return _labelled(label_fn, load_capture(path, device=device), params)
    except InputError as e:
        return e


def _arrays(capture: Capture) -> dict[str, Any]:
    """A capture as plain NumPy arrays and Python values (what goes through the pipe to a worker)."""
    out = {f.name: getattr(capture, f.name) for f in dataclasses.fields(capture)}
    for key in ("image", "token_maps", "self_probs"):
        out[key] = None if out[key] is None else out[key].cpu().numpy()
    out["self_attn"] = {k: v.cpu().numpy() for k, v in capture.self_attn.items()}
    return out


def _capture(arrays: dict[str, Any]) -> Capture:
    a = dict(arrays)
    for key in ("image", "token_maps", "self_probs"):
        a[key] = None if a[key] is None else torch.from_numpy(a[key])
    a["self_attn"] = {k: torch.from_numpy(v) for k, v in a["self_attn"].items()}
    return Capture(**a)


# -- in the worker processes ---------------------------------------------------------------------------
_worker: dict[str, Any] = {}


def _exit_with_parent(sentinel) -> None:
    from multiprocessing.connection import wait

    wait([sentinel])
    os._exit(1)


def _init_worker(label_fn: Callable, params: Any, device: torch.device) -> None:
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C reaches the whole group: the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(signal.SIGKILL)                   # a SIGKILLed main process takes its workers along
    unblock()                                         # blocked since the fork (LabelPool._send)
    torch.set_num_threads(1)
    _worker.update(label_fn=label_fn, params=params, device=device)
    parent = multiprocessing.parent_process()
    if parent is not None:                            # a killed main process leaves no worker behind
        threading.Thread(target=_exit_with_parent, args=(parent.sentinel,), daemon=True).start()


def _label_dir(path: Path) -> Labelled | InputError:
    return _label_path(_worker["label_fn"], path, _worker["params"], _worker["device"])


def _label_arrays(arrays: dict[str, Any]) -> Labelled:
    return _labelled(_worker["label_fn"], _capture(arrays), _worker["params"])


# -- in the main process -------------------------------------------------------------------------------
class LabelPool:
    """Labels captures with ``label_fn(capture, params)`` in ``processes`` worker processes, or in this
    process when ``processes`` is 0; on the CPU with one torch thread either way (so the masks never
    depend on the number of processes). Use it as a context manager: leaving the block by an exception
    (Ctrl-C, SIGTERM) stops the workers at once, a normal exit lets them finish.

    Args:
        params: the labeller's parameters.
        processes: worker processes (0: label in this process).
        label_fn: the labelling function (default :func:`pccseg.labellers.registry.label`); with workers it must be
            picklable where workers are spawned (CUDA, systems without fork).
        device: where the captures are labelled.

    Every call into the worker pool from this process (submit, wait for a result, shut down) holds SIGTERM
    and Ctrl-C back until it returns (:func:`pccseg.signals.hold_interrupts`). The pool's queues and futures
    take locks in Python code; an exception raised by a signal handler just after such a lock is taken
    leaves it taken, and the pool's own thread then waits on it forever: the process would hang at exit
    instead of stopping.
    """

    def __init__(self, params: Any, processes: int, *, label_fn: Callable | None = None,
                 device: str | torch.device = "cpu"):
        if label_fn is None:
            from .registry import label as label_fn
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 0:
            raise ValueError(f"processes must be an integer >= 0, got {processes!r}")
        self.params, self.processes, self.label_fn = params, processes, label_fn
        self.device = torch.device(device)
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "LabelPool":
        if self.processes:
            import multiprocessing

            fork = self.device.type == "cpu" and sys.platform.startswith("linux")
            self._executor = ProcessPoolExecutor(
                self.processes, mp_context=multiprocessing.get_context("fork" if fork else "spawn"),
                initializer=_init_worker, initargs=(self.label_fn, self.params, self.device))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        with hold_interrupts():
            if exc_type is not None:                    # interrupted: no worker finishes what it holds
                for p in list(getattr(ex, "_processes", {}).values()):
                    p.terminate()
            ex.shutdown(wait=exc_type is None, cancel_futures=True)

    def _here(self, fn: Callable, *args) -> Future:
        """Run ``fn`` now, in this process, and return its result as a done future."""
        fut: Future = Future()
        with torch_threads(1) if self.device.type == "cpu" else contextlib.nullcontext():
            fut.set_result(fn(*args))
        return fut

    def _send(self, fn: Callable, arg: Any) -> Future:
        """``executor.submit(fn, arg)``, which starts the workers at its first call: with SIGTERM and Ctrl-C
        held back in Python (see the class) and blocked in the OS, so that a forked worker starts with them
        blocked until :func:`_init_worker` has its own handlers (:func:`pccseg.signals.blocked_for_children`
        says why)."""
        with hold_interrupts(), blocked_for_children():
            return self._executor.submit(fn, arg)

    def submit(self, capture: Capture) -> Future:
        """Label ``capture``; the future's result is a :class:`Labelled` (or raises what labelling raised).
        Without workers it is labelled before this returns."""
        if self._executor is None:
            return self._here(_labelled, self.label_fn, capture, self.params)
        return self._send(_label_arrays, _arrays(capture))

    def result(self, future: Future) -> Any:
        """``future.result()`` of a :meth:`submit`, with SIGTERM and Ctrl-C held back until it is there (the
        wait lasts one capture's labelling at most once its worker has it)."""
        with hold_interrupts():
            return future.result()

    def map_dirs(self, dirs: Iterable[Path]) -> Iterator[tuple[Path, Labelled | InputError]]:
        """Load and label capture directories; yields ``(dir, Labelled or the InputError)`` in the order of
        ``dirs``, with at most twice as many captures in flight as there are workers."""
        if self._executor is None:
            for d in dirs:
                yield d, self._here(_label_path, self.label_fn, d, self.params, self.device).result()
            return
        todo = iter(dirs)
        pending: collections.deque = collections.deque()
        for d in todo:
            pending.append((d, self._send(_label_dir, d)))
            if len(pending) >= 2 * self.processes:
                break
        while pending:
            d, fut = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, self._send(_label_dir, nxt)))
            yield d, self.result(fut)
