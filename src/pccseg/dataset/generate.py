"""Prompts -> images + PCC masks, straight to a VOC-layout dataset (docs/method.md sections 0-4).

:func:`generate` runs the pipeline on batches of prompt records with :func:`pccseg.capture.attention.capture`
around each call, labels every image right after its batch with :func:`pccseg.labellers.pcc.label`, and writes
the dataset directory described in :mod:`pccseg.dataset.folder`. Record ``i`` of the prompt file (0-based) is
generated with seed ``seed + i`` (report: 2024 + index) on its own CPU ``torch.Generator``, so an image
does not depend on the batch it is in. Running the same call again skips samples that are done; under
``accelerate launch`` every process takes the records whose index is its rank modulo the world size.
"""

from __future__ import annotations

import inspect
import logging
import math
import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .folder import JPEG_QUALITY, Dataset, check_val_share, mask_stats, rounding_changes
from ..errors import InputError
from ..io import make_dir, save_image, save_mask
from ..limits import check_fits, check_seed
from .prompts import PromptRecord
from ..signals import hold_interrupts
from ..vocab import VOC_CLASSES

if TYPE_CHECKING:  # imported where used, so that the CLI's --help does not load torch
    import torch

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


def run_settings(*, model: str, steps: int, guidance: float, height: int, width: int, dtype: str, seed: int,
                 label_params: Any, class_names: Sequence[str], prompts: str, query_half: str = "uncond",
                 include_mid: bool = False, val_share: float = 0.0, **info: Any) -> dict:
    """The settings.json of a run: everything that changes the dataset's content, plus ``info`` keys.

    ``label_params``: any labeller's parameters (None: PCC's defaults); recorded as ``labeller`` and
    ``label_params``. ``val_share`` (the share of samples held out in val.txt) is recorded only when it
    is not 0.
    """
    from ..labellers.registry import default_params, params_record

    check_val_share(val_share)
    return dict(model=model, steps=int(steps), guidance=float(guidance), height=int(height), width=int(width),
                dtype=str(dtype).replace("torch.", ""), seed=int(seed), prompts=str(prompts),
                class_names=list(class_names), query_half=query_half, include_mid=bool(include_mid),
                **params_record(default_params() if label_params is None else label_params),
                pccseg_version=__version__, **({"val_share": val_share} if val_share else {}), **info)


#: The most denoising steps: SD's schedulers are trained on 1000 timesteps (and refuse more).
MAX_STEPS = 1000
#: The largest image side: 8x SD's 512, 4x SDXL's 1024 (attention work grows with the square of the pixels).
MAX_SIDE = 4096
#: The largest guidance scale: SD uses 7.5, SDXL 5; far above, the latents overflow into NaN.
MAX_GUIDANCE = 100.0


def check_options(*, steps: int | None = None, guidance: float | None = None, batch_size: int | None = None,
                  height: int | None = None, width: int | None = None, seed: int | None = None,
                  records: int = 1) -> None:
    """:class:`InputError` naming the first bad option (None: not given, the default): ``steps`` an
    integer in 1..:data:`MAX_STEPS`; ``batch_size``, ``height`` and ``width`` integers >= 1, the sizes
    multiples of 8 up to :data:`MAX_SIDE`; ``guidance`` a finite number in 0..:data:`MAX_GUIDANCE`; ``seed`` such that ``seed +
    index`` is a seed (:func:`pccseg.limits.check_seed`) for the record indices ``0 .. records - 1``."""
    for name, v in (("steps", steps), ("batch_size", batch_size), ("height", height), ("width", width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"must be an integer >= 1, got {v!r}", field=name)
        if v is not None and name in ("height", "width") and v % 8:
            raise InputError(f"must be a multiple of 8 (64 for SD's full UNet depth), got {v}", field=name)
        if v is not None and name in ("height", "width") and v > MAX_SIDE:
            raise InputError(f"must be at most {MAX_SIDE} (8x SD's 512), got {v}", field=name)
    if steps is not None and steps > MAX_STEPS:
        raise InputError(f"must be at most {MAX_STEPS} (the schedulers' training timesteps), got {steps}",
                         field="steps")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance)):
        raise InputError(f"must be a finite number, got {guidance!r}", field="guidance")
    if guidance is not None and not 0 <= guidance <= MAX_GUIDANCE:
        raise InputError(f"must be from 0 to {MAX_GUIDANCE:g} (SD uses 7.5), got {guidance!r}", field="guidance")
    if seed is not None:
        check_seed(seed, "seed", count=records)


def check_size_fits(height: int, width: int, batch_size: int, device=None, *, vae_channels: int = 8) -> None:
    """:class:`InputError` (field ``height``) when ``batch_size`` images of ``height`` x ``width`` cannot be
    decoded in the memory of ``device``: the VAE decoder holds at least two ``vae_channels`` x H x W float32
    activations per image (8: the smallest of the pipelines pccseg ships; SD's have 128)."""
    check_fits(float(batch_size) * height * width * vae_channels * 2 * 4, "height",
               f"decoding {batch_size} image(s) of {height} x {width}", device)


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


