"""NextItNet as StackRec uses it: a stack of causal dilated convolution blocks over item embeddings.

Block: causal conv (k=3, dilation d) -> LayerNorm -> ReLU -> causal conv (2d) -> LayerNorm ->
ReLU, output ``x + alpha * F(x)`` with ``alpha`` a learnable scalar starting at 0 (ReZero), which
is what makes a block with ``alpha = 0`` an exact identity and stacking function-preserving.
Block dilations alternate 1 and 4, so a pair of blocks sees 1, 2, 4, 8 steps back.

Inputs are left-padded with item 0. Padding positions are zeroed after every convolution, so
the output at a real position does not depend on how much padding precedes the sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from stackrec.sequences import without_leading_padding
from stackrec.stacking import growth_event, plan_blocks, transfer_weights

DILATION_CYCLE = (1, 4)  # dilation of each block's first conv; its second conv uses twice that


INIT_STD = 0.02  # item tables (and positions); dim**-0.5 learned half as much per epoch


@dataclass(frozen=True)
class NextItNetConfig:
    n_items: int  # rows of the item tables, padding row 0 included (= len(vocabulary))
    dim: int = 64  # embedding and channel width
    n_blocks: int = 4  # residual blocks, two convolutions each
    max_len: int = 50  # longest context the model is trained and served with
    dropout: float = 0.0  # on each residual branch
    kernel_size: int = 3
    block_dilations: tuple[int, ...] | None = None  # per block; None -> DILATION_CYCLE repeated
    lineage: tuple[dict, ...] = field(default=())  # growth events, oldest first

    def __post_init__(self) -> None:
        if self.n_items < 2:
            raise ValueError(f"n_items={self.n_items}: need padding plus at least one item")
        for name in ("dim", "n_blocks", "max_len", "kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.block_dilations is not None and len(self.block_dilations) != self.n_blocks:
            raise ValueError(
                f"block_dilations={self.block_dilations} must have n_blocks={self.n_blocks} entries"
            )

    @property
    def dilations(self) -> tuple[int, ...]:
        if self.block_dilations is not None:
            return tuple(self.block_dilations)
        return tuple(DILATION_CYCLE[i % len(DILATION_CYCLE)] for i in range(self.n_blocks))


class CausalConv(nn.Module):
    """A 1-d convolution that sees only the current and earlier positions."""

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(dim, dim, kernel_size, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, D, L] -> [B, D, L]
        return self.conv(F.pad(x, (self.left, 0)))


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = CausalConv(dim, kernel_size, dilation)
        self.norm1 = nn.LayerNorm(dim)
        self.conv2 = CausalConv(dim, kernel_size, 2 * dilation)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: [B, L, D], keep: [B, L, 1] with 1.0 at real items, 0.0 at padding
        h = F.relu(self.norm1(self.conv1(x.transpose(1, 2)).transpose(1, 2))) * keep
        h = F.relu(self.norm2(self.conv2(h.transpose(1, 2)).transpose(1, 2))) * keep
        return x + self.alpha * self.dropout(h)


class NextItNet(nn.Module):
    """Items in, hidden states out; scores are dot products with ``item_vectors()``."""

    kind = "nextitnet"

    def __init__(self, config: NextItNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.n_items, c.dim, padding_idx=0)
        self.blocks = nn.ModuleList(
            ResidualBlock(c.dim, c.kernel_size, d, c.dropout) for d in c.dilations
        )
        self.output = nn.Embedding(c.n_items, c.dim)  # output item vectors, no bias
        self._init_items(self.embedding.weight, 0)
        self._init_items(self.output.weight, 0)

    def _init_items(self, weight: torch.Tensor, start: int) -> None:
        with torch.no_grad():
            nn.init.normal_(weight[start:], std=INIT_STD)
            weight[0].zero_()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def vector_dim(self) -> int:
        return self.config.dim

    def forward(self, items: torch.Tensor) -> torch.Tensor:  # [B, L] long -> [B, L, D]
        keep = (items != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        x = self.embedding(items)
        for block in self.blocks:
            x = block(x, keep) * keep
        return x

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over every row, ``hidden @ item_vectors().T``; callers exclude column 0."""
        return hidden @ self.output.weight.T

    def item_vectors(self) -> torch.Tensor:  # [n_items, D], row 0 is padding
        return self.output.weight

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, D]
        """The hidden state after each user's latest item (the last column of a left-padded row)."""
        empty = items[:, -1] == 0
        if bool(empty.any()):
            row = int(empty.nonzero()[0, 0])
            raise ValueError(f"row {row} has no item in its last position (empty or right-padded)")
        return self(without_leading_padding(items))[:, -1]

    def grow_items(self, n_items: int) -> None:
        """Append freshly initialised rows for new items; existing rows keep their values."""
        old = self.config.n_items
        if n_items < old:
            raise ValueError(f"cannot shrink the item table from {old} to {n_items} rows")
        for table in (self.embedding, self.output):
            grown = table.weight.detach().new_empty(n_items, self.config.dim)
            grown[:old] = table.weight.detach()
            self._init_items(grown, old)
            table.weight = nn.Parameter(grown)
            table.num_embeddings = n_items
        self.config = replace(self.config, n_items=n_items)

    def stack(
        self,
        operator: str = "adjacent",
        mode: str = "function_preserving",
        top_k: int | None = None,
    ) -> NextItNet:
        """A deeper copy grown by a StackRec operator (see ``stackrec.stacking``)."""
        plan = plan_blocks(self.depth, operator, mode, top_k)
        event = growth_event(self.depth, plan, operator, mode)
        old_dilations, cycle = self.config.dilations, DILATION_CYCLE
        dilations = tuple(
            cycle[i % len(cycle)] if b.source is None else old_dilations[b.source]
            for i, b in enumerate(plan)
        )
        config = replace(
            self.config,
            n_blocks=len(plan),
            block_dilations=dilations,
            lineage=(*self.config.lineage, event),
        )
        grown = NextItNet(config).to(self.embedding.weight.device)
        transfer_weights(self, grown, event)
        return grown
