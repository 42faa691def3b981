"""Load a Stable Diffusion pipeline: ``"toy"``, ``"tiny"``, ``"tiny-sdxl"``, a local diffusers folder, or a hub id.

The built-in names (``"toy"``: the small text-to-image model trained on the toy world that ships inside
the package; ``"tiny"`` and ``"tiny-sdxl"``: SD's and SDXL's architectures with random weights, for tests)
and their defaults are the table in :mod:`pccseg.capture.models`.

:func:`check_model` validates the name without loading anything (the ``generate`` command calls it before
any GPU work); :func:`load_pipeline` loads. Hub ids are looked up in the local cache first; the network is
only used when the model is not cached and ``HF_HUB_OFFLINE`` is not set. The pipeline class is the one
``model_index.json`` names (``_class_name``): ``StableDiffusionPipeline`` (SD 1.x, SD 2.x base and 768-v:
the scheduler config of the model decides the prediction type) or ``StableDiffusionXLPipeline`` (SDXL).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import logging

import torch

from ..errors import InputError
from .diffusers_compat import dtype_kwarg
from .models import BUILTIN_MODELS, SCHEDULERS, BuiltinModel, builtin_model

log = logging.getLogger(__name__)


#: the text-to-image pipeline classes the capture supports (``_class_name`` in model_index.json)
PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; :class:`InputError` for a name that is not a device, or
    CUDA on a machine without it."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"not a torch device: {device!r} ({e})", field="--device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine", field="--device")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float16 on CUDA, float32 elsewhere; names like ``"fp16"``, ``"float32"`` accepted."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (float16, bfloat16, float32)", field="--dtype")
    return _DTYPES[dtype]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_model(model: str) -> str:
    """Validate a model name without loading it; returns its kind: "builtin" (a name of
    :data:`~pccseg.capture.models.BUILTIN_MODELS`: tiny, tiny-sdxl, toy), "folder" or "hub".

    Raises :class:`InputError` (one line) for a folder that is not a diffusers pipeline, a malformed hub
    id, a hub id that is neither cached nor on the hub, or a pipeline class other than :data:`PIPELINES`; an
    unreachable hub is found out within :data:`HUB_TIMEOUT` seconds (one request, no retries).
    """
    kind = _model_kind(model)
    pipeline_class_name(model, kind)
    return kind


def _model_kind(model: str) -> str:
    if model in BUILTIN_MODELS:
        return "builtin"
    p = Path(model).expanduser()
    if p.exists() or model.startswith((".", "/", "~")):
        if not p.is_dir():
            raise InputError("no such model folder", path=model, field="--model")
        if not (p / "model_index.json").is_file():
            raise InputError("not a diffusers pipeline folder (no model_index.json)", path=model, field="--model")
        return "folder"
    parts = model.split("/")
    if len(parts) != 2 or not all(parts):
        names = ", ".join(repr(n) for n in BUILTIN_MODELS)
        raise InputError(f"{model!r} is neither a built-in model ({names}), a local diffusers folder nor a hub id "
                         "(owner/name)", field="--model")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(model, "model_index.json")
    except ValueError as e:  # huggingface_hub's HFValidationError
        raise InputError(f"{model!r} is not a hub id ({str(e).splitlines()[0]})", field="--model") from None
    if isinstance(cached, str):
        return "hub"
    if offline():
        raise InputError(f"{model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                         field="--model")
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    try:
        _ask_hub(model)
    except GatedRepoError:
        raise InputError(f"{model!r} is gated on the Hugging Face hub: accept its licence there and log in "
                         "(hf auth login)", field="--model") from None
    except (RepositoryNotFoundError, EntryNotFoundError):
        raise InputError(f"{model!r}: no such diffusers model on the Hugging Face hub", field="--model") from None
    except HfHubHTTPError as e:
        raise InputError(f"{model!r} is not cached locally and the hub refused it ({str(e).splitlines()[0]})",
                         field="--model") from None
    except Exception:  # no network, no DNS, a proxy that does not answer, the timeout
        raise InputError(f"{model!r} is not in the local Hugging Face cache and the hub cannot be reached "
                         "(set HF_HUB_OFFLINE=1 to skip the network)", field="--model") from None
    return "hub"


def pipeline_class_name(model: str, kind: str | None = None) -> str:
    """The pipeline class of a model: ``_class_name`` of its model_index.json (read without loading weights);
    :class:`InputError` when it is not one of :data:`PIPELINES`."""
    kind = kind or _model_kind(model)
    if kind == "builtin":
        return BUILTIN_MODELS[model].pipeline_class
    index = _model_json(model, kind, "model_index.json")
    if not isinstance(index, dict):
        raise InputError("unreadable (not a JSON object)", path=f"{model}/model_index.json")
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise InputError(f"{name!r} is not a supported pipeline ({', '.join(PIPELINES)})",
                         path=f"{model}/model_index.json", field="_class_name")
    return name


def pipeline_class(model: str) -> type:
    """The diffusers pipeline class of a model (see :func:`pipeline_class_name`)."""
    import diffusers

    return getattr(diffusers, pipeline_class_name(model))
#: Seconds to wait for the Hugging Face hub's answer, name resolution included, before giving up.
HUB_TIMEOUT = 5.0


def _ask_hub(model: str) -> None:
    """Ask the hub once, without retries, for the metadata of ``model``'s ``model_index.json``.

    Returns when the hub has it; raises the hub client's error, or ``TimeoutError`` after
    :data:`HUB_TIMEOUT` seconds (the request runs in a daemon thread, because name resolution has no
    timeout of its own).
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            get_hf_file_metadata(hf_hub_url(model, "model_index.json"), timeout=HUB_TIMEOUT)
            outcome.append(None)
        except BaseException as e:  # handed to the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=ask, name="pccseg-hub-query", daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT)
    if not outcome:
        raise TimeoutError(f"no answer in {HUB_TIMEOUT:g} s")
    if outcome[0] is not None:
        raise outcome[0]