def manifest_entry(rec: PromptRecord, seed: int, mask: torch.Tensor, class_names: Sequence[str], t_gen: float,
                   t_label: float) -> dict:
    """One manifest line: id, record_id, prompt, classes, seed, uncertain_share, class_pixels, timings.

    ``mask``: the (H, W) uint8 final mask, on the host.
    """
    uncertain, pixels = mask_stats(mask, class_names)
    return {"id": rec.stem, "record_id": rec.id, "prompt": rec.prompt, "classes": list(rec.classes),
            "seed": seed, "uncertain_share": uncertain, "class_pixels": pixels,
            "timings": {"generate": round(t_gen, 4), "label": round(t_label, 4)}}


def generate(pipe, records: Sequence[PromptRecord], out_dir: str | Path, *, steps: int | None = None,
             guidance: float | None = None, seed: int = DEFAULT_SEED, batch_size: int = 1,
             height: int | None = None, width: int | None = None, keep_captures: bool = False,
             label_params=None, class_names: Sequence[str] = VOC_CLASSES, settings: dict | None = None,
             model_name: str | None = None, prompts_name: str | None = None, query_half: str = "uncond",
             include_mid: bool = False, val_share: float = 0.0, rank: int | None = None,
             world_size: int | None = None, progress: bool = True, label_fn=None,
             label_workers: int | None = None, negative_prompt: str | None = None) -> GenerateReport:
    """Generate, capture, label and write ``records`` into the dataset directory ``out_dir``.

    Args:
        pipe: a ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (see :func:`pccseg.capture.pipeline.load_pipeline`).
        records: prompt records (see :mod:`pccseg.dataset.prompts`); the seed of a record is ``seed + record.index``.
        steps: denoising steps (None: the model's default: the report's 80, or a built-in model's, see
            :mod:`pccseg.capture.models`; the toy model and any pipeline of its architecture: 25).
        guidance: CFG scale (None: the built-in model's, else the pipeline's default, 7.5 for SD).
        height, width: image size (None: the pipeline's default, 512 for SD 2.1-base, 128 for the toy model).
        prompts_name: the prompt file recorded in settings.json (None: the model's shipped set's file).
        keep_captures: also write ``captures/<stem>/`` (capture directories, float16 self-attention), with
            the self-attention probabilities too, so that every labeller can relabel them.
        label_params: the parameters of a labeller (:mod:`pccseg.labellers`); their type picks the labeller
            (None: PCC with the report's values).
        class_names: label value -> class name (index 0 background).
        settings: settings.json content (None: built from the arguments); an existing folder whose
            settings differ raises :class:`InputError` before any model work.
        val_share: hold this share of the samples out of train.txt, in val.txt (see
            :func:`pccseg.dataset.folder.val_stems`).
        rank, world_size: this process's share (None: from accelerate's ``PartialState``). Given with a
            world size above 1, nothing waits for the other processes: the caller repairs the folder
            (:meth:`Dataset.repair`) before it starts them, and rebuilds it (:meth:`Dataset.rebuild`) after.
        label_fn: the labelling function (default :func:`pccseg.labellers.registry.label`), for tests.
        negative_prompt: the text the pipeline steers away from (its ``negative_prompt``, one for every
            image; recorded in settings.json). None: the empty prompt, as without it (the same images).
        label_workers: processes that label beside this one, which samples the next batch meanwhile
            (:class:`pccseg.labellers.workers.LabelPool`, one torch thread each); 0: this process labels each batch
            before it samples the next. None: 1 when the pipeline runs on the CPU, ``label_fn`` is not
            given and this process may start one (not a daemonic pool worker), else 0. The masks are the same either way.

    Returns:
        a :class:`GenerateReport` of this process.
    """
    import numpy as np
    import torch

    from ..capture.attention import capture
    from ..capture.format import as_saved, save_capture
    from ..labellers.registry import default_params, labeller_of
    from ..labellers.workers import LabelPool

    from ..capture.models import pipeline_model
    from .prompts import PROMPT_SETS

    entry = pipeline_model(pipe)
    steps = (entry.steps if entry else DEFAULT_STEPS) if steps is None else steps
    if guidance is None and entry is not None:
        guidance = entry.guidance
    prompts_name = PROMPT_SETS[entry.prompts if entry else "voc"] if prompts_name is None else prompts_name
    check_options(steps=steps, guidance=guidance, batch_size=batch_size, height=height, width=width, seed=seed,
                  records=1 + max((r.index for r in records), default=0))
    if label_workers is None:       # a daemonic process (a pool's worker) may not start one
        label_workers = 1 if label_fn is None and pipe.device.type == "cpu" and \
            not multiprocessing.current_process().daemon else 0
    label_params = label_params if label_params is not None else default_params()
    self_probs = labeller_of(label_params).needs_self_probs or keep_captures   # kept: what every labeller needs
    dh, dw = default_size(pipe)
    height, width = height or dh, width or dw
    check_size_fits(height, width, batch_size, pipe.device, vae_channels=pipe.vae.config.block_out_channels[0])
    trained = getattr(pipe.scheduler.config, "num_train_timesteps", MAX_STEPS)
    if steps > trained:
        raise InputError(f"must be at most {trained} (the scheduler's training timesteps), got {steps}",
                         field="steps")
    guidance = default_guidance(pipe) if guidance is None else float(guidance)
    model_name = model_name or getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or "unknown"
    dtype = str(pipe.unet.dtype).replace("torch.", "")
    if settings is None:
        settings = run_settings(model=model_name, steps=steps, guidance=guidance, height=height, width=width,
                                dtype=dtype, seed=seed, label_params=label_params, class_names=class_names,
                                prompts=prompts_name, query_half=query_half, include_mid=include_mid,
                                val_share=val_share, **({"negative_prompt": negative_prompt} if negative_prompt
                                                        is not None else {}))
    settings = dict(settings)
    settings.setdefault("scheduler", type(pipe.scheduler).__name__)
    settings.setdefault("device", pipe.device.type)
    if pipe.device.type == "cpu":
        settings.setdefault("threads", torch.get_num_threads())

    st = None
    if rank is None or world_size is None:
        rank, world_size, is_main, st = distributed_state()
    else:
        is_main = rank == 0
    ds = Dataset(out_dir)
    if is_main:                     # alone in the folder until the others pass the barrier
        changed = rounding_changes(ds.check_settings(settings) or {}, settings)
        if changed:
            log.warning("%s: resuming with %s: the images still to make may differ in float rounding from "
                        "an uninterrupted run's", ds.settings_path, ", ".join(changed))
        make_dir(out_dir)
        if world_size == 1 or st is not None:   # given rank and world_size: no barrier, the caller repairs
            ds.repair()
        ds.write_settings(settings)
    if st is not None and world_size > 1:
        st.wait_for_everyone()
    ds.check_settings(settings)

    mine = split_records(records, rank, world_size)
    open_stems = set(ds.todo([r.stem for r in mine], capture=keep_captures))
    todo = [r for r in mine if r.stem in open_stems]
    report = GenerateReport(skipped=len(mine) - len(todo), rank=rank, world_size=world_size)
    redo = set(ds.todo([r.stem for r in todo])) if keep_captures else None   # None: all of them are new
    recapture = {r.stem for r in todo} - redo if redo is not None else set()
    if report.skipped and world_size > 1:
        log.info("rank %d: %d of %d sample(s) already done, skipped", rank, report.skipped, len(mine))

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"generate[{rank}]" if world_size > 1 else "generate", unit="img",
               disable=not progress)
    t_start = time.perf_counter()
    log.debug("settings: %s", settings)
    call = dict(num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, output_type="np")

    def write(r: PromptRecord, s: int, c, t_gen: float, labelled) -> None:
        """Write one sample once its mask is there (``labelled``: the future of its labelling)."""
        lab = pool.result(labelled)
        log.debug("%s: generated in %.3f s, labelled in %s", r.stem, t_gen, lab.describe())
        mask = torch.from_numpy(lab.mask)
        with hold_interrupts():  # SIGTERM / Ctrl-C: this sample's files are finished first
            save_image(ds.image_path(r.stem), c.image.cpu().numpy(), quality=JPEG_QUALITY)
            if keep_captures:
                save_capture(ds.capture_dir(r.stem), c)
            ds.append_manifest(rank, manifest_entry(r, s, mask, class_names, t_gen, lab.seconds))
            save_mask(ds.mask_path(r.stem), mask)  # last: its presence marks the sample done
        report.generated += 1
        report.recaptured += r.stem in recapture
        report.stems.append(r.stem)
        bar.update(1)

    finished = False
    try:
        with LabelPool(label_params, label_workers, label_fn=label_fn, device=pipe.device) as pool:
            labelling = []          # with workers: the batch they label while the next one is sampled
            for batch in _chunks(todo, batch_size):
                seeds = [seed + r.index for r in batch]
                gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
                t0 = time.perf_counter()
                with capture(pipe, [r.classes for r in batch], class_names=class_names, query_half=query_half,
                             include_mid=include_mid, self_probs=self_probs) as cap:
                    neg = {} if negative_prompt is None else {"negative_prompt": [negative_prompt] * len(batch)}
                    out = pipe([r.prompt for r in batch], generator=gens, **call, **neg)
                if not np.isfinite(out.images).all():
                    raise InputError(f"sampling record {batch[0].id!r} (seed {seeds[0]}, batch of {len(batch)}) gave "
                                     f"NaN or inf values: lower the guidance ({guidance:g}) or use float32",
                                     field="guidance")
                metas = [dict(prompt=r.prompt, record_id=r.id, seed=s, model=model_name, steps=steps,
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
