"""SASRec with StackRec's residual scale: causal self-attention and feed-forward blocks.

Block (pre-LayerNorm): ``x + a_attn * Attn(LN(x))`` then ``x + a_ffn * FFN(LN(x))``, each alpha a
learnable scalar starting at 0, so a block with both alphas 0 is an identity and stacking can
preserve the model's function. A final LayerNorm follows the blocks.

Inputs are left-padded with item 0. Learned positions count from each row's first real item
and padded keys are masked out, so the output at a real position does not depend on how much
padding precedes it, and serving a user's latest items uses the positions training used.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from stackrec.sequences import without_leading_padding
from stackrec.stacking import growth_event, plan_blocks, transfer_weights

INIT_STD = 0.02  # item tables (and positions); dim**-0.5 learned half as much per epoch


@dataclass(frozen=True)
class SASRecConfig:
    n_items: int  # rows of the item tables, padding row 0 included (= len(vocabulary))
    dim: int = 64  # embedding and hidden width
    n_blocks: int = 2  # attention + feed-forward blocks
    n_heads: int = 1
    max_len: int = 50  # longest context, and the number of learned positions
    dropout: float = 0.2  # on the embeddings, attention weights and each residual branch
    ffn_dim: int | None = None  # feed-forward hidden width; None -> dim, as in SASRec
    shared_embeddings: bool = True  # score with the input item embeddings (SASRec) or a table
    lineage: tuple[dict, ...] = field(default=())  # growth events, oldest first

    def __post_init__(self) -> None:
        if self.n_items < 2:
            raise ValueError(f"n_items={self.n_items}: need padding plus at least one item")
        for name in ("dim", "n_blocks", "n_heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # x: [B, L, D]; allowed: [B, 1, L, L] True where a query may attend a key
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, dim // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D/H]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
        return self.proj(y.transpose(1, 2).reshape(b, length, dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(F.relu(self.up(x))))


class Block(nn.Module):
    def __init__(self, c: SASRecConfig) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(c.dim)
        self.attn = CausalSelfAttention(c.dim, c.n_heads, c.dropout)
        self.norm_ffn = nn.LayerNorm(c.dim)
        self.ffn = FeedForward(c.dim, c.ffn_dim or c.dim, c.dropout)
        self.dropout = nn.Dropout(c.dropout)
        self.alpha_attn = nn.Parameter(torch.zeros(1))
        self.alpha_ffn = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = x + self.alpha_attn * self.dropout(self.attn(self.norm_attn(x), allowed))
        x = x + self.alpha_ffn * self.dropout(self.ffn(self.norm_ffn(x)))
        return x * keep


class SASRec(nn.Module):
    """Items in, hidden states out; scores are dot products with ``item_vectors()``."""

    kind = "sasrec"

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.n_items, c.dim, padding_idx=0)
        self.position = nn.Embedding(c.max_len, c.dim)
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_blocks))
        self.norm = nn.LayerNorm(c.dim)
        self.output = None if c.shared_embeddings else nn.Embedding(c.n_items, c.dim)
        for table in self._item_tables():
            self._init_items(table.weight, 0)
        nn.init.normal_(self.position.weight, std=INIT_STD)

    def _item_tables(self) -> list[nn.Embedding]:
        return [self.embedding] if self.output is None else [self.embedding, self.output]

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
        length = items.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.config.max_len}")
        real = items != 0
        keep = real.unsqueeze(-1).to(self.embedding.weight.dtype)
        steps = torch.arange(length, device=items.device)
        positions = (steps - (~real).sum(1, keepdim=True)).clamp(min=0)  # from the first item
        x = self.embedding(items) * self.config.dim**0.5 + self.position(positions)
        x = self.dropout(x) * keep
        causal = steps[None, :] <= steps[:, None]  # [L, L] query row, key column
        allowed = causal & (
            real[:, None, :] | torch.eye(length, dtype=torch.bool, device=items.device)
        )
        allowed = allowed.unsqueeze(1)  # [B, 1, L, L]; a padded query sees only itself
        for block in self.blocks:
            x = block(x, allowed, keep)
        return self.norm(x) * keep

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over every row, ``hidden @ item_vectors().T``; callers exclude column 0."""
        return hidden @ self.item_vectors().T

    def item_vectors(self) -> torch.Tensor:  # [n_items, D], row 0 is padding
        return self._item_tables()[-1].weight

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
        for table in self._item_tables():
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
    ) -> SASRec:
        """A deeper copy grown by a StackRec operator (see ``stackrec.stacking``)."""
        plan = plan_blocks(self.depth, operator, mode, top_k)
        event = growth_event(self.depth, plan, operator, mode)
        config = replace(self.config, n_blocks=len(plan), lineage=(*self.config.lineage, event))
        grown = SASRec(config).to(self.embedding.weight.device)
        transfer_weights(self, grown, event)
        return grown
