"""Feature rows stored as column blocks of repeated rows, so that the k-means works on each block's unique rows.

The clustering features of section 2.2 are the component maps of every head, nearest-upsampled to the latent
size, beside the pixel position. A map of the 16x16 level, upsampled to 64x64, repeats each of its 256 rows
16 times: more than half of SD 2.1's 632 feature columns hold only 256 distinct rows, and a quarter 1,024.
:class:`BlockRows` keeps each block once, as a table of its distinct rows and the index of every row's
entry, and does the k-means' arithmetic (products with centres, sums per cluster, squared norms) on the
tables, a quarter of the work of the full (N, F) matrix at SD 2.1 shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockRows:
    """(N, F) rows as column blocks: block j of row i is ``tables[j][index[j][i]]`` (or ``tables[j][i]``
    when ``index[j]`` is None).

    Attributes:
        tables: (u_j, F_j) float32 tables, one per block, in column order.
        index: (N,) int64 row of the table for every row, or None (the table has all N rows).
    """

    tables: tuple[torch.Tensor, ...]
    index: tuple[torch.Tensor | None, ...]

    def __post_init__(self) -> None:
        if not self.tables or len(self.tables) != len(self.index):
            raise ValueError("BlockRows needs one index (or None) per table, and at least one table")
        rows = {len(t) if i is None else len(i) for t, i in zip(self.tables, self.index)}
        if len(rows) != 1:
            raise ValueError(f"the blocks have different row counts: {sorted(rows)}")

    @classmethod
    def of(cls, x: torch.Tensor) -> "BlockRows":
        """One block: the (N, F) matrix itself."""
        return cls((x,), (None,))

    @property
    def shape(self) -> tuple[int, int]:
        t, i = self.tables[0], self.index[0]
        return (len(t) if i is None else len(i), sum(t.shape[1] for t in self.tables))

    @property
    def device(self) -> torch.device:
        return self.tables[0].device

    def _blocks(self):
        cols = 0
        for t, i in zip(self.tables, self.index):
            yield slice(cols, cols + t.shape[1]), t, i
            cols += t.shape[1]

    def dense(self) -> torch.Tensor:
        """(N, F) matrix."""
        return torch.cat([t if i is None else t.index_select(0, i) for t, i in zip(self.tables, self.index)], dim=1)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """(m, F) dense rows ``idx`` (m,)."""
        return torch.cat([t[idx] if i is None else t[i[idx]] for t, i in zip(self.tables, self.index)], dim=1)

    def take(self, idx: torch.Tensor) -> "BlockRows":
        """The rows ``idx`` (m,) as BlockRows (tables shared)."""
        return BlockRows(tuple(t[idx] if i is None else t for t, i in zip(self.tables, self.index)),
                         tuple(None if i is None else i[idx] for i in self.index))

    def mean(self) -> torch.Tensor:
        """(F,) mean row."""
        n = self.shape[0]
        return torch.cat([t.mean(0) if i is None else (torch.bincount(i, minlength=len(t)).to(t.dtype) @ t) / n
                          for t, i in zip(self.tables, self.index)])

    def sub(self, row: torch.Tensor) -> "BlockRows":
        """Every row minus ``row`` (F,)."""
        return BlockRows(tuple(t - row[cols] for cols, t, _ in self._blocks()), self.index)

    def sq_norms(self) -> torch.Tensor:
        """(N,) squared norm of every row."""
        out = None
        for t, i in zip(self.tables, self.index):
            s = (t * t).sum(1)
            s = s if i is None else s[i]
            out = s if out is None else out + s
        return out

    def dot(self, c: torch.Tensor) -> torch.Tensor:
        """(N, k) products ``x . c`` with the rows of ``c`` (k, F)."""
        k = c.shape[0]
        if k > 4 and k % 16:            # MKL's sgemm is up to 3x faster with 16 columns than with 5-15
            c = torch.cat([c, c.new_zeros(-k % 16, c.shape[1])])
        out = None
        for cols, t, i in self._blocks():
            p = t @ c[:, cols].t()
            if i is not None:
                p = p.index_select(0, i)
            out = p if out is None else out.add_(p)
        return out[:, :k]

    def centre_terms(self, c: torch.Tensor) -> torch.Tensor:
        """(N, k) ``|c|^2 - 2 x . c`` for the rows of ``c`` (k, F): the squared distances less ``|x|^2``.

        One dense block takes one ``addmm``; blocks of repeated rows take their products on the tables.
        """
        csq = (c * c).sum(1).unsqueeze(0)
        if len(self.tables) == 1 and self.index[0] is None:
            return torch.addmm(csq, self.tables[0], c.t(), alpha=-2.0)
        return self.dot(c).mul_(-2.0).add_(csq)

    def label_sums(self, labels: torch.Tensor, k: int, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """(k, F) sum of the rows of every label 0..k-1 (``labels``: (N,) int64).

        ``scratch``: an optional (k, N) buffer, reused from call to call, for the one-hot matrix of a dense
        block (an (N, F) product per block either way).
        """
        parts = []
        for t, i in zip(self.tables, self.index):
            if i is None:
                onehot = scratch if scratch is not None else torch.empty(k, len(t), dtype=t.dtype, device=t.device)
                onehot.zero_().scatter_(0, labels.unsqueeze(0), 1.0)
            else:
                onehot = torch.bincount(labels * len(t) + i, minlength=k * len(t)).reshape(k, len(t)).to(t.dtype)
            parts.append(onehot @ t)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def stack_blocks(blocks: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> BlockRows:
    """BlockRows of ``(table, index)`` pairs, neighbours with the same index object merged into one table."""
    tables: list[torch.Tensor] = []
    index: list[torch.Tensor | None] = []
    for t, i in blocks:
        if tables and index[-1] is i:
            tables[-1] = torch.cat([tables[-1], t], dim=1)
        else:
            tables.append(t)
            index.append(i)
    return BlockRows(tuple(tables), tuple(index))
