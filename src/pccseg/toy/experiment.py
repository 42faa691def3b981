"""The report's experiment on the toy world: PCC against Dataset Diffusion's rule (``dd``), the class
maps alone (``attn``) and the fuse labeller (``fuse``), scored against ground truth.

    pccseg experiment toy --out runs/exp              # run it again to resume

:func:`run_experiment` is a thin orchestration of pccseg's own stages; each skips what is done, and every
file is written atomically, so a killed run resumes where it stopped. Folder ``DIR``:

=================================  ==========================================================================
``experiment.json``                the :class:`~pccseg.toy.config.ExperimentConfig` (a rerun with other
                                   settings is refused)
``generated/``                     1. the first N toy prompts generated with the model (:func:`pccseg.dataset.generate.
                                   generate`, seed 2024 + i, captures kept) and labelled with PCC: the
                                   ``pcc`` set
``sets/<labeller>/``               2. every other labeller on the same captures (:func:`pccseg.labellers.registry.label`)
``judge.json``, ``quality.json``   3. the colour judge's error on rendered scenes; each labeller's masks
                                   against the judge's ground truth of the generated images
``rendered/``                      4. N rendered scenes with exact labels (``train``: the upper bound) and V
                                   held-out ones (``val``), seeds from :data:`~pccseg.toy.config.RENDER_SEED`
``runs/<row>/seed-<s>/``,          5. DeepLabv3-MobileNetV3 (random init, :func:`pccseg.train.loop.train`) per
``scores/<row>/seed-<s>.json``     row and training seed, scored on the rendered val split
                                   (:func:`pccseg.train.evaluate.evaluate`); the rows and recipe options:
                                   :mod:`pccseg.toy.downstream`
``results.md``, ``results.json``,  6. the tables; ``samples.png``: images with every labeller's mask beside
``*.csv``, ``samples.png``,        the ground truth; ``report/index.html`` (:func:`pccseg.pictures.report.make_report`)
``report/``
=================================  ==========================================================================

On a CPU the generation and the trainings run in ``jobs`` processes of ``threads`` torch threads each (one
thread per process is fastest on a small machine); on CUDA in this process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import torch

from ..dataset.folder import DatasetFolder, settings_diff
from ..errors import InputError
from ..io import load_image, load_mask, read_json, save_image, write_json
from ..vocab import VOC_CLASSES
from .config import EXPERIMENT_RUNTIME_FIELDS, RENDER_SEED, TOY_SIZE, ExperimentConfig
from .downstream import SELF_TRAIN, UPPER, rows, seeds, stage_filter, stage_train
from .jobs import run_jobs
from .world import TOY_CLASSES

log = logging.getLogger(__name__)

TABLE_CLASSES = ("background",) + TOY_CLASSES


# ----------------------------------------------------------------------------------------------- folders
@dataclasses.dataclass(frozen=True)
class Layout:
    """The paths of an experiment folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "experiment.json"

    @property
    def generated(self) -> Path:
        return self.root / "generated"

    @property
    def rendered(self) -> Path:
        return self.root / "rendered"

    def labelled(self, labeller: str) -> Path:
        """The dataset of a labeller's masks: PCC's is the generated one."""
        return self.generated if labeller == "pcc" else self.root / "sets" / labeller

    def training_set(self, name: str) -> Path:
        return self.rendered if name == UPPER else self.labelled(name)

    def run(self, name: str, seed: int) -> Path:
        """The training run of row ``name`` with seed ``seed``."""
        return self.root / "runs" / name / f"seed-{seed}"

    def scores(self, name: str, seed: int) -> Path:
        return self.root / "scores" / name / f"seed-{seed}.json"

    def self_trained(self, base: str, seed: int) -> Path:
        """The training set of ``base``'s self-training row at ``seed``: its masks relabelled by the plain
        row's run of that seed."""
        return self.root / "sets" / f"{base}+{SELF_TRAIN}" / f"seed-{seed}"


