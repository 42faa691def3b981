"""Prompts -> images + PCC masks, straight to a VOC-layout dataset (docs/method.md sections 0-4).

:func:`generate` runs the pipeline on batches of prompt records with :func:`pccseg.capture.attention.capture`
around each call, labels every image right after its batch with :func:`pccseg.labellers.pcc.label`, and writes
the dataset directory described in :mod:`pccseg.dataset.folder`. Record ``i`` of the prompt file (0-based) is
generated with seed ``seed + i`` (report: 2024 + index) on its own CPU ``torch.Generator``, so an image
does not depend on the batch it is in. Running the same call again skips samples that are done; under
``accelerate launch`` every process takes the records whose index is its rank modulo the world size.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .folder import VAL_SHARE, DatasetFolder, manifest_entry, rounding_changes, settings_diff
from ..errors import InputError
from ..io import make_dir
from ..limits import check_fits, check_seed
from .prompts import PromptRecord
from ..params import SEED, TEXT, Bool, Choice, Int, OrNone, Real, Seq, Where, check, param, parameters
from ..vocab import IGNORE_INDEX, VOC_CLASSES

log = logging.getLogger(__name__)

DEFAULT_MODEL = "stabilityai/stable-diffusion-2-1-base"
DEFAULT_STEPS = 80
DEFAULT_SEED = 2024


@dataclass
class GenerateReport:
    """What one :func:`generate` call did (this process only)."""

    generated: int = 0
    skipped: int = 0
    recaptured: int = 0               # of ``generated``: samples that were done but made again for their capture
    seconds: float = 0.0
    rank: int = 0
    world_size: int = 1
    dataset_size: int | None = None   # samples in train.txt after the rebuild (main process only)
    stems: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def default_guidance(pipe) -> float:
    """The default ``guidance_scale`` of a pipeline or pipeline class (7.5 for SD, 5.0 for SDXL)."""
    p = inspect.signature((pipe if isinstance(pipe, type) else type(pipe)).__call__).parameters.get("guidance_scale")
    return float(p.default) if p is not None and p.default is not inspect.Parameter.empty else 7.5


def default_size(pipe) -> tuple[int, int]:
    """The pipeline's default (height, width): UNet sample size x VAE scale factor."""
    s = pipe.unet.config.sample_size
    h, w = (s, s) if isinstance(s, int) else tuple(s)
    f = getattr(pipe, "vae_scale_factor", 8)
    return int(h * f), int(w * f)


#: The most denoising steps: SD's schedulers are trained on 1000 timesteps (and refuse more).
MAX_STEPS = 1000
#: The largest image side: 8x SD's 512, 4x SDXL's 1024 (attention work grows with the square of the pixels).
MAX_SIDE = 4096
#: The largest guidance scale: SD uses 7.5, SDXL 5; far above, the latents overflow into NaN.
MAX_GUIDANCE = 100.0


def check_size_fits(height: int, width: int, batch_size: int, device=None, *, vae_channels: int = 8) -> None:
    """:class:`InputError` (field ``height``) when ``batch_size`` images of ``height`` x ``width`` cannot be
    decoded in the memory of ``device``: the VAE decoder holds at least two ``vae_channels`` x H x W float32
    activations per image (8: the smallest of the pipelines pccseg ships; SD's have 128)."""
    check_fits(float(batch_size) * height * width * vae_channels * 2 * 4, "height",
               f"decoding {batch_size} image(s) of {height} x {width}", device)


def _is_side(v: Any) -> bool:
    return Int(8, MAX_SIDE).accepts(v) and v % 8 == 0


#: An image side: a multiple of 8 up to :data:`MAX_SIDE`.
SIDE = Where(_is_side, f"a multiple of 8 from 8 to {MAX_SIDE}", why="64 for SD's full UNet depth", metavar="PX")


def _is_label_params(v: Any) -> bool:
    from ..labellers.registry import labeller_of

    try:
        labeller_of(v)
    except TypeError:
        return False
    return True


