"""The labellers side by side, behind one interface.

Each labeller is a module with a frozen parameter dataclass (checked in ``__post_init__``) and
``label(capture, params) -> result``, where ``result.mask`` is the (H, W) uint8 mask and
``result.uncertain_share`` its share of 255:

========  ============================  ==========================================  ===============
name      module                        parameters                                  result
========  ============================  ==========================================  ===============
``pcc``   :mod:`pccseg.labellers.pcc`   :class:`~pccseg.labellers.pcc.LabelParams`  ``LabelResult``
``dd``    :mod:`pccseg.labellers.dd`    :class:`~pccseg.labellers.dd.DDParams`      ``MapsResult``
``attn``  :mod:`pccseg.labellers.attn`  :class:`~pccseg.labellers.attn.AttnParams`  ``MapsResult``
``fuse``  :mod:`pccseg.labellers.fuse`  :class:`~pccseg.labellers.fuse.FuseParams`  ``FuseResult``
========  ============================  ==========================================  ===============

:func:`label` picks the labeller from the type of the parameters (None: PCC with the report's values), so
``label(capture)``, ``label(capture, LabelParams(...))`` and ``label(capture, DDParams())`` all work.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import attn, dd, fuse, pcc
from ..errors import InputError

if TYPE_CHECKING:
    from ..capture.format import Capture


@dataclass(frozen=True)
class Labeller:
    """One labeller: its name, parameter type, module (with ``label``) and what it needs from a capture."""

    name: str
    params: type
    module: ModuleType
    needs_self_probs: bool
    summary: str

    def label(self, capture: Capture, params: Any = None, **overrides) -> Any:
        """``module.label(capture, params, **overrides)``."""
        return self.module.label(capture, params, **overrides)


#: name -> labeller, in the order the docs list them; ``pcc`` is the default.
LABELLERS: dict[str, Labeller] = {lab.name: lab for lab in (
    Labeller("pcc", pcc.LabelParams, pcc, False,
             "Principal Component Clustering (the report): self-attention clusters classified by the class maps"),
    Labeller("dd", dd.DDParams, dd, True,
             "Dataset Diffusion's rule: class maps spread by the self-attention affinity, thresholded"),
    Labeller("attn", attn.AttnParams, attn, False,
             "the class maps alone: min-max normalised, argmax, background below a threshold"),
    Labeller("fuse", fuse.FuseParams, fuse, False,
             "PCC's cluster votes fused with the class maps into class scores, decided per colour segment"),
)}
DEFAULT_LABELLER = "pcc"


def get_labeller(name: str) -> Labeller:
    """The labeller called ``name``; :class:`InputError` naming the choices for any other name."""
    try:
        return LABELLERS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown labeller {name!r} (choose from {', '.join(LABELLERS)})",
                         field="labeller") from None


def labeller_of(params: Any) -> Labeller:
    """The labeller whose parameter type ``params`` is (TypeError for anything else)."""
    for lab in LABELLERS.values():
        if type(params) is lab.params:
            return lab
    raise TypeError(f"not the parameters of a labeller: {type(params).__name__} "
                    f"(expected one of {', '.join(lab.params.__name__ for lab in LABELLERS.values())})")


def default_params(name: str = DEFAULT_LABELLER) -> Any:
    """The default parameters of the labeller called ``name``."""
    return get_labeller(name).params()


def params_record(params: Any) -> dict[str, Any]:
    """``{"labeller": name, "label_params": {field: value}}``, as settings.json and label_params.json hold it."""
    return {"labeller": labeller_of(params).name, "label_params": dataclasses.asdict(params)}


def label(capture: Capture, params: Any = None, **overrides) -> Any:
    """Label one capture with the labeller of ``params`` (None: PCC, report values); ``overrides`` replace
    fields of ``params``.

    Raises:
        InputError: the capture lacks what the labeller needs (names the file and the field).
    """
    params = pcc.LabelParams() if params is None else params
    return labeller_of(params).label(capture, params, **overrides)
