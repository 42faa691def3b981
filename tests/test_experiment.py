"""``pccseg experiment toy``: end to end at a tiny size on a random-weight model of the toy architecture
(every stage, the files, resume, relabelling equal to the label API), the tables, the results page, the
parallel jobs, and bad input."""

import csv
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pccseg.cli import main
from pccseg.errors import InputError
from pccseg.io import load_mask, write_json
from pccseg.toy.config import RENDER_SEED, ExperimentConfig
from pccseg.toy.experiment import UPPER, Layout, Table, make_tables, run_experiment, run_jobs


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """A diffusers folder of the toy architecture with random weights (what --model takes)."""
    from pccseg.toy.model import assemble, build_text_encoder, build_unet, build_vae

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("toymodel") / "pipeline"
    assemble(build_vae(), build_unet(), build_text_encoder()).save_pretrained(str(path), safe_serialization=True)
    return path


def tiny_config(out, model, **kw):
    base = dict(out=str(out), model=str(model), num=2, val=2, steps=2, batch_size=2, iters=2, train_batch_size=2,
                crop_size=32, judge_scenes=2, pictures=2, device="cpu", jobs=1, progress=False, train_seeds=1)
    return ExperimentConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def done(tmp_path_factory, toy_folder):
    n = torch.get_num_threads()
    cfg = tiny_config(tmp_path_factory.mktemp("exp") / "exp", toy_folder)
    results = run_experiment(cfg)
    torch.set_num_threads(n)
    return cfg, Layout(Path(cfg.out)), results


