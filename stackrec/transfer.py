"""Items of a target domain mapped to a source domain's, and a model carried across.

Transfer (StackRec's third scenario) pretrains on a source domain and fine-tunes on a target.
The blocks carry over as they are; the item tables only where a target item has a source
counterpart. Three ways to say which:

- ``ids``: the same external id means the same item (two logs of one catalogue);
- an id map: a CSV of ``source_id,target_id`` rows (a header line is allowed);
- ``titles``: both catalogues have titles (MovieLens ``movies.dat`` ``id::Title (Year)::Genres``,
  ``u.item`` ``id|Title (Year)|...``, RecBole ``ml-100k.item`` with title and year columns);
  titles match after normalisation (case, punctuation, accents, "Matrix, The" -> "the matrix",
  the year kept apart), first with the year, then by title alone where that is unambiguous.

Mapped items start from the source's vectors, unmapped ones from fresh random rows.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from stackrec.checkpoint import MODELS
from stackrec.vocab import Vocabulary

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(r"^(.*),\s*(the|a|an|les|la|le|l'|il|el|das|der|die)$")
_ALIAS = re.compile(r"\s*\([^)]*\)")  # "(a.k.a. ...)", "(Cité des enfants perdus, La)"


class TransferError(ValueError):
    """A mapping file or catalogue that cannot be read, or models that cannot be combined."""


@dataclass(frozen=True)
class ItemMapping:
    pairs: dict[str, str]  # target item id -> source item id
    target_items: int  # distinct target items considered

    @property
    def coverage(self) -> float:
        """Share of target items that start from a source vector."""
        return len(self.pairs) / self.target_items if self.target_items else 0.0

    def summary(self) -> dict[str, float | int]:
        return {
            "mapped": len(self.pairs),
            "target_items": self.target_items,
            "coverage": round(self.coverage, 4),
        }


def normalise_title(title: str) -> tuple[str, str | None]:
    """``("the matrix", "1999")`` from ``"Matrix, The (1999)"``; year None when absent.

    Accents and punctuation go, case folds, whitespace collapses, a trailing article moves to
    the front, and parenthesised alternative titles are dropped.
    """
    text = title.strip()
    year_match = _YEAR.search(text)
    year = year_match.group(1) if year_match else None
    text = _YEAR.sub("", text)
    text = _ALIAS.sub("", text).strip()
    article = _ARTICLE.match(text.lower())
    if article:
        text = f"{article.group(2)} {article.group(1)}"
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    text = re.sub(r"&", " and ", text)
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split()), year


def read_titles(path: str | Path) -> dict[str, str]:
    """Item id -> title (with ``(Year)`` when the file has it) from a MovieLens catalogue."""
    path = Path(path)
    if not path.is_file():
        raise TransferError(f"no such catalogue file: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # MovieLens catalogues are latin-1
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise TransferError(f"{path} holds no items")
    if "::" in lines[0]:
        return _split_rows(lines, "::", path)
    if "\t" in lines[0] and ":token" in lines[0]:
        return _recbole_titles(lines, path)
    if "|" in lines[0]:
        return _split_rows(lines, "|", path)
    raise TransferError(
        f"cannot tell the catalogue format of {path.name}: expected id::title::genres, "
        "id|title|..., or a RecBole .item file"
    )


def _split_rows(lines: list[str], separator: str, path: Path) -> dict[str, str]:
    titles = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split(separator)
        if len(fields) < 2:
            raise TransferError(f"{path}:{number}: expected id{separator}title")
        titles[fields[0].strip()] = fields[1].strip()
    return titles


def _recbole_titles(lines: list[str], path: Path) -> dict[str, str]:
    header = [name.split(":")[0] for name in lines[0].split("\t")]
    if "item_id" not in header or "movie_title" not in header:
        raise TransferError(f"{path} has no item_id and movie_title columns: {header}")
    index, title = header.index("item_id"), header.index("movie_title")
    year = header.index("release_year") if "release_year" in header else None
    titles = {}
    for line in lines[1:]:
        fields = line.split("\t")
        name = fields[title].strip()
        if year is not None and len(fields) > year and fields[year].strip().isdigit():
            name = f"{name} ({fields[year].strip()})"
        titles[fields[index].strip()] = name
    return titles


def map_by_titles(
    source_titles: dict[str, str], target_titles: dict[str, str], target_items: list[str]
) -> ItemMapping:
    """Target items to source items whose normalised titles match (with the year first)."""
    by_year: dict[tuple[str, str | None], list[str]] = {}
    by_name: dict[str, list[str]] = {}
    for source_id, title in source_titles.items():
        name, year = normalise_title(title)
        by_year.setdefault((name, year), []).append(source_id)
        by_name.setdefault(name, []).append(source_id)
    target_keys = {t: normalise_title(target_titles[t]) for t in target_items if t in target_titles}
    name_count = Counter(name for name, _ in target_keys.values())
    pairs = {}
    for target_id, (name, year) in target_keys.items():
        exact = by_year.get((name, year), []) if year is not None else []
        loose = by_name.get(name, [])
        if len(exact) == 1:
            pairs[target_id] = exact[0]
        elif not exact and len(loose) == 1 and name_count[name] == 1:
            pairs[target_id] = loose[0]
    return ItemMapping(pairs, len(target_items))


def map_by_ids(source_items: list[str], target_items: list[str]) -> ItemMapping:
    """Identical external ids are the same item."""
    known = set(source_items)
    return ItemMapping({t: t for t in target_items if t in known}, len(target_items))


def read_id_map(path: str | Path, source_items: list[str], target_items: list[str]) -> ItemMapping:
    """``source_id,target_id`` rows; pairs naming items absent on either side are ignored."""
    path = Path(path)
    if not path.is_file():
        raise TransferError(f"no such id-map file: {path}")
    known_source, known_target = set(source_items), set(target_items)
    pairs = {}
    for number, row in enumerate(csv.reader(io.StringIO(path.read_text())), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise TransferError(f"{path}:{number}: expected source_id,target_id, got {row}")
        source_id, target_id = row[0].strip(), row[1].strip()
        if number == 1 and source_id not in known_source and target_id not in known_target:
            continue  # a header
        if source_id in known_source and target_id in known_target:
            pairs.setdefault(target_id, source_id)
    return ItemMapping(pairs, len(target_items))


def transplant(
    source: nn.Module, source_vocab: Vocabulary, target_vocab: Vocabulary, mapping: ItemMapping
) -> nn.Module:
    """A model for ``target_vocab``: ``source``'s blocks, and its item rows where mapped.

    Every parameter but the item tables is copied as is (same architecture and width); the
    item tables are fresh except the rows of mapped items, which take the source's rows.
    """
    model_cls, _ = MODELS[source.kind]
    target = model_cls(replace(source.config, n_items=len(target_vocab)))
    source_params = dict(source.named_parameters())
    target_rows = torch.as_tensor(target_vocab.lookup(list(mapping.pairs)), dtype=torch.long)
    source_rows = torch.as_tensor(
        source_vocab.lookup(list(mapping.pairs.values())), dtype=torch.long
    )
    with torch.no_grad():
        for name, param in target.named_parameters():
            old = source_params[name]
            if old.shape == param.shape and not _is_item_table(name, source):
                param.copy_(old)
            elif _is_item_table(name, source):
                param[target_rows] = old[source_rows].to(param.dtype)
            else:
                raise TransferError(
                    f"{name}: source shape {tuple(old.shape)} != {tuple(param.shape)}"
                )
    return target


def _is_item_table(name: str, model: nn.Module) -> bool:
    return name in ("embedding.weight", "output.weight") and (
        getattr(model, name.split(".")[0]) is not None
    )
