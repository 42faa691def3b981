"""Worker processes of ``pccseg experiment toy`` (:func:`run_jobs`): spawned, ``threads`` torch threads
each, gone when their parent dies."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Sequence

import torch

from ..signals import die_with_parent


def _log_levels() -> tuple[int, int]:
    """This process's levels of the root logger and of pccseg's (what ``pccseg.cli`` set: -v, -q)."""
    return logging.getLogger().getEffectiveLevel(), logging.getLogger("pccseg").getEffectiveLevel()


def _worker_init(threads: int, levels: tuple[int, int]) -> None:
    die_with_parent()               # a killed run leaves no worker behind
    torch.set_num_threads(threads)
    root, own = levels              # a spawned process starts with no logging set: as its parent's
    logging.basicConfig(level=root, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pccseg").setLevel(own)


def _call(job: tuple[Callable, tuple]):
    fn, args = job
    return fn(*args)


def run_jobs(fn: Callable, jobs: Sequence[tuple], processes: int, threads: int) -> list:
    """``[fn(*args) for args in jobs]``: here when ``processes`` is 1, else in that many spawned processes
    of ``threads`` torch threads each (an exception in one, InputError included, is raised here; an
    interruption here terminates them)."""
    if processes <= 1 or len(jobs) <= 1:
        return [fn(*args) for args in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(processes, len(jobs)), initializer=_worker_init,
                  initargs=(threads, _log_levels())) as pool:
        results = pool.map(_call, [(fn, args) for args in jobs], chunksize=1)
        # done: the workers end normally, their finalizers run (leaving the block terminates them, a SIGTERM:
        # a lock a job kept, tqdm's for one, was never released and the run ended with "resource_tracker:
        # There appear to be N leaked semaphore objects")
        pool.close()
        pool.join()
    return results