def check_config(cfg: ExperimentConfig, lay: Layout) -> None:
    """Record the settings in ``experiment.json``; refuse a folder that holds an experiment with others."""
    new = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EXPERIMENT_RUNTIME_FIELDS}
    if lay.root.exists() and not lay.root.is_dir():
        raise InputError("exists and is not a directory", path=lay.root, field="--out")
    if lay.config.is_file():
        diff = settings_diff(read_json(lay.config), new)
        if diff:
            raise InputError("this folder holds an experiment with other settings (" + "; ".join(diff)
                             + "): use another --out, or the earlier options to resume it", path=lay.config)
        return
    write_json(lay.config, json.loads(json.dumps(new)))


# -------------------------------------------------------------------------------------- 1. generation
def toy_records(num: int):
    """The first ``num`` records of the shipped toy prompt set."""
    from ..dataset.prompts import TOY_PROMPTS, default_prompts_path, load_prompts, select

    path = default_prompts_path(TOY_PROMPTS)
    records = select(load_prompts(path), num=num)
    if len(records) < num:
        raise InputError(f"the toy prompt set has {len(records)} records, fewer than {num}", path=path, field="--num")
    return records


def generate_part(cfg: ExperimentConfig, device: str, rank: int, world: int) -> int:
    """Generate (with captures) and PCC-label process ``rank``'s share of the records; returns the number
    of new images."""
    from ..dataset.generate import GenerateConfig, generate
    from ..capture.pipeline import load_pipeline
    from ..dataset.prompts import TOY_PROMPTS

    pipe = load_pipeline(cfg.model, device=device, progress=cfg.progress and world == 1)
    config = GenerateConfig(steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed, batch_size=cfg.batch_size,
                            height=TOY_SIZE, width=TOY_SIZE, keep_captures=True, model=cfg.model, prompts=TOY_PROMPTS,
                            progress=cfg.progress and world == 1,
                            label_workers=0)     # the experiment's own processes already fill the cores
    return generate(pipe, toy_records(cfg.num), Layout(Path(cfg.out)).generated, config, rank=rank,
                    world_size=world).generated


def stage_generate(cfg: ExperimentConfig, lay: Layout, device: str, processes: int) -> bool:
    ds = DatasetFolder(lay.generated)
    todo = ds.todo([r.stem for r in toy_records(cfg.num)], with_capture=True)
    if not todo:
        return False
    world = processes if device.startswith("cpu") else 1
    log.info("generate: %d image(s) with captures in %d process(es)", len(todo), world)
    ds.repair()                     # before the processes start: none of them repairs (no barrier between them)
    run_jobs(generate_part, [(cfg, device, r, world) for r in range(world)], world, cfg.threads)
    ds.rebuild()
    return True


# ----------------------------------------------------------------------------------------- 2. relabel
def stage_relabel(cfg: ExperimentConfig, lay: Layout, device: str) -> bool:
    """Label the kept captures with every labeller other than PCC into ``sets/<labeller>/`` (a VOC-layout
    dataset: the generated image, the labeller's mask, a manifest line, ``settings.json``)."""
    from ..capture.format import load_capture
    from ..dataset.folder import manifest_entry
    from ..labellers.registry import default_params, label, params_record

    records = toy_records(cfg.num)
    source = DatasetFolder(lay.generated)
    did = False
    for name in cfg.labellers:
        if name == "pcc":
            continue
        params = default_params(name)
        ds = DatasetFolder.open(lay.labelled(name), {"source": "pccseg experiment toy: relabelled captures",
                                                     "captures": "../../generated", "class_names": list(VOC_CLASSES),
                                                     **params_record(params)})
        ds.bind()
        ds.repair()
        open_stems = set(ds.todo([r.stem for r in records]))
        todo = [r for r in records if r.stem in open_stems]
        for r in todo:
            cap = load_capture(source.capture_dir(r.stem), device=device)
            t0 = time.perf_counter()
            mask = label(cap, params).mask.cpu()
            entry = manifest_entry(r.stem, mask, VOC_CLASSES, record_id=r.id, prompt=r.prompt, classes=r.classes,
                                   seed=cfg.seed + r.index, timings={"label": time.perf_counter() - t0})
            ds.write_sample(r.stem, cap.image.cpu().numpy(), mask, entry)
        if todo or not ds.train_list_path.is_file():
            ds.rebuild()
            did = True
    return did


