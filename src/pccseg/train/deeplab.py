"""The segmentation model that ``train`` and ``evaluate`` share: torchvision's DeepLabv3, its ImageNet
backbone weights, input normalisation, and the checkpoint directory.

Checkpoint directory (``RUN/last``, ``RUN/best``), written atomically (temporary directory + rename):

* ``model.safetensors`` — the model's ``state_dict`` (no ``module.`` prefix);
* ``checkpoint.json`` — ``format``, ``iteration``, ``arch``, ``num_classes``, ``class_names``,
  ``aux_loss``, ``miou`` (at this iteration, when validated), ``config`` (the training settings), and
  in ``last`` the optimizer's param groups, the scheduler's and the gradient scaler's state;
* ``training.safetensors`` (``last`` only) — optimizer tensors ``optimizer.<param>.<key>`` and RNG
  states ``rng.torch``, ``rng.cuda.<device>``.

No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision.transforms.v2.functional as TF
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from ..io import atomic_path, read_json, save_tensors
from .config import ARCHS


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "pccseg-deeplabv3/1"


#: The long side may be at most this times ``short_side`` (mmsegmentation's scale (2048, 512)).
LONG_SIDE_RATIO = 4


def normalize(image: torch.Tensor) -> torch.Tensor:
    """(…, 3, H, W) uint8 -> float32 with ImageNet normalisation."""
    return TF.normalize(image.float() / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def rescale_factor(height: int, width: int, short_side: int | None) -> float:
    """The factor that brings an image's short side to ``short_side`` while its long side stays at most
    ``LONG_SIDE_RATIO * short_side`` (mmsegmentation's ``Resize(scale=(2048, 512), keep_ratio=True)`` for
    ``short_side=512``); 1 for ``None`` (native size)."""
    if short_side is None:
        return 1.0
    return min(short_side / min(height, width), LONG_SIDE_RATIO * short_side / max(height, width))


def rescaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) times ``factor``, rounded half up as mmcv does, at least 1."""
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


