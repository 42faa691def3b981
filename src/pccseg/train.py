"""Train torchvision's DeepLabv3 on a VOC-layout dataset (a ``pccseg generate`` output) and keep the best
checkpoint by mIoU on a validation split (Pascal VOC 2012 val) — the report's section 3.

Shaped like torchvision's ``references/segmentation/train.py``: :func:`train` reads top to bottom
(distributed setup, data, model, optimizer, resume, loop, validation, checkpoints). Defaults follow
Dataset Diffusion's protocol: 512 crops, AdamW lr 1e-4 (backbone x0.1), weight decay 1e-4, poly
schedule (power 0.9), 20k iterations, batch 8.

Determinism and resume: the training images form one endless stream; sample ``k`` of the stream is
image ``perm(seed, epoch)[k % N]`` with ``epoch = k // N``, augmented by a generator seeded with
``(seed, k)``. Iteration ``i`` (from 1) on rank ``r`` of ``W`` takes stream samples
``((i-1)*W + r)*b .. +b-1`` (``b`` images per rank). So the data of every iteration is fixed by the
seed alone, whatever the worker count, and a resumed run sees exactly the batches the uninterrupted run
would have seen. (This stream sampler replaces ``DistributedSampler``: it shards the same way, and
resumes in the middle of an epoch.)

Checkpoint directory (``RUN/last``, ``RUN/best``), written atomically (temporary directory + rename):

* ``model.safetensors`` — the model's ``state_dict`` (no ``module.`` prefix);
* ``checkpoint.json`` — ``format``, ``iteration``, ``arch``, ``num_classes``, ``class_names``,
  ``aux_loss``, ``miou`` (at this iteration, when validated), ``best_miou``, ``best_iteration``,
  ``config`` (the :class:`TrainConfig`), and in ``last`` also the optimizer's param groups, the
  scheduler's and the gradient scaler's state;
* ``training.safetensors`` (``last`` only) — optimizer tensors ``optimizer.<param>.<key>`` and RNG
  states ``rng.torch``, ``rng.cuda.<device>``.

No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import torch.distributed as torch_dist
import torchvision.transforms.v2.functional as TF
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms import InterpolationMode

from .errors import InputError
from .io import atomic_path, read_json, read_jsonl, write_json
from .train_config import TrainConfig
from .vocab import IGNORE_INDEX
from .voc import VOCSegmentation

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "pccseg-deeplabv3/1"
#: TrainConfig fields that may change between a run and its resumption without comment.
_RUNTIME_FIELDS = {"out", "resume", "stop_after", "progress", "workers", "device", "check_data", "val_limit"}


# ----------------------------------------------------------------------------------------------- model
def _weights_enums(arch: str):
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights, ResNet101_Weights
    from torchvision.models import segmentation as seg

    return {
        "resnet50": (seg.deeplabv3_resnet50, ResNet50_Weights.IMAGENET1K_V1),
        "resnet101": (seg.deeplabv3_resnet101, ResNet101_Weights.IMAGENET1K_V1),
        "mobilenet_v3_large": (seg.deeplabv3_mobilenet_v3_large, MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    }[arch]


def resolve_backbone_weights(arch: str, timeout: float = 20.0):
    """The torchvision weights enum of ``arch``'s ImageNet backbone when its file is in the torch hub
    cache or can be downloaded now (``timeout`` seconds per socket operation); else ``None``, with one
    warning saying that training starts from random initialisation."""
    from torch.hub import get_dir, load_state_dict_from_url

    _, weights = _weights_enums(arch)
    cached = Path(get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    if cached.is_file():
        return weights
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        load_state_dict_from_url(weights.url, progress=False, check_hash=False)
        return weights
    except Exception as e:  # offline, proxy, disk: any failure means random init
        logger.warning("ImageNet backbone weights for %s could not be loaded (%s: %s; expected in %s); "
                       "training the backbone from random initialisation",
                       arch, type(e).__name__, str(e).splitlines()[0] if str(e) else "", cached)
        return None
    finally:
        socket.setdefaulttimeout(old)


def build_model(arch: str, num_classes: int, *, backbone_weights=None, aux_loss: bool = True) -> nn.Module:
    """torchvision DeepLabv3 with ``num_classes`` outputs; ``backbone_weights`` a torchvision weights enum
    (or ``None``: random init). ``model(x)`` -> ``{"out": (N, C, H, W)[, "aux": ...]}`` at input size."""
    builder, _ = _weights_enums(arch)
    return builder(weights=None, weights_backbone=backbone_weights, num_classes=num_classes, aux_loss=aux_loss)


# ------------------------------------------------------------------------------------------------ data
def normalize(image: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> float32 with ImageNet normalisation."""
    return TF.normalize(image.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def augment(image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator, crop_size: int,
            scale: tuple[float, float] = (0.5, 2.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, pad (0 image / 255 mask) to the crop size, random crop, random horizontal flip,
    ImageNet normalisation.

    image (3, H, W) uint8, mask (H, W) int64 -> (3, crop, crop) float32, (crop, crop) int64.
    """
    h, w = mask.shape
    s = rng.uniform(*scale)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image = TF.resize(image, [nh, nw], InterpolationMode.BILINEAR, antialias=True)
    mask = TF.resize(mask[None], [nh, nw], InterpolationMode.NEAREST)[0]
    ph, pw = max(0, crop_size - nh), max(0, crop_size - nw)
    if ph or pw:
        image = TF.pad(image, [0, 0, pw, ph], fill=0)
        mask = TF.pad(mask[None], [0, 0, pw, ph], fill=IGNORE_INDEX)[0]
    top = int(rng.integers(0, mask.shape[0] - crop_size + 1))
    left = int(rng.integers(0, mask.shape[1] - crop_size + 1))
    image = image[:, top:top + crop_size, left:left + crop_size]
    mask = mask[top:top + crop_size, left:left + crop_size]
    if rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    return normalize(image), mask.contiguous()


class TrainStream(torch.utils.data.Dataset):
    """The endless augmented training stream: ``stream[k]`` is sample ``k`` (see the module docstring)."""

    def __init__(self, base: VOCSegmentation, seed: int, crop_size: int, scale: tuple[float, float]):
        self.base, self.seed, self.crop_size, self.scale = base, seed, crop_size, scale
        self._epoch, self._perm = -1, None

    def index(self, k: int) -> int:
        epoch, pos = divmod(k, len(self.base))
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.base))
            self._epoch = epoch
        return int(self._perm[pos])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.base[self.index(k)]
        return augment(image, mask, np.random.default_rng([self.seed, 1, k]), self.crop_size, self.scale)


class StreamSampler(torch.utils.data.Sampler):
    """Stream indices of iterations ``start+1 .. stop`` for one rank (``per_rank`` samples each)."""

    def __init__(self, start: int, stop: int, per_rank: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.per_rank, self.rank, self.world = start, stop, per_rank, rank, world

    def __iter__(self):
        for it in range(self.start, self.stop):
            first = (it * self.world + self.rank) * self.per_rank
            yield from range(first, first + self.per_rank)

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.per_rank


# ----------------------------------------------------------------------------------------- checkpoints
def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = model.module if hasattr(model, "module") else model
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict, *, optimizer=None, scheduler=None,
                    scaler=None) -> None:
    """Write a checkpoint directory atomically (see the module docstring for its files)."""
    meta = dict(meta, format=CHECKPOINT_FORMAT)
    tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, st in sd["state"].items():
            for key, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optimizer.{pid}.{key}"] = val.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[key] = val
        meta["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars}
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = scaler.state_dict()
    with atomic_path(path, directory=True) as tmp:
        save_file(_model_state(model), str(tmp / "model.safetensors"))
        if tensors:
            save_file(tensors, str(tmp / "training.safetensors"))
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: itself, or ``path/best``, or ``path/last`` (a run dir)."""
    path = Path(path)
    for cand in (path, path / "best", path / "last"):
        if (cand / "checkpoint.json").is_file():
            return cand
    raise InputError("not a checkpoint (no checkpoint.json here, nor in best/ or last/)", path=path)


def read_checkpoint_meta(path: str | Path) -> dict:
    """``checkpoint.json`` of a checkpoint directory, checked."""
    ckpt = find_checkpoint(path)
    meta = read_json(ckpt / "checkpoint.json")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not a pccseg checkpoint (format != {CHECKPOINT_FORMAT!r})",
                         path=ckpt / "checkpoint.json", field="format")
    meta["path"] = str(ckpt)
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its weights -> (model in eval mode, checkpoint.json)."""
    meta = read_checkpoint_meta(path)
    ckpt = Path(meta["path"])
    model = build_model(meta["arch"], int(meta["num_classes"]), backbone_weights=None,
                        aux_loss=bool(meta.get("aux_loss", False)))
    try:
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    except (RuntimeError, OSError) as e:
        raise InputError(f"cannot load the weights ({str(e).splitlines()[0]})",
                         path=ckpt / "model.safetensors") from None
    return model.to(device).eval(), meta


def _load_training_state(ckpt: Path, meta: dict, model, optimizer, scheduler, scaler) -> None:
    model = model.module if hasattr(model, "module") else model
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    tensors = load_file(str(ckpt / "training.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for pid, extra in meta["optimizer"].get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = meta["optimizer"]["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


# ----------------------------------------------------------------------------------------- distributed
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1 or torch_dist.is_initialized()


def _init_distributed(device_hint: str | None) -> _Dist:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe in the environment."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return _Dist()
    d = _Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return d


def _unwrap_worker_error(e: InputError) -> InputError:
    """A DataLoader worker's InputError arrives with the worker's traceback; keep its last line."""
    text = str(e)
    if "\n" not in text:
        return e
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    return InputError(last.split("InputError: ", 1)[-1])


def _read_log(path: Path) -> list[dict]:
    return read_jsonl(path) if path.is_file() else []


def _finite(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


# ------------------------------------------------------------------------------------------------ train
def train(config: TrainConfig) -> dict:
    """Train DeepLabv3 as ``config`` says; returns ``{"iteration", "best_miou", "best_iteration",
    "last_miou", "run_dir"}`` (mIoU as fractions, ``None`` without validation)."""
    from .evaluate import evaluate  # evaluate imports this module

    config.validate()
    dist = _init_distributed(config.device)
    if config.batch_size % dist.world:
        raise InputError(f"batch size {config.batch_size} is not divisible by {dist.world} processes",
                         field="batch_size")
    per_rank = config.batch_size // dist.world
    if per_rank < 2 and not (config.sync_bn and dist.world > 1):
        raise InputError("needs at least 2 images per process (BatchNorm after ASPP's global pooling)",
                         field="batch_size")
    if config.device:
        device = torch.device(config.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", dist.local_rank)
    else:
        device = torch.device("cpu")
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    use_amp = device.type == "cuda" if config.amp is None else bool(config.amp)
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    out = Path(config.out)
    log_path = out / "log.jsonl"

    # Data: the training stream, the validation split. Both must use the same classes.
    train_set = VOCSegmentation(config.data, config.train_split)
    class_names = train_set.class_names
    val_set = None
    if config.val:
        val_set = VOCSegmentation(config.val, config.val_split)
        if val_set.class_names != class_names:
            raise InputError(f"validation classes ({val_set.num_classes}: {', '.join(val_set.class_names[:4])}"
                             f", ...) differ from the training classes ({len(class_names)}: "
                             f"{', '.join(class_names[:4])}, ...)", path=config.val, field="class_names")
        if config.val_limit:
            val_set = torch.utils.data.Subset(val_set, range(min(config.val_limit, len(val_set))))
    if config.check_data and dist.main:
        train_set.check()
        if val_set is not None:
            (val_set.dataset if isinstance(val_set, torch.utils.data.Subset) else val_set).check()

    # Model: ImageNet backbone when its weights can be had (rank 0 fetches them first).
    torch.manual_seed(config.seed)
    weights = None
    if config.backbone_weights == "imagenet":
        if dist.main:
            weights = resolve_backbone_weights(config.arch)
        if dist.enabled:
            torch_dist.barrier()
        if not dist.main:
            weights = resolve_backbone_weights(config.arch)
    model = build_model(config.arch, len(class_names), backbone_weights=weights, aux_loss=config.aux_loss)
    if config.bn_momentum is not None:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = config.bn_momentum
    if dist.enabled and config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)

    # Optimizer: AdamW, backbone at lr x backbone_lr_mult; poly schedule over all iterations.
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": backbone_params, "lr": config.lr * config.backbone_lr_mult},
         {"params": head_params, "lr": config.lr}],
        lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=config.iters, power=config.power)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    criterion = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)

    # Resume from RUN/last: weights, optimizer, scheduler, scaler, RNG, iteration, best so far.
    start, best_miou, best_iter, last_miou = 0, None, None, None
    resume = (out / "last" / "checkpoint.json").is_file() if config.resume is None else config.resume
    if resume:
        meta = read_checkpoint_meta(out / "last")
        if meta["arch"] != config.arch or int(meta["num_classes"]) != len(class_names) \
                or bool(meta.get("aux_loss")) != config.aux_loss:
            raise InputError(f"cannot resume: checkpoint is {meta['arch']} with {meta['num_classes']} classes "
                             f"(aux {meta.get('aux_loss')}), this run {config.arch} with {len(class_names)} "
                             f"(aux {config.aux_loss})", path=out / "last")
        _load_training_state(out / "last", meta, model, optimizer, scheduler, scaler)
        start, best_miou, best_iter = int(meta["iteration"]), meta.get("best_miou"), meta.get("best_iteration")
        changed = {k: (v, getattr(config, k)) for k, v in meta.get("config", {}).items()
                   if k not in _RUNTIME_FIELDS and hasattr(config, k) and v != getattr(config, k)
                   and not (isinstance(v, list) and tuple(v) == getattr(config, k))}
        if changed and dist.main:
            logger.warning("resuming with changed settings: %s",
                           ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        if "iters" in changed:  # restart the poly schedule's closed form at the new length
            scheduler.total_iters = config.iters
            factor = max(0.0, 1 - start / config.iters) ** config.power
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        last_miou = meta.get("miou")
        if dist.main:  # drop log lines written after the checkpoint (a kill between save and log)
            kept = [r for r in _read_log(log_path) if r.get("iter", 0) <= start]
            with atomic_path(log_path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            logger.info("resuming %s from iteration %d", out, start)
    elif dist.main:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(log_path) as tmp:
            tmp.write_text("")
    if dist.main:
        write_json(out / "config.json", dataclasses.asdict(config))
    if not resume:  # the dropout stream; a resumed run restored rank 0's generator above
        torch.manual_seed(config.seed + 1 + dist.rank)
    elif dist.rank:
        torch.manual_seed(config.seed + 1 + dist.rank + 7919 * start)

    if dist.enabled:
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kw)

    stop = config.iters if config.stop_after is None else min(config.iters, config.stop_after)
    loader = torch.utils.data.DataLoader(
        TrainStream(train_set, config.seed, config.crop_size, (config.scale_min, config.scale_max)),
        batch_size=per_rank, sampler=StreamSampler(start, stop, per_rank, dist.rank, dist.world),
        num_workers=config.workers, pin_memory=device.type == "cuda", drop_last=False,
        generator=torch.Generator().manual_seed(config.seed))  # own generator: keeps the global RNG exact

    def meta_now(it: int, miou: float | None) -> dict:
        return {"iteration": it, "arch": config.arch, "num_classes": len(class_names),
                "class_names": class_names, "aux_loss": config.aux_loss, "miou": miou,
                "best_miou": best_miou, "best_iteration": best_iter, "config": dataclasses.asdict(config)}

    def log(record: dict) -> None:
        if dist.main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    bar = None
    if dist.main and config.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=stop, initial=start, desc="train", dynamic_ncols=True)

    # The loop.
    it, loss_sum, loss_n, saved_at = start, torch.zeros((), device=device), 0, start
    batches = iter(loader)
    t0 = time.perf_counter()
    while it < stop:
        try:
            images, masks = next(batches)
        except InputError as e:
            raise _unwrap_worker_error(e) from None
        it += 1
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        model.train()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            output = model(images)
            loss = criterion(output["out"].float(), masks)
            if config.aux_loss:
                loss = loss + config.aux_weight * criterion(output["aux"].float(), masks)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[-1]["lr"]  # the head's lr used by this step
        scheduler.step()
        loss_sum += loss.detach()
        loss_n += 1

        if it % config.log_every == 0 or it == stop:
            mean = loss_sum / loss_n
            if dist.enabled:
                torch_dist.all_reduce(mean)
                mean /= dist.world
            mean_loss = mean.item()
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"loss is {mean_loss} at iteration {it}; lower --lr or check the data")
            log({"iter": it, "loss": mean_loss, "lr": lr})
            loss_sum.zero_()
            loss_n = 0
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
        if bar is not None:
            bar.update(1)

        validate = val_set is not None and (it % config.val_every == 0 or it == config.iters)
        if validate:
            scores = evaluate(model.module if hasattr(model, "module") else model, val_set,
                              class_names=class_names, device=device, amp=use_amp, workers=config.workers,
                              rank=dist.rank, world=dist.world, progress=False)
            last_miou = _finite(scores.miou)
            log({"iter": it, "miou": last_miou, "iou": [_finite(x) for x in scores.iou],
                 "acc": [_finite(x) for x in scores.acc]})
            if dist.main:
                logger.info("iteration %d: mIoU %.2f (best %s)", it, 100 * scores.miou,
                            "-" if best_miou is None else f"{100 * best_miou:.2f}")
            if last_miou is not None and (best_miou is None or last_miou > best_miou):
                best_miou, best_iter = last_miou, it
                if dist.main:
                    save_checkpoint(out / "best", model, meta_now(it, last_miou))
        save_every = config.save_every or config.val_every
        if validate or it % save_every == 0 or it == stop:
            if dist.main:
                save_checkpoint(out / "last", model, meta_now(it, last_miou if validate else None),
                                optimizer=optimizer, scheduler=scheduler, scaler=scaler)
            saved_at = it
    if bar is not None:
        bar.close()
    if dist.enabled:
        torch_dist.barrier()
    if dist.main:
        logger.info("trained iterations %d..%d in %.1f s; last checkpoint at %d", start + 1, it,
                    time.perf_counter() - t0, saved_at)
    return {"iteration": it, "best_miou": best_miou, "best_iteration": best_iter, "last_miou": last_miou,
            "run_dir": str(out)}