# ----------------------------------------------------------------------------------------- 3. quality
def stage_quality(cfg: ExperimentConfig, lay: Layout) -> bool:
    """The judge's error on rendered scenes (``judge.json``) and the labellers' masks against the judge's
    ground truth of the generated images (``quality.json``)."""
    from .judge import Adherence, colour_labels, present_classes
    from .quality import MaskScore, judge_error

    did = False
    judge = lay.root / "judge.json"
    if not judge.is_file():
        write_json(judge, judge_error(cfg.judge_scenes))
        did = True
    path = lay.root / "quality.json"
    if path.is_file():
        return did
    scores = {name: MaskScore() for name in cfg.labellers}
    adherent, unknown, pixels = 0, 0, 0
    generated = DatasetFolder(lay.generated)
    for r in toy_records(cfg.num):
        gt = colour_labels(load_image(generated.image_path(r.stem)))
        adherent += Adherence(set(r.classes), present_classes(gt)).ok
        unknown, pixels = unknown + int((gt == 255).sum()), pixels + gt.size
        for name, score in scores.items():
            score.add(load_mask(DatasetFolder(lay.labelled(name)).mask_path(r.stem)), gt)
    write_json(path, {"n": cfg.num, "adherence": adherent / cfg.num, "gt_unknown": unknown / pixels,
                      "labellers": {name: s.summary() for name, s in scores.items()}})
    return True


# ------------------------------------------------------------------------------------------ 4. render
def stage_render(cfg: ExperimentConfig, lay: Layout) -> bool:
    from ..dataset.voc import SPLIT_DIR
    from .dataset import write_toy_dataset

    if (lay.rendered / SPLIT_DIR / "val.txt").is_file():
        return False
    write_toy_dataset(lay.rendered, cfg.num, cfg.val, seed=RENDER_SEED, size=TOY_SIZE)
    return True


# ------------------------------------------------------------------------------------ 5. train, score
# stage_filter and stage_train: pccseg.toy.downstream


# ------------------------------------------------------------------------------------------ 6. tables
@dataclasses.dataclass
class Table:
    """A results table: a title, column names, rows of cells (str or number; None: undefined), a note."""

    title: str
    columns: list[str]
    rows: list[list]
    note: str = ""

    def markdown(self) -> str:
        def cell(x) -> str:
            return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

        lines = [f"### {self.title}", "", "| " + " | ".join(self.columns) + " |",
                 "|---|" + "---:|" * (len(self.columns) - 1)]
        lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in self.rows]
        return "\n".join(lines + ([f"\n{self.note}"] if self.note else [])) + "\n"

    def csv(self) -> str:
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.columns)
        w.writerows([["" if x is None else x for x in row] for row in self.rows])
        return buf.getvalue()