@parameters
@dataclass(frozen=True)
class GenerateConfig:
    """The settings of a :func:`generate` run, checked when made (:class:`InputError` naming the field).

    None stands for the model's default, filled from the pipeline by :meth:`for_pipeline` (the table of
    built-in models, :mod:`pccseg.capture.models`, then the pipeline's own). What changes the dataset's
    content is recorded in settings.json (:meth:`record`); ``keep_captures``, ``label_workers`` and
    ``progress`` are not, and ``batch_size`` only for information.
    """

    steps: int | None = param(None, f"denoising steps (default: {DEFAULT_STEPS}, the report's; a built-in model's: "
                              "toy 25, tiny models 4)",
                              OrNone(Int(1, MAX_STEPS, why="the schedulers' training timesteps")))
    guidance: float | None = param(None, "classifier-free guidance scale (default: the built-in model's, else the "
                                   "pipeline's: 7.5 for SD, 5.0 for SDXL; toy 5)",
                                   OrNone(Real(0, MAX_GUIDANCE, why="SD uses 7.5")))
    seed: int = param(DEFAULT_SEED, f"record i (0-based index in its prompt file) gets seed SEED + i (default: "
                      f"{DEFAULT_SEED}, the report's)", SEED)
    batch_size: int = param(1, "images per pipeline call (the images do not depend on it)", Int(1))
    height: int | None = param(None, "image height (default: the model's; toy and tiny 128, SD 2.1-base 512)",
                               OrNone(SIDE))
    width: int | None = param(None, "image width (default: the model's; toy and tiny 128, SD 2.1-base 512)",
                              OrNone(SIDE))
    keep_captures: bool = param(False, "also write captures/<stem>/ (attention capture with what every labeller "
                                "needs, so `pccseg label --labeller X` relabels them; ~31.8 MB per image at SD 2.1 "
                                "shapes)", Bool())
    label_params: Any = param(None, "a labeller's parameters; their type picks the labeller (default None: PCC, "
                              "the report's values)",
                              OrNone(Where(_is_label_params, "a labeller's parameters (LabelParams, DDParams, "
                                           "AttnParams or FuseParams)")))
    class_names: tuple[str, ...] = param(VOC_CLASSES, "label value -> class name (index 0 background)",
                                         Seq(TEXT, 1, IGNORE_INDEX))
    query_half: str = param("uncond", "CFG half whose queries make the OVAM class maps (default: uncond, OVAM's)",
                            Choice("uncond", "cond"))
    include_mid: bool = param(False, "add the mid block's cross-attention to the maps", Bool())
    val_share: float = param(0.0, "hold out this share of the samples (0 <= X < 1) in "
                             "ImageSets/Segmentation/val.txt; which ones is fixed by their ids (default: 0, all in "
                             "train.txt)", VAL_SHARE)
    negative_prompt: str | None = param(None, "what the images should not show, for every image (the pipeline's "
                                        "negative_prompt; Dataset Diffusion used a long one; default: none, the "
                                        "empty prompt)", OrNone(TEXT))
    model: str | None = param(None, "the model name recorded (None: the pipeline's name_or_path)", OrNone(TEXT))
    prompts: str | None = param(None, "the prompt file recorded (None: the model's shipped set's file name)",
                                OrNone(TEXT))
    pipeline_settings: Mapping[str, Any] = param(
        help="recorded as given: how the pipeline was loaded (the CLI: tiny_seed, scheduler_choice, cpu_offload)",
        check=Where(lambda v: isinstance(v, Mapping), "a mapping of setting names to values"), default_factory=dict)
    label_workers: int | None = param(None, "labelling processes beside sampling (None: 1 on the CPU, else 0)",
                                      OrNone(Int(0)))
    progress: bool = param(True, "a progress bar", Bool())

    def __post_init__(self):
        check(self)

    def _validate(self) -> None:
        object.__setattr__(self, "pipeline_settings", dict(self.pipeline_settings))
        if self.label_params is None:
            from ..labellers.registry import default_params

            object.__setattr__(self, "label_params", default_params())

    def with_defaults(self, entry=None, *, guidance: float | None = None, size: tuple[int, int] | None = None,
                      model: str | None = None) -> GenerateConfig:
        """This config with the fields that are None filled: from the built-in model ``entry``
        (:class:`pccseg.capture.models.BuiltinModel`; steps, guidance, prompt set), else the report's 80 steps,
        the ``guidance`` given (a pipeline's default) and the VOC prompt set; ``size``: (height, width);
        ``model``: the name recorded."""
        from .prompts import PROMPT_SETS

        guidance = entry.guidance if entry is not None and entry.guidance is not None else guidance
        h, w = size if size is not None else (None, None)
        fill = dict(steps=entry.steps if entry else DEFAULT_STEPS, guidance=None if guidance is None else float(guidance),
                    prompts=PROMPT_SETS[entry.prompts if entry else "voc"], height=h, width=w, model=model)
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def for_pipeline(self, pipe) -> GenerateConfig:
        """:meth:`with_defaults` from ``pipe``: its built-in entry (:func:`pccseg.capture.models.pipeline_model`),
        default guidance and size, and name (``name_or_path``); a config without None left (no-op when
        the CLI filled it from the model's name)."""
        from ..capture.models import pipeline_model

        name = getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or "unknown"
        return self.with_defaults(pipeline_model(pipe), guidance=default_guidance(pipe), size=default_size(pipe),
                                  model=name)

    def record(self, *, dtype: str, **info: Any) -> dict:
        """The settings.json of a run with this (filled) config and the model's ``dtype``: everything that
        changes the dataset's content, then ``batch_size`` and ``info`` (:data:`pccseg.dataset.folder.
        INFORMATIONAL_KEYS`). The labeller is recorded as ``labeller`` and ``label_params``; ``val_share``
        and ``negative_prompt`` only when they are used (folders made without them resume as before)."""
        from ..labellers.registry import params_record

        return dict(model=self.model, steps=int(self.steps), guidance=float(self.guidance), height=int(self.height),
                    width=int(self.width), dtype=str(dtype).replace("torch.", ""), seed=int(self.seed),
                    prompts=str(self.prompts), class_names=list(self.class_names), query_half=self.query_half,
                    include_mid=bool(self.include_mid), **params_record(self.label_params), pccseg_version=__version__,
                    **({"val_share": self.val_share} if self.val_share else {}), batch_size=self.batch_size,
                    **self.pipeline_settings,
                    **({"negative_prompt": self.negative_prompt} if self.negative_prompt is not None else {}), **info)