# ----------------------------------------------------------------------------------------------- model
def _torchvision(arch: str):
    """(DeepLabv3 builder, classification builder, ImageNet weights enum) of ``arch``."""
    from torchvision import models
    from torchvision.models import segmentation as seg

    return {
        "resnet50": (seg.deeplabv3_resnet50, models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
        "resnet101": (seg.deeplabv3_resnet101, models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
        "mobilenet_v3_large": (seg.deeplabv3_mobilenet_v3_large, models.mobilenet_v3_large,
                               models.MobileNet_V3_Large_Weights.IMAGENET1K_V1),
    }[arch]


def backbone_weights_file(arch: str) -> tuple[str, Path]:
    """(file name, path in the torch hub cache) of ``arch``'s ImageNet weights, e.g.
    ``("resnet50-0676ba61.pth", $TORCH_HOME/hub/checkpoints/resnet50-0676ba61.pth)``."""
    name = os.path.basename(urlparse(_torchvision(arch)[2].url).path)
    return name, Path(torch.hub.get_dir()) / "checkpoints" / name


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no code runs
    except Exception as e:  # noqa: BLE001 - any failure to read the file (torch.load raises many kinds,
        # pickle.UnpicklingError for a pickle with code, which weights_only refuses) is this file's fault
        raise InputError(f"cannot read backbone weights ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})",
                         path=path, field="--backbone-weights") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError("not a state dict of tensors", path=path, field="--backbone-weights")
    return state


def backbone_state(arch: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The ImageNet backbone ``state_dict`` that ``weights`` names, keyed as the DeepLabv3 backbone's.

    weights: ``"none"`` (random initialisation, asked for explicitly: ``None``), ``"imagenet"``
    (torchvision's file from the torch hub cache, downloaded there when missing), or the path of a
    ``.pth`` / ``.safetensors`` file holding the torchvision classification model's ``state_dict``.
    Raises :class:`InputError` (one line: the file, where it was looked for, how to supply it) when
    the weights cannot be had, never falls back to random weights.
    """
    if weights == "none":
        return None
    name, cached = backbone_weights_file(arch)
    if weights == "imagenet":
        if not cached.is_file():
            old = socket.getdefaulttimeout()
            socket.setdefaulttimeout(20.0)
            try:
                torch.hub.load_state_dict_from_url(_torchvision(arch)[2].url, progress=False, check_hash=False)
            except Exception as e:  # offline, proxy, disk full: one clear line instead
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise InputError(
                    f"ImageNet weights for the {arch} backbone ({name}) are not in the torch hub cache "
                    f"({cached.parent}) and could not be downloaded ({reason}); copy {name} there, or "
                    f"give its path with --backbone-weights PATH, or train from random initialisation "
                    f"with --backbone-weights none", field="--backbone-weights") from None
            finally:
                socket.setdefaulttimeout(old)
        path = cached
    else:
        path = Path(weights)
        if not path.is_file():
            raise InputError(f"backbone weights file not found (for {arch}: torchvision's {name}, or "
                             f"'imagenet' / 'none')", path=path, field="--backbone-weights")
    state = _read_state_dict(path)
    reference = _torchvision(arch)[1](weights=None)
    try:
        reference.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"not the {arch} ImageNet weights ({str(e).splitlines()[0]})", path=path,
                         field="--backbone-weights") from None
    if arch.startswith("resnet"):   # DeepLab keeps conv1 .. layer4 under their own names
        return {k: v for k, v in state.items() if not k.startswith("fc.")}
    return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}


def build_model(arch: str, num_classes: int, *, backbone: dict[str, torch.Tensor] | None = None,
                aux_loss: bool = True) -> nn.Module:
    """torchvision DeepLabv3 (output stride 8 for ResNet, 16 for MobileNetV3) with ``num_classes``
    outputs and the backbone weights ``backbone`` (from :func:`backbone_state`; ``None``: random).

    ``model(x)`` -> ``{"out": (N, C, H, W)[, "aux": ...]}`` at the input size.
    """
    builder = _torchvision(arch)[0]
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux_loss)
    if backbone is not None:
        model.backbone.load_state_dict(backbone)
    return model


# ----------------------------------------------------------------------------------------- checkpoints
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict]:
    """An optimizer's state as (tensors ``{prefix}.{param}.{key}`` for safetensors, JSON-able meta)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{prefix}.{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(pid), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str = "optimizer") -> None:
    """Restore what :func:`optimizer_tensors` gave (other tensors in ``tensors`` are ignored)."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith(prefix + "."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = val
    for pid, extra in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(extra)
    groups = meta["param_groups"]
    for g in groups:
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path: str | Path, model: nn.Module | dict[str, torch.Tensor], meta: dict, *, optimizer=None,
                    scheduler=None, scaler=None, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write a checkpoint directory atomically (see the module docstring for its files). ``model``: a module
    or its ``state_dict``; ``extra``: more safetensors files, ``{file name: tensors}`` (``ema.safetensors``)."""
    meta = dict(meta, format=CHECKPOINT_FORMAT)
    tensors: dict[str, torch.Tensor] = {}
    if optimizer is not None:
        opt_tensors, meta["optimizer"] = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
    if scheduler is not None:
        meta["scheduler"] = scheduler.state_dict()
    if scaler is not None and scaler.is_enabled():
        meta["scaler"] = scaler.state_dict()
    state = model if isinstance(model, dict) else unwrap(model).state_dict()
    weights = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_path(path, directory=True) as tmp:
        save_tensors(tmp / "model.safetensors", weights)
        if tensors:
            save_tensors(tmp / "training.safetensors", tensors)
        for name, more in (extra or {}).items():
            save_tensors(tmp / name, more)
        (tmp / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: itself, or a run directory's ``last`` (the final model),
    else its ``best``."""
    path = Path(path)
    for cand in (path, path / "last", path / "best"):
        if (cand / "checkpoint.json").is_file():
            return cand
    raise InputError("not a checkpoint (no checkpoint.json here, nor in last/ or best/)", path=path)


def read_checkpoint_meta(path: str | Path) -> dict:
    """``checkpoint.json`` of a checkpoint directory, checked; ``meta["path"]`` is the directory."""
    ckpt = find_checkpoint(path)
    where = ckpt / "checkpoint.json"
    meta = read_json(where)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not a pccseg checkpoint (format != {CHECKPOINT_FORMAT!r})", path=where, field="format")
    if meta.get("arch") not in ARCHS:
        raise InputError(f"missing or unknown model {meta.get('arch')!r} (one of {', '.join(ARCHS)})",
                         path=where, field="arch")
    n = meta.get("num_classes")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 255:
        raise InputError(f"must be an integer in 1..255, got {n!r}", path=where, field="num_classes")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == n
                                  and all(isinstance(x, str) for x in names)):
        raise InputError(f"must be a list of {n} strings", path=where, field="class_names")
    it = meta.get("iteration", 0)
    if isinstance(it, bool) or not isinstance(it, int) or it < 0:
        raise InputError(f"must be an integer >= 0, got {it!r}", path=where, field="iteration")
    meta["path"] = str(ckpt)
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint and load its weights -> (model in eval mode, checkpoint.json)."""
    meta = read_checkpoint_meta(path)
    ckpt = Path(meta["path"])
    model = build_model(meta["arch"], meta["num_classes"], aux_loss=bool(meta.get("aux_loss", False)))
    try:
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    except (RuntimeError, OSError, SafetensorError) as e:
        raise InputError(f"cannot load the weights ({str(e).splitlines()[0]})",
                         path=ckpt / "model.safetensors") from None
    return model.to(device).eval(), meta


def load_training_state(ckpt: Path, meta: dict, model, optimizer, scheduler, scaler) -> None:
    """Restore what :func:`save_checkpoint` wrote into ``last``: weights, AdamW, schedule, scaler, RNG."""
    try:
        unwrap(model).load_state_dict(load_file(str(ckpt / "model.safetensors")))
        tensors = load_file(str(ckpt / "training.safetensors"))
        load_optimizer(optimizer, tensors, meta["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
        if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        rng = tensors["rng.torch"]
        if rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise ValueError(f"rng.torch: expected {tuple(torch.get_rng_state().shape)} uint8, got "
                             f"{tuple(rng.shape)} {rng.dtype}")
        torch.set_rng_state(rng)
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    except (RuntimeError, OSError, SafetensorError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"cannot resume from this checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); start afresh with --no-resume",
                         path=ckpt) from None