@contextlib.contextmanager
def library_bars(show: bool) -> Iterator[None]:
    """diffusers' and transformers' progress bars (loading a model, writing its shards), off inside the block
    unless ``show``."""
    if show:
        yield
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libs = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for lib in libs:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib in libs:
            lib.enable_progress_bar()


def check_scheduler(name: str | None) -> None:
    """:class:`InputError` unless ``name`` is None or one of :data:`SCHEDULERS`."""
    if name is not None and name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r} (one of {', '.join(SCHEDULERS)})", field="--scheduler")


def check_cpu_offload(device: torch.device) -> None:
    """:class:`InputError` unless CPU offload can run on ``device`` (a CUDA device)."""
    if device.type != "cuda":
        raise InputError(f"CPU offload moves each model to a CUDA device while it runs; this run's device is {device}",
                         field="--cpu-offload")


def load_pipeline(model: str = "stabilityai/stable-diffusion-2-1-base", *, dtype: str | torch.dtype | None = None,
                  device: str | torch.device | None = None, seed: int = 0, progress: bool = True,
                  scheduler: str | None = None, cpu_offload: bool = False):
    """A ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` (as model_index.json says) on ``device``
    in ``dtype``, safety checker off (SD), progress bar off.

    Args:
        model: ``"toy"`` (the shipped toy-world model, :mod:`pccseg.toy`), ``"tiny"`` / ``"tiny-sdxl"``
            (random weights, see :mod:`pccseg.capture.tiny`; ``seed`` picks them), a local diffusers folder, or a hub
            id (cache first; ``HF_HUB_OFFLINE=1`` never touches the network).
        dtype: default float16 on CUDA, float32 on CPU.
        device: default CUDA when available.
        progress: diffusers' and transformers' progress bars while the model loads.
        scheduler: a class name of :data:`SCHEDULERS` to sample with instead of the pipeline's own, built from
            its config (None: the pipeline's).
        cpu_offload: keep the models in CPU memory and move each to the GPU while it runs (diffusers'
            ``enable_model_cpu_offload``; needs a CUDA device): less GPU memory, slower.
    """
    check_scheduler(scheduler)
    if cpu_offload:
        check_cpu_offload(resolve_device(device))
    with library_bars(progress):
        pipe = _load_pipeline(model, dtype, "cpu" if cpu_offload else device, seed,
                              dtype_of=resolve_device(device))
    if scheduler is not None:
        import diffusers

        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
        log.debug("scheduler: %s", scheduler)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=resolve_device(device))
    return pipe


