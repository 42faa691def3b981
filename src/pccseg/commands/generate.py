"""``pccseg generate``: prompts -> Stable Diffusion images + PCC masks, as a VOC-layout dataset.

    pccseg generate --model tiny --num 4 --out runs/demo                       # offline, seconds
    pccseg generate --num 10000 --out runs/voc10k                              # the report's setting
    accelerate launch -m pccseg generate --num 10000 --out runs/voc10k         # one process per GPU

Everything is validated (prompt file, model name, output folder settings) before the model is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..errors import InputError
from ..params import Int, OrNone, check_value

log = logging.getLogger("pccseg.dataset.generate")

#: GenerateConfig fields that are no option of ``pccseg generate`` (nor a setting of ``--config``): the model
#: and the prompt file have their own options, the classes --classes, the labeller the label options.
NOT_OPTIONS = ("model", "prompts", "class_names", "label_params", "pipeline_settings", "label_workers", "progress")
#: argparse keywords of the options made from GenerateConfig, where the derived ones are not the command's.
OPTION_EXTRA = {"steps": dict(metavar="STEPS"), "guidance": dict(metavar="GUIDANCE"), "seed": dict(metavar="SEED"),
                "batch_size": dict(metavar="BATCH_SIZE"), "height": dict(type=int, metavar="HEIGHT"),
                "width": dict(type=int, metavar="WIDTH"), "keep_captures": dict(action="store_true"),
                "include_mid": dict(action="store_true"), "negative_prompt": dict(metavar="TEXT")}
#: --threads: torch threads (None: torch's own).
THREADS = OrNone(Int(1))


def generation_options(args: argparse.Namespace) -> dict:
    """The GenerateConfig fields that are options (all but :data:`NOT_OPTIONS`): those given, else ``--config
    FILE``'s, else the field's default; set on ``args`` too (so that the model's defaults fill what is None).

    Raises:
        InputError: a bad --config file, naming the file and the setting.
    """
    import dataclasses

    from ..dataset.generate import GenerateConfig
    from ..params import read_config

    kw = read_config(args.config, GenerateConfig, skip=NOT_OPTIONS) if getattr(args, "config", None) else {}
    out = {}
    for f in dataclasses.fields(GenerateConfig):
        if f.name not in NOT_OPTIONS:
            given = getattr(args, f.name)
            out[f.name] = given if given is not None else kw.get(f.name, f.default)
            setattr(args, f.name, out[f.name])
    return out


def _model_defaults(args: argparse.Namespace):
    """Fill the options left unset with the model's defaults (steps, guidance, prompt set: the table of
    built-in models, :mod:`pccseg.capture.models`, which also knows a folder of a built-in architecture);
    returns the model's built-in entry or None."""
    from ..capture.pipeline import model_entry
    from ..dataset.generate import DEFAULT_STEPS
    from ..dataset.prompts import prompts_option

    entry = model_entry(args.model)
    args.steps = (entry.steps if entry else DEFAULT_STEPS) if args.steps is None else args.steps
    args.guidance = (entry.guidance if entry else None) if args.guidance is None else args.guidance
    path, args.prompts_name = prompts_option(args.prompts, entry.prompts if entry else "voc")
    args.prompts = str(path)
    log.debug("model %s: %s defaults; steps %d, guidance %s, prompts %s", args.model,
              f"the built-in {entry.name!r}" if entry else "its own", args.steps,
              "the pipeline's" if args.guidance is None else args.guidance, args.prompts)
    return entry


