"""StackRec growth: which old block each block of a deeper model copies, and the weight transfer.

Both models grow the same way, so the index logic lives here and each model's ``stack`` method
only builds the deeper config. Operators (old depth 2 shown as blocks ``[1, 2]``):

- ``adjacent``: ``[1, 1', 2, 2']``; ``cross``: ``[1, 2, 1', 2']``;
- ``copy_top_k``: the top ``k`` blocks duplicated on top, ``[1, 2, 3, 4] -> [1, 2, 3, 4, 3', 4']``;
- ``embeddings_only``: only the embeddings carry over; blocks are fresh.

Modes:

- ``faithful`` is the reference code: copy block weights and embeddings, reset LayerNorm, every
  alpha, the output layer and the optimizer. The grown model starts from a different function.
- ``function_preserving`` copies everything and sets the alpha of each added block (the primed
  ones above) to 0, so ``x + 0 * F(x)`` makes it an identity and the grown model computes exactly
  what the old one did. ``embeddings_only`` then keeps the old blocks and puts fresh ones on top.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

OPERATORS = ("adjacent", "cross", "copy_top_k", "embeddings_only")
MODES = ("faithful", "function_preserving")

_BLOCK_PARAM = re.compile(r"^blocks\.(\d+)\.(.+)$")


class StackingError(ValueError):
    """An unknown operator or mode, or a ``top_k`` the model cannot satisfy."""


@dataclass(frozen=True)
class BlockSource:
    """Where one block of the grown model comes from."""

    source: int | None  # index of the old block it copies; None for a freshly initialised block
    added: bool  # an added block: its alpha is 0 in function-preserving mode


def normalise(operator: str, mode: str) -> tuple[str, str]:
    """Accept ``copy-top-k`` as well as ``copy_top_k``; raise ``StackingError`` for the unknown."""
    op, md = operator.replace("-", "_"), mode.replace("-", "_")
    if op not in OPERATORS:
        raise StackingError(f"unknown stacking operator {operator!r}; expected one of {OPERATORS}")
    if md not in MODES:
        raise StackingError(f"unknown stacking mode {mode!r}; expected one of {MODES}")
    return op, md


def plan_blocks(
    depth: int, operator: str, mode: str, top_k: int | None = None
) -> list[BlockSource]:
    """The blocks of the grown model, bottom to top, each naming the old block it copies."""
    op, md = normalise(operator, mode)
    old = range(depth)
    if op == "adjacent":
        return [BlockSource(i, added) for i in old for added in (False, True)]
    if op == "cross":
        return [BlockSource(i, False) for i in old] + [BlockSource(i, True) for i in old]
    if op == "copy_top_k":
        k = depth if top_k is None else top_k
        if not 1 <= k <= depth:
            raise StackingError(f"top_k={top_k} must be between 1 and the depth {depth}")
        kept = [BlockSource(i, False) for i in old]
        return kept + [BlockSource(i, True) for i in range(depth - k, depth)]
    if md == "faithful":  # embeddings_only, as the StackRec baseline: every block fresh
        return [BlockSource(None, True) for _ in range(2 * depth)]
    return [BlockSource(i, False) for i in old] + [BlockSource(None, True) for _ in old]


def growth_event(depth: int, plan: list[BlockSource], operator: str, mode: str) -> dict:
    """The lineage record of one growth (plain ints and strings, so checkpoints load safely)."""
    op, md = normalise(operator, mode)
    return {
        "event": "stack",
        "operator": op,
        "mode": md,
        "from_depth": depth,
        "to_depth": len(plan),
        "sources": [-1 if b.source is None else b.source for b in plan],
        "added": [int(b.added) for b in plan],
    }


def source_name(name: str, sources: list[int]) -> str | None:
    """The old parameter that a new one copies (``blocks.3.x`` <- ``blocks.1.x``); None: fresh."""
    match = _BLOCK_PARAM.match(name)
    if match is None:
        return name
    src = sources[int(match.group(1))]
    return None if src < 0 else f"blocks.{src}.{match.group(2)}"


def _reset_in_faithful_mode(model: nn.Module) -> set[str]:
    """Names the reference code re-initialises: LayerNorm, alpha and the output layer."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            names |= {f"{module_name}.{p}" for p, _ in module.named_parameters()}
    for name, _ in model.named_parameters():
        if name.split(".")[-1].startswith("alpha") or name.startswith("output."):
            names.add(name)
    return names


def transfer_weights(old: nn.Module, new: nn.Module, event: dict) -> dict[str, str]:
    """Copy ``old``'s weights into the freshly built ``new`` as ``event`` says.

    Returns, for every parameter of ``new`` that received old weights, the old parameter's name:
    the map that carries optimizer state across growth.
    """
    old_params = dict(old.named_parameters())
    reset = _reset_in_faithful_mode(new) if event["mode"] == "faithful" else set()
    carried: dict[str, str] = {}
    with torch.no_grad():
        for name, param in new.named_parameters():
            src = source_name(name, event["sources"])
            if src is None or name in reset:
                continue
            param.copy_(old_params[src])
            carried[name] = src
        if event["mode"] == "function_preserving":
            for index, added in enumerate(event["added"]):
                if added:
                    for name, param in new.blocks[index].named_parameters():
                        if name.startswith("alpha"):
                            param.zero_()
    return carried