def _load_pipeline(model: str, dtype: str | torch.dtype | None, device: str | torch.device | None, seed: int,
                   dtype_of: torch.device | None = None):
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dtype_of or dev)     # with CPU offload: loaded on the CPU in the GPU's dtype
    kind = check_model(model)
    log.debug("loading %s (%s) on %s in %s", model, kind, dev, str(dt).replace("torch.", ""))
    if kind == "builtin":
        return BUILTIN_MODELS[model].load(seed=seed, dtype=dt, device=dev)
    cls = pipeline_class(model)
    kwargs = dict(safety_checker=None, requires_safety_checker=False) if cls.__name__ == PIPELINES[0] else {}
    kwargs[dtype_kwarg()] = dt
    if kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        kwargs["local_files_only"] = offline() or isinstance(try_to_load_from_cache(model, "model_index.json"), str)
    try:
        pipe = cls.from_pretrained(str(Path(model).expanduser()) if kind == "folder" else model, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        if kind == "hub" and kwargs.get("local_files_only") and not offline():
            # cached index but missing weights: let the hub fill the gaps
            kwargs["local_files_only"] = False
            try:
                pipe = cls.from_pretrained(model, **kwargs)
            except (OSError, ValueError) as e2:
                raise InputError(f"cannot load pipeline ({str(e2).splitlines()[0]})", path=model,
                                 field="--model") from None
        else:
            raise InputError(f"cannot load pipeline ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                             path=model, field="--model") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


def _model_json(model: str, kind: str, file: str) -> dict | None:
    """A JSON file of a folder or cached hub model (``model_index.json``, ``unet/config.json``), or None."""
    import json

    if kind == "folder":
        p = Path(model).expanduser() / file
        path = str(p) if p.is_file() else None
    else:
        from huggingface_hub import try_to_load_from_cache

        c = try_to_load_from_cache(model, file)
        path = c if isinstance(c, str) else None
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def model_entry(model: str) -> BuiltinModel | None:
    """The built-in entry whose defaults ``model`` gets (:mod:`pccseg.capture.models`): by its name, or, for
    a folder or a cached hub model, by its UNet's configuration (a folder written by ``pccseg toy train`` is
    the toy model's architecture); None for any other model. Reads config files only."""
    kind = check_model(model)
    if kind == "builtin":
        return BUILTIN_MODELS[model]
    return builtin_model(None, _model_json(model, kind, "unet/config.json"))


def model_default_size(model: str) -> tuple[int, int] | None:
    """The pipeline's default (height, width) read from its config files without loading weights
    (UNet ``sample_size`` x VAE factor); None when the configs are not available locally."""
    kind = check_model(model)
    if kind == "builtin":
        return BUILTIN_MODELS[model].size
    unet, vae = _model_json(model, kind, "unet/config.json"), _model_json(model, kind, "vae/config.json")
    entry = builtin_model(None, unet)
    if entry is not None:
        return entry.size
    if not unet or "sample_size" not in unet:
        return None
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1) if vae else 8
    s = unet["sample_size"]
    h, w = (s, s) if isinstance(s, int) else s
    return int(h) * factor, int(w) * factor
