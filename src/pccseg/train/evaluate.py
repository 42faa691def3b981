"""Score a segmentation model on a VOC-layout split: confusion matrix -> mIoU, per-class IoU and accuracy
(the report's Table 3), optionally saving the predicted masks.

As mmsegmentation tests (Dataset Diffusion's protocol): batch 1, each image resized to a short side of
512 (long side at most 2048; bilinear), the logits resized back to the image's own size (bilinear), then
the arg-max is scored against the original mask. ``short_side=None`` scores at the native size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .deeplab import load_model, normalize, read_checkpoint_meta, rescale_factor, rescaled_size
from ..errors import InputError, unwrap_worker_error
from ..capture.pipeline import resolve_device
from ..io import make_dir, remove_temps, save_mask
from ..signals import blocked_for_children, dataloader_worker_init
from .metrics import Scores, confusion_matrix, scores_from_confusion
from ..dataset.voc import VOCSplit
from ..params import Int, OrNone, check_value

#: What :func:`evaluate`'s numeric arguments accept.
ARGUMENTS = {"limit": OrNone(Int(1)), "short_side": OrNone(Int(1), means="native size"), "workers": Int(0)}


def _base(ds) -> tuple[VOCSplit, list[int]]:
    """The VOC dataset under ``ds`` (a VOCSplit or a Subset of one) and the indices it uses."""
    if isinstance(ds, torch.utils.data.Subset):
        base, inner = _base(ds.dataset)
        return base, [inner[i] for i in ds.indices]
    if isinstance(ds, VOCSplit):
        return ds, list(range(len(ds)))
    raise TypeError(f"expected a VOCSplit (or a Subset of one), got {type(ds).__name__}")


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, base: VOCSplit, indices: list[int]):
        self.base, self.indices = base, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = self.indices[i]
        image, mask = self.base[j]
        return j, image, mask


def _num_outputs(model: nn.Module) -> int | None:
    head = getattr(model, "classifier", None)
    last = head[-1] if isinstance(head, nn.Sequential) else None
    return getattr(last, "out_channels", None)


def check_classes(meta: dict, class_names: Sequence[str], dataset_path: str | Path) -> None:
    """InputError unless a checkpoint (its ``checkpoint.json``) predicts the dataset's classes."""
    n = int(meta["num_classes"])
    where = Path(meta["path"]) / "checkpoint.json"
    if n != len(class_names):
        raise InputError(f"checkpoint predicts {n} classes but dataset {dataset_path} has {len(class_names)}",
                         path=where, field="num_classes")
    names = meta.get("class_names")
    if names and list(names) != list(class_names):
        diff = next(i for i, (a, b) in enumerate(zip(names, class_names)) if a != b)
        raise InputError(f"class {diff} is {names[diff]!r} in the checkpoint but {class_names[diff]!r} in "
                         f"dataset {dataset_path}", path=where, field="class_names")


def predict(model: nn.Module, image: torch.Tensor, short_side: int | None = 512) -> torch.Tensor:
    """Logits of one normalised image (1, 3, H, W) -> (1, C, H, W): the image resized to ``short_side``
    (long side at most 4x; None: as it is) and the logits resized back, both bilinear."""
    h, w = image.shape[-2:]
    size = rescaled_size(h, w, rescale_factor(h, w, short_side))
    if size != (h, w):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    logits = model(image)["out"]
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
    return logits


def selected_on(meta: dict, dataset: VOCSplit) -> bool:
    """Whether a checkpoint (its ``checkpoint.json``) was picked as the best by scores on this very split."""
    sel = meta.get("selected_on")
    return isinstance(sel, dict) and sel.get("split") == dataset.split \
        and Path(str(sel.get("dataset"))).resolve() == dataset.root.resolve()


@torch.no_grad()
def evaluate(model: nn.Module | str | Path, dataset: VOCSplit | torch.utils.data.Subset | str | Path, *,
             split: str = "val", class_names: Sequence[str] | None = None, device: str | torch.device | None = None,
             amp: bool | None = None, workers: int = 2, limit: int | None = None,
             predictions_dir: str | Path | None = None, rank: int = 0, world: int = 1,
             progress: bool = True, short_side: int | None = 512) -> Scores:
    """mIoU, per-class IoU and accuracy of ``model`` on ``dataset``.

    model: a module (``model(x)["out"]`` -> (1, C, H, W) logits) or a checkpoint directory / run
    directory; dataset: a :class:`VOCSplit`, a ``Subset`` of one, or a VOC root (read with
    ``split``); class_names: default the dataset's; limit: first N images only (N >= 1); predictions_dir:
    save each prediction there as ``<stem>.png`` (VOC palette); rank/world: under DDP each process scores
    images ``rank::world`` and the confusion matrices are summed (a process group must be initialised);
    short_side: test-time resize (see the module docstring). A checkpoint whose classes differ from the
    dataset's raises :class:`InputError`.
    """
    for name, value in (("limit", limit), ("short_side", short_side), ("workers", workers)):
        check_value(ARGUMENTS[name], value, name)
    device = resolve_device(device)
    if isinstance(dataset, (str, Path)):
        dataset = VOCSplit(dataset, split)
    base, indices = _base(dataset)
    if limit is not None:
        indices = indices[:limit]
    class_names = list(class_names) if class_names is not None else base.class_names
    if isinstance(model, (str, Path)):
        meta = read_checkpoint_meta(model)
        check_classes(meta, class_names, base.root)
        model, _ = load_model(model, device)
    n_out = _num_outputs(model)
    if n_out is not None and n_out != len(class_names):
        raise InputError(f"model predicts {n_out} classes but dataset {base.root} has {len(class_names)}",
                         field="num_classes")
    use_amp = device.type == "cuda" if amp is None else bool(amp)
    amp_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    if predictions_dir is not None:
        predictions_dir = make_dir(predictions_dir, field="predictions_dir")
        remove_temps(predictions_dir)

    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(_Indexed(base, indices[rank::world]), batch_size=1,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         worker_init_fn=dataloader_worker_init)
    cm = torch.zeros(len(class_names), len(class_names), dtype=torch.int64, device=device)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(loader), desc="evaluate", dynamic_ncols=True)
    with blocked_for_children():      # the workers start with SIGTERM / Ctrl-C blocked (pccseg.signals)
        batches = iter(loader)
    while True:
        try:
            j, image, mask = next(batches)
        except StopIteration:
            break
        except InputError as e:
            raise unwrap_worker_error(e) from None
        image = normalize(image.to(device, non_blocking=True))
        mask = mask.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            pred = predict(model, image, short_side).argmax(1)
        cm += confusion_matrix(pred, mask, len(class_names))
        if predictions_dir is not None:
            save_mask(predictions_dir / f"{base.stems[int(j)]}.png", pred[0].to(torch.uint8).cpu())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if world > 1:
        torch.distributed.all_reduce(cm)
    model.train(was_training)
    return scores_from_confusion(cm, class_names)