def split_records(records: Sequence[PromptRecord], rank: int, world_size: int) -> list[PromptRecord]:
    """The records process ``rank`` of ``world_size`` handles: those whose file index is rank mod world."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    return [r for r in records if r.index % world_size == rank]


def distributed_state() -> tuple[int, int, bool, Any]:
    """(rank, world size, is main process, accelerate ``PartialState`` or None)."""
    import torch

    try:
        from accelerate import PartialState

        # cpu=True lets torchrun / accelerate start several CPU processes (gloo) when there is no GPU
        st = PartialState(cpu=not torch.cuda.is_available())
        return st.process_index, st.num_processes, st.is_main_process, st
    except Exception:  # pragma: no cover - accelerate missing or broken
        return 0, 1, True, None


def _chunks(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def generate(pipe, records: Sequence[PromptRecord], out_dir: str | Path | DatasetFolder,
             config: GenerateConfig | None = None, *, rank: int | None = None,
             world_size: int | None = None) -> GenerateReport:
    """Generate, capture, label and write ``records`` into the dataset directory ``out_dir``::

        generate(load_pipeline("tiny"), load_prompts()[:4], "runs/demo", GenerateConfig(steps=4))

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (see :func:`pccseg.capture.pipeline.load_pipeline`).
        records: prompt records (see :mod:`pccseg.dataset.prompts`); the seed of a record is ``config.seed + record.index``.
        out_dir: the dataset folder, or that folder opened with this run's settings
            (:meth:`DatasetFolder.open` with ``config.record(...)``, as the CLI does before it loads the model:
            then it is not checked again). A folder whose settings differ raises :class:`InputError` before
            any model work.
        config: the run's settings (:class:`GenerateConfig`; None: every default); what it leaves None is
            the model's (:meth:`GenerateConfig.for_pipeline`).
        rank, world_size: this process's share (None: from accelerate's ``PartialState``). Given with a
            world size above 1, nothing waits for the other processes: the caller repairs the folder
            (:meth:`DatasetFolder.repair`) before it starts them, and rebuilds it (:meth:`DatasetFolder.rebuild`) after.

    With ``config.label_workers`` None, the images are labelled in one process beside this one (which samples
    the next batch meanwhile: :class:`pccseg.labellers.workers.LabelPool`) when the pipeline runs on the CPU
    and this process may start one (not a daemonic pool worker), else in this one. The masks are the same.

    Returns:
        a :class:`GenerateReport` of this process.
    """
    import numpy as np
    import torch

    from ..capture.attention import capture
    from ..capture.format import as_saved
    from ..labellers.registry import labeller_of
    from ..labellers.workers import LabelPool

    cfg = (config if config is not None else GenerateConfig()).for_pipeline(pipe)
    check_seed(cfg.seed, "seed", count=1 + max((r.index for r in records), default=0))
    label_workers = cfg.label_workers
    if label_workers is None:       # a daemonic process (a pool's worker) may not start one
        label_workers = 1 if pipe.device.type == "cpu" and not multiprocessing.current_process().daemon else 0
    self_probs = labeller_of(cfg.label_params).needs_self_probs or cfg.keep_captures   # what every labeller needs
    check_size_fits(cfg.height, cfg.width, cfg.batch_size, pipe.device,
                    vae_channels=pipe.vae.config.block_out_channels[0])
    trained = getattr(pipe.scheduler.config, "num_train_timesteps", MAX_STEPS)
    if cfg.steps > trained:
        raise InputError(f"must be at most {trained} (the scheduler's training timesteps), got {cfg.steps}",
                         field="steps")
    settings = cfg.record(dtype=pipe.unet.dtype, scheduler=type(pipe.scheduler).__name__, device=pipe.device.type,
                          **({"threads": torch.get_num_threads()} if pipe.device.type == "cpu" else {}))
    if isinstance(out_dir, DatasetFolder) and out_dir.settings is not None:
        ds = out_dir                # opened (and checked) by the caller with these settings
        if settings_diff(ds.settings, settings):
            raise ValueError(f"{ds.root} was opened with other settings than the config's: "
                             + "; ".join(settings_diff(ds.settings, settings)))
    else:
        ds = DatasetFolder.open(out_dir, settings)
    steps, guidance, height, width = cfg.steps, cfg.guidance, cfg.height, cfg.width
    class_names, keep_captures = cfg.class_names, cfg.keep_captures

    st = None
    if rank is None or world_size is None:
        rank, world_size, is_main, st = distributed_state()
    else:
        is_main = rank == 0
    if is_main:                     # alone in the folder until the others pass the barrier
        changed = rounding_changes(ds.stored or {}, settings)
        if changed:
            log.warning("%s: resuming with %s: the images still to make may differ in float rounding from "
                        "an uninterrupted run's", ds.settings_path, ", ".join(changed))
        make_dir(ds.root)
        if world_size == 1 or st is not None:   # given rank and world_size: no barrier, the caller repairs
            ds.repair()
        ds.bind(settings)
    if st is not None and world_size > 1:
        st.wait_for_everyone()

    mine = split_records(records, rank, world_size)
    open_stems = set(ds.todo([r.stem for r in mine], with_capture=keep_captures))
    todo = [r for r in mine if r.stem in open_stems]
    report = GenerateReport(skipped=len(mine) - len(todo), rank=rank, world_size=world_size)
    redo = set(ds.todo([r.stem for r in todo])) if keep_captures else None   # None: all of them are new
    recapture = {r.stem for r in todo} - redo if redo is not None else set()
    if report.skipped and world_size > 1:
        log.info("rank %d: %d of %d sample(s) already done, skipped", rank, report.skipped, len(mine))

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"generate[{rank}]" if world_size > 1 else "generate", unit="img",
               disable=not cfg.progress)
    t_start = time.perf_counter()
    log.debug("settings: %s", settings)
    call = dict(num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, output_type="np")

    def write(r: PromptRecord, s: int, c, t_gen: float, labelled) -> None:
        """Write one sample once its mask is there (``labelled``: the future of its labelling)."""
        lab = pool.result(labelled)
        log.debug("%s: generated in %.3f s, labelled in %s", r.stem, t_gen, lab.describe())
        mask = torch.from_numpy(lab.mask)
        entry = manifest_entry(r.stem, mask, class_names, record_id=r.id, prompt=r.prompt, classes=r.classes, seed=s,
                               timings={"generate": t_gen, "label": lab.seconds})
        ds.write_sample(r.stem, c.image.cpu().numpy(), mask, entry, rank=rank, capture=c if keep_captures else None)
        report.generated += 1
        report.recaptured += r.stem in recapture
        report.stems.append(r.stem)
        bar.update(1)

    finished = False
    try:
        with LabelPool(cfg.label_params, label_workers, device=pipe.device) as pool:
            labelling = []          # with workers: the batch they label while the next one is sampled
            for batch in _chunks(todo, cfg.batch_size):
                seeds = [cfg.seed + r.index for r in batch]
                gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
                t0 = time.perf_counter()
                with capture(pipe, [r.classes for r in batch], class_names=class_names, query_half=cfg.query_half,
                             include_mid=cfg.include_mid, self_probs=self_probs) as cap:
                    neg = {} if cfg.negative_prompt is None else {"negative_prompt": [cfg.negative_prompt] * len(batch)}
                    out = pipe([r.prompt for r in batch], generator=gens, **call, **neg)
                if not np.isfinite(out.images).all():
                    raise InputError(f"sampling record {batch[0].id!r} (seed {seeds[0]}, batch of {len(batch)}) gave "
                                     f"NaN or inf values: lower the guidance ({guidance:g}) or use float32",
                                     field="guidance")
                metas = [dict(prompt=r.prompt, record_id=r.id, seed=s, model=cfg.model, steps=steps,
                              guidance=guidance) for r, s in zip(batch, seeds)]
                # label what --keep-captures saves: `pccseg label` gives the same masks
                caps = [as_saved(c) for c in cap.captures(out.images, meta=metas)]
                del cap, out
                t_gen = (time.perf_counter() - t0) / len(batch)
                jobs = [(r, s, c, t_gen) for r, s, c in zip(batch, seeds, caps)]
                if not pool.processes:            # label and write, sample by sample
                    for job in jobs:
                        write(*job, pool.submit(job[2]))
                    continue
                for job, labelled in labelling:
                    write(*job, labelled)
                labelling = [(job, pool.submit(job[2])) for job in jobs]
            for job, labelled in labelling:
                write(*job, labelled)
        finished = True
    finally:
        bar.close()
        report.seconds = time.perf_counter() - t_start
        if is_main and (world_size == 1 or not finished):   # interrupted: index what is on disk now
            report.dataset_size = ds.rebuild()[0]
    if world_size > 1:
        if st is not None:
            st.wait_for_everyone()
        if is_main:
            report.dataset_size = ds.rebuild()[0]
    if report.generated:   # the command's one-line summary says it for one process
        log.log(logging.INFO if world_size > 1 else logging.DEBUG, "rank %d: %d image(s) in %.1f s: %.3f images/s",
                rank, report.generated, report.seconds, report.images_per_s)
    return report