def test_end_to_end_files_and_tables(done):
    cfg, lay, results = done
    tables = {t["title"].split(":")[0]: t for t in results["tables"]}
    down = tables["Downstream"]
    assert [r[0] for r in down["rows"]] == ["rendered (exact labels, upper bound)", "pcc", "dd", "attn", "fuse"]
    upper = down["rows"][0]
    assert upper[-1] == (pytest.approx(100.0) if upper[-3] else None)          # share of its own mIoU
    for name in (UPPER, "pcc", "dd", "attn", "fuse"):
        s = json.loads(lay.scores(name, 0).read_text())
        assert 0 <= s["miou"] <= 1 and len(s["iou"]) == 21
        assert (lay.run(name, 0) / "last" / "checkpoint.json").is_file()
    # the toy world's class cue is colour, at 128 px: the training must keep hues and the native scale
    run_cfg = json.loads((lay.run("pcc", 0) / "config.json").read_text())
    assert run_cfg["backbone_weights"] == "none" and run_cfg.get("photometric") in (None, False)
    assert run_cfg.get("short_side") in (None, 128) and run_cfg["scale_min"] >= 0.5
    quality = tables["Label quality"]
    assert [r[0] for r in quality["rows"]] == ["pcc", "dd", "attn", "fuse"]
    with open(lay.root / "downstream.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "training set" and rows[0][-3:] == ["mIoU", "sd", "% of upper bound"] and len(rows) == 6
    assert (lay.root / "results.md").read_text().count("### ") >= 4
    page = (lay.root / "report" / "index.html").read_text()
    assert "Downstream" in page and (lay.root / "report" / "samples.png").is_file()


def test_relabelled_sets_equal_the_label_api_on_the_kept_captures(done):
    from pccseg.capture.format import load_capture
    from pccseg.labellers.registry import default_params, label

    cfg, lay, _ = done
    for name in ("pcc", "dd", "attn"):
        for stem in ("000000", "000001"):
            want = label(load_capture(lay.generated / "captures" / stem), default_params(name)).mask.numpy()
            assert np.array_equal(load_mask(lay.labelled(name) / "SegmentationClass" / f"{stem}.png"), want), name
    # the held-out val scenes: rendered from RENDER_SEED + num on, disjoint from the upper bound's train scenes
    seeds = {json.loads(x)["id"]: json.loads(x)["seed"] for x in (lay.rendered / "manifest.jsonl").read_text().splitlines()}
    val = (lay.rendered / "ImageSets/Segmentation/val.txt").read_text().split()
    assert [seeds[s] for s in val] == [RENDER_SEED + cfg.num + i for i in range(cfg.val)]


def test_rerun_resumes_and_redoes_only_what_is_missing(done):
    cfg, lay, results = done
    kept = lay.scores("pcc", 0).stat().st_mtime_ns, (lay.generated / "JPEGImages" / "000000.jpg").stat().st_mtime_ns
    (lay.labelled("attn") / "SegmentationClass" / "000001.png").unlink()     # as if killed mid-stage
    lay.scores("dd", 0).unlink()
    log_before = (lay.run("dd", 0) / "log.jsonl").read_text()
    again = run_experiment(cfg)
    assert (lay.labelled("attn") / "SegmentationClass" / "000001.png").is_file() and lay.scores("dd", 0).is_file()
    assert (lay.scores("pcc", 0).stat().st_mtime_ns, (lay.generated / "JPEGImages" / "000000.jpg").stat().st_mtime_ns) \
        == kept
    assert (lay.run("dd", 0) / "log.jsonl").read_text() == log_before            # finished run: not trained again
    assert again["tables"] == results["tables"]
    with pytest.raises(InputError, match=r"experiment.json: .*iters: 2 -> 3"):
        run_experiment(dataclasses.replace(cfg, iters=3))
    # a finished run made by other training code (here: another crop) is never taken for this one's
    path = lay.run("pcc", 0) / "config.json"
    saved = path.read_text()
    path.write_text(saved.replace('"crop_size": 32', '"crop_size": 31'))
    with pytest.raises(InputError, match=r"trained with other settings \(crop_size: 31 -> 32\)"):
        run_experiment(cfg)
    path.write_text(saved)


def test_tables_known_answer():
    cfg = ExperimentConfig(out="x", labellers=("pcc", "attn"), num=10, val=5, iters=7, train_seeds=1)
    judge = {"n": 3, "pixel_acc": 0.99, "unknown": 0.01, "miou": 0.9, "adherence": 1.0}
    quality = {"n": 10, "adherence": 0.5, "gt_unknown": 0.1, "labellers": {
        "pcc": {"miou": 0.5, "miou_certain": 0.6, "uncertain": 0.2, "iou": {"background": 0.8, "dog": 0.2}},
        "attn": {"miou": 0.25, "miou_certain": 0.25, "uncertain": 0.0, "iou": {"background": 0.5}}}}
    names = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
             "tvmonitor"]

    def scores(miou, bg, dog):
        iou = [None] * 21
        iou[0], iou[12] = bg, dog
        return {"miou": miou, "iou": iou, "class_names": names}

    t = make_tables(cfg, judge, quality, {UPPER: {0: scores(0.8, 0.9, 0.7)}, "pcc": {0: scores(0.6, 0.8, 0.4)},
                                          "attn": {0: scores(0.2, 0.4, None)}})
    down = t["downstream"]
    col = down.columns.index
    assert down.columns[0] == "training set" and down.columns[1] == "background"
    assert [r[col("dog")] for r in down.rows][:2] == pytest.approx([70.0, 40.0]) and down.rows[2][col("dog")] is None
    assert [r[col("% of upper bound")] for r in down.rows] == pytest.approx([100.0, 75.0, 25.0])
    assert down.rows[2][col("aeroplane")] is None
    assert [r[col("sd")] for r in down.rows] == [None] * 3                     # one seed: no spread
    md = down.markdown()
    assert "| pcc | 80.00 | - |" in md and md.splitlines()[3].startswith("|---|---:|")
    assert "gains" not in t and t["per_seed"].rows[1] == ["pcc", pytest.approx(60.0)]
    lq = t["label_quality"]
    assert lq.rows[0][0] == "pcc" and lq.rows[0][1:4] == pytest.approx([50.0, 60.0, 20.0])
    assert lq.rows[1][lq.columns.index("dog")] is None and "50.0 %" in lq.note
    assert Table("t", ["a", "b"], [["x", None], ["y", 0.5]]).csv() == "a,b\nx,\ny,0.5\n"


def _job(folder, fail):
    """Writes ``<pid>.txt``; with ``fail``, once the two others have written theirs, raises InputError."""
    if not fail:
        (folder / f"{os.getpid()}.txt").write_text("x")
        return
    for _ in range(600):
        if len(list(folder.glob("*.txt"))) == 2:
            break
        time.sleep(0.05)
    raise InputError("bad thing", path="somefile", field="somefield")


def test_jobs_run_in_other_processes_and_errors_come_back(tmp_path):
    with pytest.raises(InputError, match="^somefile: somefield: bad thing$"):
        run_jobs(_job, [(tmp_path, False), (tmp_path, False), (tmp_path, True)], processes=2, threads=1)
    pids = {int(p.stem) for p in tmp_path.glob("*.txt")}
    assert len(pids) >= 1 and os.getpid() not in pids


