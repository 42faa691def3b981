"""Labelling in worker processes: ``pccseg label --workers N`` and ``generate``'s labelling worker give the
masks of one process, resume, stop on SIGTERM, and leave no worker behind when the main process is killed."""

import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pccseg import cli
from pccseg.capture.format import save_capture
from pccseg.io import TEMP_SUFFIX
from pccseg.labellers.pcc import LabelParams
from pccseg.labellers.workers import LabelPool

from test_capture_format import make_bad, small_capture
from test_kill import _start

if "fork" not in multiprocessing.get_all_start_methods():  # pragma: no cover
    pytest.skip("needs fork", allow_module_level=True)


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("caps")
    for i in range(6):
        save_capture(root / f"{i:06d}", small_capture(seed=i))
    return root


def _masks(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_workers_give_the_masks_of_one_process(captures, tmp_path):
    outs = {}
    for n in (1, 2, 3):
        outs[n] = tmp_path / f"w{n}"
        assert cli.main(["label", str(captures), "--out", str(outs[n]), "-q", "--ks", "3", "5",
                         "--workers", str(n)]) == 0
    assert len(_masks(outs[1])) == 6
    assert _masks(outs[2]) == _masks(outs[1]) == _masks(outs[3])
    assert (outs[2] / "label_params.json").read_text() == (outs[1] / "label_params.json").read_text()


def test_workers_report_bad_captures_in_order_and_resume(captures, tmp_path, capsys):
    import shutil

    caps = tmp_path / "caps"
    shutil.copytree(captures, caps)
    make_bad(caps, "wrong_rank", "000001bad")
    out = tmp_path / "m"
    capsys.readouterr()
    assert main_label(caps, out, "--workers", "2") == 2                 # stops at the bad one, in order
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "000001bad" in err[0]
    assert sorted(_masks(out)) == ["000000.png", "000001.png"]
    (out / "000001.png").write_bytes(b"sentinel")
    assert main_label(caps, out, "--workers", "2", "--keep-going") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1        # the bad one's line
    assert sorted(_masks(out)) == [f"{i:06d}.png" for i in range(6)]
    assert (out / "000001.png").read_bytes() == b"sentinel"              # resumed: existing masks kept


def main_label(caps, out, *argv) -> int:
    return cli.main(["label", str(caps), "--out", str(out), "-q", "--ks", "3", "5", *argv])


def test_workers_option_is_checked(captures, tmp_path, capsys):
    assert main_label(captures, tmp_path / "m", "--workers", "0") == 2
    assert capsys.readouterr().err.strip() == "pccseg label: error: --workers: must be an integer >= 1, got 0"
    assert not (tmp_path / "m").exists()


def test_pool_map_keeps_the_order_and_returns_bad_input(captures, tmp_path):
    import shutil

    caps = tmp_path / "caps"
    shutil.copytree(captures, caps)
    bad = make_bad(caps, "missing_file", "000003bad")
    dirs = sorted(caps.iterdir())
    got = {}
    for processes in (0, 2):
        with LabelPool(LabelParams(ks=(3,)), processes) as pool:
            got[processes] = list(pool.map_dirs(dirs))
        assert [d for d, _ in got[processes]] == dirs
        errors = [d for d, r in got[processes] if not hasattr(r, "mask")]
        assert errors == [bad] and "capture.safetensors" in str(dict(got[processes])[bad])
    for (_, a), (_, b) in zip(got[0], got[2]):
        if hasattr(a, "mask"):
            np.testing.assert_array_equal(a.mask, b.mask)
            assert a.mask.dtype == np.uint8 and a.mask.shape == (64, 64)


# --------------------------------------------------------------------------- stopping and killing

def _wait_for(ready, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not ready() and time.monotonic() < end:
        time.sleep(0.005)


def _children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(x) for x in text.split()}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(24):
        save_capture(root / f"{i:06d}", small_capture(seed=i % 6))
    return root


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_sigterm_then_rerun_gives_the_masks_of_an_uninterrupted_run(many, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert main_label(many, ref, "--workers", "1") == 0
    err = tmp_path / "err.txt"
    proc = _start(["label", str(many), "--out", str(out), "-q", "--ks", "3", "5", "--workers", "2"], err)
    _wait_for(lambda: len(list(out.glob("*.png"))) >= 3)
    workers = _children(proc.pid) if proc.is_alive() else set()
    proc.terminate()
    proc.join(60)
    if proc.exitcode != 0:                                        # 0: it had finished before the signal
        assert proc.exitcode == 143
        assert err.read_text().strip().splitlines()[-1] == "pccseg label: terminated (SIGTERM)"
    _wait_for(lambda: not any(_alive(p) for p in workers), 30)
    assert not any(_alive(p) for p in workers)
    assert not [p for p in out.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    done = _masks(out)
    assert all(done[n] == _masks(ref)[n] for n in done)          # what was written is complete
    assert main_label(many, out, "--workers", "2") == 0
    assert _masks(out) == _masks(ref)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")
def test_workers_exit_when_the_main_process_is_killed(many, tmp_path):
    out = tmp_path / "run"
    proc = _start(["label", str(many), "--out", str(out), "-q", "--ks", "3", "5", "--workers", "2"],
                  tmp_path / "err.txt")
    _wait_for(lambda: len(list(out.glob("*.png"))) >= 1)
    workers = _children(proc.pid)
    assert proc.is_alive() and len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    _wait_for(lambda: not any(_alive(p) for p in workers), 30)
    assert not any(_alive(p) for p in workers)


# --------------------------------------------------------------------------- generate

def record_pid(cap, params):
    """A labelling function that notes which process labelled each record (in $PCCSEG_TEST_PIDS); put in
    place of the registry's ``label``, which generate's labellers call."""
    from pccseg.labellers.pcc import label

    Path(os.environ["PCCSEG_TEST_PIDS"], str(cap.meta["record_id"])).write_text(str(os.getpid()))
    return label(cap, params)


def test_generate_labels_in_a_worker_with_the_same_dataset(tmp_path, monkeypatch):
    from pccseg.dataset.generate import GenerateConfig, generate
    from pccseg.dataset.prompts import load_prompts, select
    from pccseg.capture.tiny import tiny_pipeline
    from pccseg.labellers import registry

    pipe, records = tiny_pipeline(0), select(load_prompts(), start=0, num=3)
    monkeypatch.setattr(registry, "label", record_pid)      # the workers are forked: they see it too
    pids = {}
    for workers in (0, 1):
        (tmp_path / f"pids{workers}").mkdir()
        monkeypatch.setenv("PCCSEG_TEST_PIDS", str(tmp_path / f"pids{workers}"))
        config = GenerateConfig(steps=2, height=64, width=64, seed=2024, batch_size=2, label_workers=workers,
                                progress=False)
        rep = generate(pipe, records, tmp_path / f"ds{workers}", config, rank=0, world_size=1)
        assert rep.generated == 3
        pids[workers] = {int(p.read_text()) for p in (tmp_path / f"pids{workers}").iterdir()}
    assert pids[0] == {os.getpid()}
    assert len(pids[1]) == 1 and os.getpid() not in pids[1]            # labelled in one other process

    def files(root):
        out = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        out = {k: v for k, v in out.items() if not k.startswith("manifest")}  # the manifests hold timings
        manifest = [json.loads(x) for x in (root / "manifest.jsonl").read_text().splitlines()]
        return out, [{k: v for k, v in e.items() if k != "timings"} for e in manifest]

    (got, got_manifest), (want, want_manifest) = files(tmp_path / "ds1"), files(tmp_path / "ds0")
    assert sorted(got) == sorted(want) and [f for f in want if got[f] != want[f]] == []
    assert got_manifest == want_manifest


def _slow_label(capture, params):
    from pccseg.labellers.registry import label

    time.sleep(0.5)
    return label(capture, params)


def test_a_signal_inside_a_call_into_the_pool_is_raised_when_the_call_is_done(monkeypatch):
    # Raised inside the executor's locks, SIGTERM once left one taken: the pool's thread waited on it and
    # `pccseg label --workers 2` hung at exit. The signal now waits for the call into the pool to finish.
    import concurrent.futures

    from pccseg.signals import Terminated, handle_interrupts

    events = []
    real_submit = concurrent.futures.ProcessPoolExecutor.submit

    def submit(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)          # as if it came just after the executor took a lock
        time.sleep(0.05)                              # the handler runs in this frame unless held back
        fut = real_submit(self, *args, **kwargs)
        events.append("submitted")
        return fut

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "submit", submit)
    with pytest.raises(Terminated), handle_interrupts(), LabelPool(LabelParams(ks=(3,)), 1) as pool:
        pool.submit(small_capture(seed=0))
        events.append("went on")                     # never: the signal is raised as submit returns
    assert events == ["submitted"]
    monkeypatch.undo()

    # a signal while waiting for a result is raised once the result is there
    with pytest.raises(Terminated), handle_interrupts(), \
            LabelPool(LabelParams(ks=(3,)), 1, label_fn=_slow_label) as pool:
        fut = pool.submit(small_capture(seed=0))
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        try:
            pool.result(fut)
        finally:
            timer.join()
            events.append(fut.done())                # the labelling (0.5 s) had finished
    assert events == ["submitted", True]


def _stop_signals_blocked() -> list[int]:
    return sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM})


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs pthread_sigmask")
def test_a_worker_starts_with_the_stop_signals_blocked_until_it_has_its_own_handlers(monkeypatch, tmp_path):
    # A SIGTERM or Ctrl-C that reached a forked worker before its initializer ran the handler it inherited
    # from this process, which raised into the worker's copy of this process's stack: the worker went on
    # running the caller's code (seen as a second pytest session printing its own summary). A worker now
    # starts with both signals blocked and lets them in once it has its own handlers.
    from pccseg.labellers import workers
    from pccseg.signals import handle_interrupts

    real_init, seen = workers._init_worker, tmp_path / "seen.txt"

    def init(*args):                                  # runs first in the worker
        at_start = _stop_signals_blocked()
        real_init(*args)
        seen.write_text(json.dumps([at_start, _stop_signals_blocked(),
                                    signal.getsignal(signal.SIGTERM) == signal.SIG_DFL]))

    monkeypatch.setattr(workers, "_init_worker", init)
    with handle_interrupts(), LabelPool(LabelParams(ks=(3,)), 1) as pool:
        done = pool.result(pool.submit(small_capture(seed=0)))
        assert _stop_signals_blocked() == []          # in this process only while the worker is started
    assert done.mask.shape == small_capture(seed=0).image.shape[:2]
    assert json.loads(seen.read_text()) == [sorted([int(signal.SIGINT), int(signal.SIGTERM)]), [], True]


def test_sigterm_to_the_whole_job_while_waiting_for_a_worker_is_a_sigterm_not_a_broken_pool():
    # Slurm and `kill -TERM -PGID` signal every process: the worker died of it and the wait for its result
    # raised BrokenProcessPool, which hid the signal held meanwhile (`pccseg label` exited 1 with a traceback)
    from pccseg.signals import Terminated, handle_interrupts

    with pytest.raises(Terminated), handle_interrupts(), \
            LabelPool(LabelParams(ks=(3,)), 1, label_fn=_slow_label) as pool:
        fut = pool.submit(small_capture(seed=0))
        time.sleep(0.1)                               # the worker is labelling (0.5 s)
        worker = next(iter(pool._executor._processes.values()))

        def job_terminated() -> None:
            os.kill(worker.pid, signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(0.1, job_terminated)
        timer.start()
        try:
            pool.result(fut)
        finally:
            timer.join()