def _pct(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * x


def make_tables(cfg: ExperimentConfig, judge: dict, quality: dict, scores: dict[str, dict[int, dict]],
                filtered: dict | None = None) -> dict[str, Table]:
    """The experiment's tables, percentages: ``judge``, ``label_quality``, ``downstream`` (report Table 3's
    layout: rows = training sets, columns = classes, mean mIoU over the training seeds, its sd, share of
    the upper bound's mean mIoU), ``per_seed`` (each row's mIoU at each seed) and, with a recipe option,
    ``gains`` (each option's mIoU minus the plain recipe's, seed by seed). ``scores[row][seed]``: an
    evaluate ``to_dict()``; ``filtered``: ``filter.json``'s reports (with the filter option)."""
    from .downstream import summary

    tables = {"judge": Table(
        "The judge's own error: colour-family ground truth against the exact labels of rendered scenes (JPEG "
        "q95; %)", ["scenes", "pixel accuracy", "unknown pixels", "mIoU", "scenes judged adherent"],
        [[judge["n"], _pct(judge["pixel_acc"]), _pct(judge["unknown"]), _pct(judge["miou"]),
          _pct(judge["adherence"])]],
        "Unknown pixels count as wrong in the mIoU; they are left out of every score against the judge.")}
    rows = []
    for name in cfg.labellers:
        s = quality["labellers"][name]
        rows.append([name, _pct(s["miou"]), _pct(s["miou_certain"]), _pct(s["uncertain"])]
                    + [_pct(s["iou"].get(c)) for c in TABLE_CLASSES])
    tables["label_quality"] = Table(
        f"Label quality: each labeller's masks against the judge's ground truth of the {quality['n']} generated "
        "images (IoU %)",
        ["labeller", "mIoU", "mIoU (certain pixels)", "uncertain %", *TABLE_CLASSES], rows,
        f"Generated images whose judged classes are exactly the prompted ones: {_pct(quality['adherence']):.1f} %. "
        f"Pixels the judge leaves unknown (not scored): {_pct(quality['gt_unknown']):.1f} %. mIoU counts an "
        "uncertain (255) pixel as wrong; 'certain pixels' leaves them out.")
    down = summary(cfg, scores, TABLE_CLASSES)
    n = len(down["seeds"])
    seed_list = ", ".join(map(str, down["seeds"]))
    kept = "" if not filtered else " The filtered sets keep " + ", ".join(
        f"{r['kept']} of {r['kept'] + r['dropped']} images ({name})" for name, r in filtered.items()) + "."
    tables["downstream"] = Table(
        f"Downstream: DeepLabv3-MobileNetV3 (random init, {cfg.iters} iterations) trained on each set of "
        f"{cfg.num} images, scored on {cfg.val} held-out rendered images with exact labels (IoU %, mean over "
        f"{n} training seed{'s' if n != 1 else ''})",
        ["training set", *TABLE_CLASSES, "mIoU", "sd", "% of upper bound"], down["downstream"],
        f"mIoU is the mean over the classes present in the val labels or predicted; the row's figure is the mean "
        f"over the training seeds {seed_list} and sd their standard deviation (mIoU points).{kept}")
    tables["per_seed"] = Table("Downstream mIoU at each training seed (%)",
                               ["training set", *(f"seed {s}" for s in down["seeds"])], down["per_seed"])
    if down["gains"]:
        tables["gains"] = Table(
            "Recipe options against the plain recipe on the same images (mIoU points, paired by seed)",
            ["training set", "gain", "sd", "seeds"], down["gains"],
            "Gain: the row's mIoU minus its training set's plain row's mIoU at the same seed, mean over the seeds.")
    return tables


def stage_tables(cfg: ExperimentConfig, lay: Layout, timings: dict, device: str, processes: int) -> dict:
    from ..io import atomic_path

    judge, quality = read_json(lay.root / "judge.json"), read_json(lay.root / "quality.json")
    scores = {r.key: {s: read_json(lay.scores(r.key, s)) for s in seeds(cfg)} for r in rows(cfg)}
    filtered = read_json(lay.root / "filter.json") if cfg.filter else None
    tables = make_tables(cfg, judge, quality, scores, filtered)
    for key in ("label_quality", "downstream", "per_seed"):
        with atomic_path(lay.root / f"{key}.csv") as tmp:
            tmp.write_text(tables[key].csv())
    hardware = {"device": device, "processes": processes, "threads": cfg.threads, "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None}
    text = ["# pccseg experiment toy", "", f"Model `{cfg.model}`; {cfg.num} generated images; labellers "
            f"{', '.join(cfg.labellers)}. Hardware: {hardware['device']}, {processes} process(es) x "
            f"{cfg.threads} thread(s), {hardware['cpus']} CPUs ({hardware['processor']}).", ""]
    text += [t.markdown() for t in tables.values()]
    total = {k: sum(t[k] for t in timings.values()) for k in ("seconds", "cpu_seconds")}
    text += ["### Time", "", "CPU seconds: this process and its workers (what the stage costs on idle cores).", "",
             "| stage | seconds | CPU seconds |", "|---|---:|---:|"]
    text += [f"| {k} | {t['seconds']:.0f} | {t['cpu_seconds']:.0f} |" for k, t in {**timings, "total": total}.items()]
    text += [""]
    with atomic_path(lay.root / "results.md") as tmp:
        tmp.write_text("\n".join(text))
    results = {"kind": "pccseg-experiment", "title": "pccseg experiment toy", "config": dataclasses.asdict(cfg),
               "hardware": hardware, "timings": timings, "judge": judge,
               "label_quality": quality, "downstream": scores,
               "tables": [dataclasses.asdict(t) for t in tables.values()],
               "pictures": [{"file": "samples.png", "caption": "Generated images (top row), the judge's "
                             "ground truth, and each labeller's mask (uncertain: light grey)."}]}
    write_json(lay.root / "results.json", results)
    return results


def stage_pictures(cfg: ExperimentConfig, lay: Layout) -> None:
    """``samples.png``: the first ``pictures`` generated images, the judge's ground truth, every labeller's
    mask."""
    from .judge import colour_labels
    from .quality import picture

    stems = [r.stem for r in toy_records(cfg.num)][:cfg.pictures]
    if not stems:
        return
    images = [load_image(DatasetFolder(lay.generated).image_path(s)) for s in stems]
    rows = {"ground truth": [colour_labels(im) for im in images]}
    rows.update({name: [load_mask(DatasetFolder(lay.labelled(name)).mask_path(s)) for s in stems]
                 for name in cfg.labellers})
    save_image(lay.root / "samples.png", picture(images, rows, n=len(stems), names=True))


# ---------------------------------------------------------------------------------------------- all
def _cpu_seconds() -> float:
    """User + system time of this process and of its finished child processes (the workers)."""
    import resource

    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def _repair(cfg: ExperimentConfig, lay: Layout) -> None:
    """Remove what a killed run left in every folder the experiment writes, done stages included: the
    root, ``scores/``, ``runs/``, and each dataset (``generated``, ``rendered``, ``sets/<labeller>``); the
    training runs clean their own folders."""
    from ..io import remove_temps

    for folder in (lay.root, lay.root / "scores", lay.root / "runs", lay.root / "sets", lay.root / "report"):
        remove_temps(folder)
    for folder in {lay.generated, lay.rendered, *(lay.labelled(n) for n in cfg.labellers)}:
        if folder.is_dir():
            DatasetFolder(folder).repair()


def run_experiment(cfg: ExperimentConfig) -> dict:
    """Run (or resume) every stage; returns ``results.json``'s content."""
    from ..capture.pipeline import check_model, resolve_device
    from ..pictures.report import make_report

    lay = Layout(Path(cfg.out))
    check_model(cfg.model)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", field="--device")
    processes = cfg.jobs or (1 if device.type == "cuda" else 2)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    check_config(cfg, lay)
    _repair(cfg, lay)
    timings_path = lay.root / "timings.json"
    timings = read_json(timings_path) if timings_path.is_file() else {}
    stages = [("generate", lambda: stage_generate(cfg, lay, str(device), processes)),
              ("relabel", lambda: stage_relabel(cfg, lay, str(device))),
              ("quality", lambda: stage_quality(cfg, lay)),
              ("render", lambda: stage_render(cfg, lay)),
              ("filter", lambda: stage_filter(cfg, lay)),
              ("train", lambda: stage_train(cfg, lay, str(device), processes))]
    for name, fn in stages:
        t0, c0 = time.perf_counter(), _cpu_seconds()
        if fn():
            timings[name] = {"seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(_cpu_seconds() - c0, 1)}
            write_json(timings_path, timings)
            log.info("%s: done in %.0f s (%.0f CPU seconds)", name, *timings[name].values())
    stage_pictures(cfg, lay)
    results = stage_tables(cfg, lay, timings, str(device), processes)
    make_report(lay.root, lay.root / "report")
    return results