def _levels():
    import logging

    return logging.getLogger().getEffectiveLevel(), logging.getLogger("pccseg").getEffectiveLevel()


def test_job_processes_log_at_their_parents_levels():
    """Spawned workers start with no logging set: they take this process's levels, so that a quiet run
    (pccseg's INFO off) is quiet in its workers too (they logged INFO whatever the command said)."""
    import logging

    log = logging.getLogger("pccseg")
    before = log.level
    try:
        for level in (logging.WARNING, logging.INFO):
            log.setLevel(level)
            assert _levels()[1] == level
            assert run_jobs(_levels, [(), ()], processes=2, threads=1) == [_levels()] * 2
    finally:
        log.setLevel(before)


_held = []


def _hold_a_lock(folder):
    """Keeps a multiprocessing lock until the process ends, as tqdm's class-wide lock does (made by any tqdm,
    a disabled one too), and marks a normal end of the process: the lock's finalizer runs then."""
    import multiprocessing
    from multiprocessing.util import Finalize

    _held.append(multiprocessing.RLock())
    Finalize(_held[-1], (folder / f"{os.getpid()}.ended").write_text, args=("x",), exitpriority=0)
    return os.getpid()


def test_job_processes_end_normally_and_release_their_locks(tmp_path):
    """The pool's workers were terminated (SIGTERM) when the jobs were done: a semaphore a job kept (tqdm's
    lock) was never released, and every experiment ended with 'resource_tracker: There appear to be N
    leaked semaphore objects'. They now end normally: each worker's finalizers run."""
    for i in range(3):                  # a terminated worker sometimes had ended before its SIGTERM
        folder = tmp_path / str(i)
        folder.mkdir()
        pids = set(run_jobs(_hold_a_lock, [(folder,), (folder,)], processes=2, threads=1))
        assert {int(p.stem) for p in folder.glob("*.ended")} == pids and os.getpid() not in pids


@pytest.mark.parametrize("bad, field", [(dict(num=0), "num"), (dict(num=2.5), "num"), (dict(val=-1), "val"),
                                        (dict(labellers=("pcc", "nope")), "labellers"),
                                        (dict(labellers=("pcc", "pcc")), "labellers"), (dict(labellers=()), "labellers"),
                                        (dict(train_batch_size=1), "train_batch_size"),
                                        (dict(lr=float("nan")), "lr"), (dict(jobs=0), "jobs")])
def test_config_refuses_bad_values(bad, field):
    with pytest.raises(InputError) as e:
        ExperimentConfig(out="x", **bad)
    assert e.value.field == field


