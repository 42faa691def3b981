"""The dataset: prompts in, a VOC-layout folder out, and the ways other tools read it.

- :mod:`.prompts`: prompt files (the shipped sets live in ``pccseg/data/``);
- :mod:`.generate`: the whole loop, prompts -> capture -> label -> files, resumable, many processes;
- :mod:`.folder`: the dataset folder on disk (:class:`DatasetFolder`: settings, the one sample writer, paths,
  manifest, resume, repair);
- :mod:`.voc`: reading one split of a VOC-layout tree (:class:`VOCSplit`), for training and scoring;
- :mod:`.export`: the Hugging Face ``datasets`` export.
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "DatasetFolder": "pccseg.dataset.folder",
    "read_manifest": "pccseg.dataset.folder",
    "load_prompts": "pccseg.dataset.prompts",
    "GenerateConfig": "pccseg.dataset.generate",   # generate() itself: pccseg.dataset.generate.generate (the
    #                                                 module's name shadows a lazy "generate" here)
    "VOCSplit": "pccseg.dataset.voc",
    "export_hf": "pccseg.dataset.export",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