def generate_config(args: argparse.Namespace, *, class_names, label_params):
    """The run's :class:`~pccseg.dataset.generate.GenerateConfig` (checked once, here), from the options
    and the model's defaults (:func:`_model_defaults` first; size and guidance where they can be read
    without loading the weights). An option's error names the option."""
    from ..capture.models import BUILTIN_MODELS
    from ..capture.pipeline import model_default_size, pipeline_class
    from ..dataset.generate import GenerateConfig, default_guidance

    size = model_default_size(args.model)      # None: the model's configs are not here yet
    guidance = args.guidance
    if guidance is None and size is not None:   # the pipeline class's (read from the same configs)
        guidance = default_guidance(pipeline_class(args.model))
    loaded = {k: v for k, v in (("tiny_seed", args.tiny_seed if args.model in BUILTIN_MODELS
                                 and BUILTIN_MODELS[args.model].takes_seed else None),
                                ("scheduler_choice", args.scheduler), ("cpu_offload", args.cpu_offload or None))
              if v is not None}     # recorded only when used, so that folders made without them resume
    try:
        return GenerateConfig(
            steps=args.steps, guidance=guidance, seed=args.seed, batch_size=args.batch_size,
            height=args.height or (size[0] if size else None), width=args.width or (size[1] if size else None),
            keep_captures=args.keep_captures, label_params=label_params, class_names=class_names,
            query_half=args.query_half, include_mid=args.include_mid, val_share=args.val_share,
            negative_prompt=args.negative_prompt, model=args.model, prompts=args.prompts_name,
            pipeline_settings=loaded, progress=not args.quiet)
    except InputError as e:
        raise InputError(e.message, field="--" + e.field.replace("_", "-")) from None


