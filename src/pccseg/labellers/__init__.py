"""Labelling (the method's sections 2-4): a capture in, a mask out, by four labellers side by side.

- :mod:`.pcc`: Principal Component Clustering, the stages in order (:class:`LabelParams`, ``label``,
  :class:`LabelResult`), over its stage modules :mod:`.features` (2.1-2.2 head-wise PCA, features),
  :mod:`.clusters` (2.3-2.4 k-means, segments; :mod:`.rows`, the features as tables of distinct rows that
  the k-means works on), :mod:`.classes` (3 class maps, assignment, vote) and
  :mod:`.refine` (4 refinement on the image);
- :mod:`.dd`: Dataset Diffusion's rule (:class:`DDParams`); :mod:`.attn`: the class maps alone
  (:class:`AttnParams`, :class:`MapsResult`);
- :mod:`.fuse`: PCC's cluster votes fused with the class maps, decided per colour segment
  (:class:`FuseParams`, :class:`FuseResult`; its stages in :mod:`.fusion`);
- :mod:`.registry`: the one interface: :func:`label` picks the labeller from the type of the parameters;
- :mod:`.workers`: :class:`LabelPool`, labelling in worker processes with one torch thread each
  (``pccseg label --workers``, ``generate``'s labelling worker).
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "label": "pccseg.labellers.registry",
    "get_labeller": "pccseg.labellers.registry",
    "labeller_of": "pccseg.labellers.registry",
    "default_params": "pccseg.labellers.registry",
    "LABELLERS": "pccseg.labellers.registry",
    "DEFAULT_LABELLER": "pccseg.labellers.registry",
    "LabelParams": "pccseg.labellers.pcc",
    "LabelResult": "pccseg.labellers.pcc",
    "DDParams": "pccseg.labellers.dd",
    "AttnParams": "pccseg.labellers.attn",
    "MapsResult": "pccseg.labellers.attn",
    "FuseParams": "pccseg.labellers.fuse",
    "FuseResult": "pccseg.labellers.fuse",
    "LabelPool": "pccseg.labellers.workers",
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(_EXPORTS)