@pytest.mark.parametrize("args, words", [(["--labellers", "pcc", "nope"], ["--labellers", "unknown labeller 'nope'"]),
                                         (["--num", "0"], ["--num", "must be an integer >= 1"])])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    assert main(["experiment", "toy", "--out", str(tmp_path / "e"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert not (tmp_path / "e").exists()


def test_results_page_renders_tables_and_refuses_malformed(tmp_path):
    from pccseg.pictures.report import make_report

    d = tmp_path / "exp"
    d.mkdir()
    (d / "samples.png").write_bytes(b"\x89PNG fake")
    write_json(d / "results.json", {"title": "T", "tables": [{"title": "Down", "columns": ["set", "mIoU"],
                                                              "rows": [["pcc", 12.345], ["dd", None]], "note": "n"}],
                                    "pictures": [{"file": "samples.png", "caption": "cap"}, {"file": "../x.png"}],
                                    "config": {"num": 3}})
    html = make_report(d, tmp_path / "page").read_text()
    assert "<td>pcc</td><td class=num>12.35</td>" in html and "<td class=num>-</td>" in html
    assert (tmp_path / "page" / "samples.png").read_bytes() == b"\x89PNG fake" and "cap" in html
    write_json(d / "results.json", {"tables": [{"title": "no columns"}]})
    with pytest.raises(InputError, match="results.json: tables"):
        make_report(d, tmp_path / "page2")


def test_judge_error_and_named_picture():
    from pccseg.toy.quality import judge_error, picture

    j = judge_error(3)
    assert j["n"] == 3 and j["pixel_acc"] > 0.95 and 0 <= j["unknown"] < 0.05
    img = np.zeros((32, 32, 3), np.uint8)
    plain = picture([img, img], {"gt": [np.zeros((32, 32), np.uint8)] * 2}, names=False)
    named = picture([img, img], {"gt": [np.zeros((32, 32), np.uint8)] * 2})      # names by default
    assert plain.size[0] == 64 and named.size[0] > 64                             # the names' margin
    assert plain.size[1] == named.size[1] > 64                                   # the colour key under the grid


def test_generation_in_two_processes(tmp_path, toy_folder):
    """Each of the experiment's generating processes labels its own images (a pool's worker may not start
    generate's labelling worker), and together they write one dataset."""
    from pccseg.toy.experiment import stage_generate

    cfg = tiny_config(tmp_path / "exp", toy_folder, jobs=2)
    lay = Layout(Path(cfg.out))
    assert stage_generate(cfg, lay, "cpu", 2)
    assert len(list((lay.generated / "SegmentationClass").glob("*.png"))) == 2
    assert len((lay.generated / "manifest.jsonl").read_text().splitlines()) == 2
    assert not stage_generate(cfg, lay, "cpu", 2)            # done: nothing left


def test_a_rerun_removes_leftovers_from_every_folder_it_writes(tmp_path):
    """Stages that are done are skipped, but what a killed run left in their folders is removed."""
    from pccseg.io import TEMP_SUFFIX
    from pccseg.toy.experiment import Layout, _repair

    cfg = ExperimentConfig(out=str(tmp_path), labellers=("pcc", "attn"), num=10, val=5, iters=7)
    lay = Layout(tmp_path)
    planted = [tmp_path / f".results.json.0badf00d{TEMP_SUFFIX}", tmp_path / "scores" / f".pcc.json.0badf00d{TEMP_SUFFIX}",
               lay.rendered / "JPEGImages" / f".000001.jpg.0badf00d{TEMP_SUFFIX}",
               lay.generated / "captures" / "000001" / f".capture.json.0badf00d{TEMP_SUFFIX}",
               lay.labelled("attn") / "SegmentationClass" / f".000001.png.0badf00d{TEMP_SUFFIX}"]
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    (tmp_path / "scores" / "pcc.json").write_text("{}")
    _repair(cfg, lay)
    assert not any(p.exists() for p in planted) and (tmp_path / "scores" / "pcc.json").is_file()


def test_tables_mean_sd_over_seeds_and_paired_gains():
    """Three seeds: a row's figure is the mean, sd the sample standard deviation; an option's gain is the
    mean of its per-seed differences from the plain row (not the difference of the means' spreads)."""
    cfg = ExperimentConfig(out="x", labellers=("pcc",), num=10, val=5, iters=7, train_seeds=3, train_seed=5,
                           ema=0.9, filter=True)
    names = ["background"] + ["c%d" % i for i in range(20)]

    def sc(miou):
        return {"miou": miou, "iou": [miou] + [None] * 20, "class_names": names}

    m = {UPPER: [0.6, 0.7, 0.8], "rendered+ema": [0.6, 0.7, 0.8], "pcc": [0.3, 0.5, 0.4], "pcc+ema": [0.35, 0.55, 0.45],
         "pcc+filter": [0.2, 0.6, 0.4], "pcc+filter+ema": [0.3, 0.5, 0.4]}
    scores = {k: {5 + i: sc(v[i]) for i in range(3)} for k, v in m.items()}
    t = make_tables(cfg, {"n": 1, "pixel_acc": 1, "unknown": 0, "miou": 1, "adherence": 1},
                    {"n": 10, "adherence": 1, "gt_unknown": 0, "labellers": {"pcc": {
                        "miou": 0.5, "miou_certain": 0.5, "uncertain": 0, "iou": {}}}}, scores,
                    {"pcc": {"kept": 8, "dropped": 2}})
    down = t["downstream"]
    col = down.columns.index
    assert [r[0] for r in down.rows] == ["rendered (exact labels, upper bound)", "rendered + EMA", "pcc", "pcc + EMA",
                                         "pcc + filter", "pcc + filter + EMA"]
    assert down.rows[0][col("mIoU")] == pytest.approx(70.0) and down.rows[0][col("sd")] == pytest.approx(10.0)
    assert down.rows[2][col("% of upper bound")] == pytest.approx(40 / 70 * 100)
    assert "seeds 5, 6, 7" in down.note and "8 of 10 images (pcc)" in down.note
    gains = {r[0]: r[1:] for r in t["gains"].rows}
    assert gains["pcc + EMA"] == [pytest.approx(5.0), pytest.approx(0.0, abs=1e-9), 3]
    assert gains["pcc + filter"][:2] == [pytest.approx(0.0, abs=1e-9), pytest.approx(10.0)]
    assert t["per_seed"].columns == ["training set", "seed 5", "seed 6", "seed 7"]


def test_recipe_rows_and_seeds_end_to_end(tmp_path, toy_folder):
    """Two seeds, every recipe option: each row trained (or, for EMA, scored) at each seed; the
    self-training row's set is its labeller's masks relabelled by the plain run of the same seed; the
    filter wrote a split file into the labeller's set; a rerun changes no number."""
    n = torch.get_num_threads()
    cfg = tiny_config(tmp_path / "exp", toy_folder, labellers=("pcc",), num=4, train_seeds=2, train_seed=3,
                      ema=0.5, self_train=0.2, filter=True)
    results = run_experiment(cfg)
    torch.set_num_threads(n)
    lay = Layout(Path(cfg.out))
    keys = ["rendered", "rendered+ema", "pcc", "pcc+ema", "pcc+filter", "pcc+filter+ema", "pcc+self-train",
            "pcc+self-train+ema"]
    for key in keys:
        for seed in (3, 4):
            s = json.loads(lay.scores(key, seed).read_text())
            assert s["seed"] == seed and 0 <= s["miou"] <= 1
    for seed in (3, 4):
        relabelled = json.loads((lay.self_trained("pcc", seed) / "settings.json").read_text())
        assert relabelled["teacher"] == str((lay.run("pcc", seed) / "ema").resolve()) and relabelled["rule"] == "fill"
        assert json.loads((lay.run("pcc+filter", seed) / "config.json").read_text())["train_split"] == "filtered"
    assert (lay.generated / "ImageSets/Segmentation/filtered.txt").is_file()
    tables = {t["title"].split(" (")[0].split(":")[0]: t for t in results["tables"]}
    assert [r[0] for r in tables["Downstream"]["rows"]][:4] == ["rendered (exact labels, upper bound)",
                                                               "rendered + EMA", "pcc", "pcc + EMA"]
    gains = tables["Recipe options against the plain recipe on the same images"]
    assert [r[0] for r in gains["rows"]] == ["rendered + EMA", "pcc + EMA", "pcc + filter", "pcc + filter + EMA",
                                             "pcc + self-train", "pcc + self-train + EMA"]
    assert all(r[-1] == 2 for r in gains["rows"])
    again = run_experiment(cfg)
    torch.set_num_threads(n)
    assert again["tables"] == results["tables"]
    fresh = run_experiment(dataclasses.replace(cfg, out=str(tmp_path / "fresh")))     # same settings, new folder
    torch.set_num_threads(n)
    assert fresh["tables"] == results["tables"]                                      # every number, every digit


def test_the_same_command_in_fresh_folders_writes_the_same_results(tmp_path, toy_folder, capsys):
    """The command line twice, each in a fresh folder: results.md is the same text up to its timings
    (every table, every digit), and so are the CSV tables; the two seeds' runs differ from each other (the
    equality is not that of constant scores)."""
    n = torch.get_num_threads()
    args = ["experiment", "toy", "--model", str(toy_folder), "--num", "3", "--val", "2", "--steps", "2",
            "--batch-size", "3", "--iters", "4", "--train-batch-size", "2", "--crop-size", "32", "--judge-scenes",
            "2", "--pictures", "1", "--device", "cpu", "--jobs", "1", "--train-seeds", "2", "--labellers", "pcc",
            "-q"]
    texts = []
    for name in ("a", "b"):
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        torch.set_num_threads(n)
        md = (tmp_path / name / "results.md").read_text()
        assert "### Time" in md
        texts.append((md.split("### Time")[0], *((tmp_path / name / f).read_text() for f in
                                                 ("downstream.csv", "per_seed.csv", "label_quality.csv"))))
    capsys.readouterr()
    assert texts[0] == texts[1]
    a = [json.loads(Layout(tmp_path / "a").scores(UPPER, s).read_text()) for s in (0, 1)]
    assert a[0]["iou"] != a[1]["iou"]