def run(args: argparse.Namespace) -> int:
    from .label_options import params_from_args
    from ..dataset.folder import DatasetFolder
    from ..dataset.generate import check_size_fits, distributed_state, generate
    from ..io import make_dir
    from ..limits import check_seed
    from ..capture.pipeline import check_model, resolve_device, resolve_dtype
    from ..dataset.prompts import check_lengths, load_prompts, parse_classes_option, select
    from ..vocab import VOC_CLASSES

    # 1. inputs, all before any model work
    generation_options(args)
    entry = _model_defaults(args)
    class_names = parse_classes_option(args.classes) if args.classes else VOC_CLASSES
    records = load_prompts(args.prompts, class_names=class_names)
    if entry is not None:
        entry.check(records, args.prompts)
    records = select(records, start=args.start, num=args.num)
    if not records:
        raise InputError(f"no records from --start {args.start}", path=args.prompts)
    config = generate_config(args, class_names=class_names, label_params=params_from_args(args))
    check_seed(args.seed, "--seed", count=1 + max(r.index for r in records))
    check_seed(args.tiny_seed, "--tiny-seed")
    check_value(THREADS, args.threads, "--threads")
    if args.print_config:
        print(json.dumps({k: getattr(config, k) for k in generation_options(args)}, indent=2))
        return 0
    check_model(args.model)
    rank, world, is_main, state = distributed_state()
    device = resolve_device(args.device if args.device is not None or world == 1 or state is None else state.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.cpu_offload:
        from ..capture.pipeline import check_cpu_offload

        check_cpu_offload(device)
    if device.type == "cpu" and args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    ds = None
    if config.height is not None and config.width is not None:   # else known once the model is loaded
        try:
            check_size_fits(config.height, config.width, config.batch_size, device)
        except InputError as e:
            raise InputError(e.message, field="--height / --width") from None
        ds = DatasetFolder.open(args.out, config.record(dtype=dtype))
    make_dir(args.out)

    if ds is not None and world == 1 and not ds.todo([r.stem for r in records], with_capture=args.keep_captures):
        ds.repair()
        n = ds.rebuild()[0]
        print(f"pccseg generate: all {len(records)} sample(s) already done; {n} sample(s) in {args.out}",
              file=sys.stderr)
        return 0

    # 2. the model
    from ..capture.pipeline import load_pipeline

    # diffusers' and transformers' loading bars: only with -v (they are not this run's progress)
    pipe = load_pipeline(args.model, dtype=dtype, device=device, seed=args.tiny_seed,
                         progress=bool(getattr(args, "verbose", False)), scheduler=args.scheduler,
                         cpu_offload=args.cpu_offload)
    if ds is None:
        config = config.for_pipeline(pipe)
        ds = DatasetFolder.open(args.out, config.record(dtype=dtype))
    check_lengths(records, pipe.tokenizer, path=args.prompts)

    # 3. generate
    report = generate(pipe, records, ds, config, rank=rank, world_size=world)
    if state is not None and world > 1 and not is_main:
        return 0
    new = report.generated - report.recaptured
    msg = (f"pccseg generate: {new} new image(s)"
           + (f", {report.recaptured} made again with the same seeds for their captures" if report.recaptured else "")
           + f", {report.skipped} already done"
           + (f", {report.images_per_s:.3f} images/s" if report.generated else "")
           + (f"; {report.dataset_size} sample(s) in {args.out}" if report.dataset_size is not None else ""))
    print(msg, file=sys.stderr)
    return 0


def register(sub) -> None:
    from .label_options import add_label_arguments, print_label_config_or
    from ..dataset.generate import DEFAULT_MODEL, GenerateConfig
    from ..capture.models import SCHEDULERS
    from ..params import add_options

    p = sub.add_parser(
        "generate", help="generate a labelled segmentation dataset with Stable Diffusion + PCC",
        description="Generate images for prompt records with Stable Diffusion, capture the attention, label "
                    "every image with Principal Component Clustering (or --labeller fuse / dd / attn) and write a "
                    "Pascal-VOC-layout dataset "
                    "(JPEGImages, SegmentationClass, ImageSets/Segmentation/train.txt, manifest.jsonl, "
                    "settings.json). Running the same command again resumes.")
    g = p.add_argument_group("generation")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"'toy' (the shipped toy-world model, offline), 'tiny' or 'tiny-sdxl' (random weights, for "
                        f"tests), a local diffusers folder or a hub id of an SD 1.x / 2.x or SDXL pipeline "
                        f"(default: {DEFAULT_MODEL}). A folder of the toy architecture (pccseg toy train) gets "
                        f"the toy defaults")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help="prompt file: JSON list or JSON lines of {id, prompt_sd, classes}, or the name of a "
                        "shipped set: 'voc' (44,426 records) or 'toy' (5,000) (default: the model's: toy for "
                        "the toy model, else voc)")
    g.add_argument("--out", required=True, metavar="DIR", help="dataset directory (created or resumed)")
    g.add_argument("--num", type=int, default=None, help="number of records (default: all from --start)")
    g.add_argument("--start", type=int, default=0, help="first record (0-based index in the file; default 0)")
    add_options(g, GenerateConfig, skip=NOT_OPTIONS, shown=GenerateConfig(), unset=True, extra=OPTION_EXTRA)
    g.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="model dtype (default: float16 on CUDA, float32 on CPU)")
    g.add_argument("--device", default=None, help="torch device (default: CUDA when available; the process's "
                   "GPU under accelerate launch)")
    g.add_argument("--threads", type=int, default=None, metavar="N",  # checked by THREADS
                   help="torch threads for sampling on CPU (default: torch's, one per core). On a machine shared "
                        "with other work, 1 avoids oversubscription (often several times faster)")
    g.add_argument("--classes", default=None, metavar="NAMES",
                   help="custom class list, comma-separated, background first (default: the 21 VOC classes)")
    g.add_argument("--scheduler", default=None, choices=SCHEDULERS, metavar="NAME",
                   help="a diffusers scheduler to sample with instead of the pipeline's own, built from its "
                        "config: " + ", ".join(SCHEDULERS) + " (default: the pipeline's)")
    g.add_argument("--cpu-offload", action="store_true",
                   help="keep the models in CPU memory and move each to the GPU while it runs (less GPU memory, "
                        "slower; CUDA only)")
    g.add_argument("--tiny-seed", type=int, default=0, help="weights seed of --model tiny (default 0)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="generation settings from this JSON file ({setting: value} for the options above that "
                        "set GenerateConfig fields, as --print-config writes them); the options given override "
                        "them; the labeller's are --label-config's")
    g.add_argument("--print-config", action="store_true",
                   help="print the generation settings the options resolve to as JSON and exit without "
                        "generating (the model's defaults filled where known without loading it)")
    add_label_arguments(p)
    p.set_defaults(func=print_label_config_or(run))
