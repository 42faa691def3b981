"""The learning-rate schedule of :func:`pccseg.train.loop.train`: poly decay per iteration
(mmsegmentation's ``PolyLR``), optionally after a linear warm-up.

Iteration ``i`` (from 1) of ``iters`` steps with the rate ``base * factor(i - 1)``, where

    factor(t) = (1 - t / iters) ** power * min(1, (t + 1) / warmup)

(the second term only with ``warmup > 0``): the first iteration at ``base / warmup``, iteration ``warmup``
at the full poly rate. Without warm-up the schedule is torch's ``PolynomialLR`` itself (its chained form,
as every run before the warm-up option).
"""

from __future__ import annotations

import torch


def lr_factor(t: int, iters: int, power: float, warmup: int = 0) -> float:
    """The factor of the base rate after ``t`` scheduler steps (used by iteration ``t + 1``)."""
    factor = (1 - min(t, iters) / iters) ** power
    if warmup > 0:
        factor *= min(1.0, (t + 1) / warmup)
    return factor


class WarmupPolyLR(torch.optim.lr_scheduler.PolynomialLR):
    """``PolynomialLR`` times a linear warm-up over the first ``warmup`` iterations (closed form,
    :func:`lr_factor`). Its state (``state_dict``) carries ``warmup``, so a resumed run keeps it."""

    def __init__(self, optimizer, total_iters: int, power: float, warmup: int):
        self.warmup = warmup
        super().__init__(optimizer, total_iters=total_iters, power=power)

    def get_lr(self):
        f = lr_factor(self.last_epoch, self.total_iters, self.power, self.warmup)
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self):
        return self.get_lr()


def make_scheduler(optimizer, iters: int, power: float, warmup: int = 0):
    """torch's ``PolynomialLR`` (``warmup == 0``, bit-equal to earlier runs) or :class:`WarmupPolyLR`."""
    if warmup > 0:
        return WarmupPolyLR(optimizer, total_iters=iters, power=power, warmup=warmup)
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=iters, power=power)
