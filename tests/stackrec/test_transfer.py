"""Item mapping between domains: title normalisation, catalogue formats, coverage, and the
transplanted model's rows."""

from __future__ import annotations

import pytest
import torch

from stackrec.nextitnet import NextItNet, NextItNetConfig
from stackrec.transfer import (
    ItemMapping,
    TransferError,
    map_by_ids,
    map_by_titles,
    normalise_title,
    read_id_map,
    read_titles,
    transplant,
)
from stackrec.vocab import Vocabulary


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Matrix, The (1999)", ("the matrix", "1999")),
        ("The Matrix", ("the matrix", None)),
        ("Schindler's List (1993)", ("schindler s list", "1993")),
        ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
         ("the city of lost children", "1995")),
        ("Amélie (2001)", ("amelie", "2001")),
        ("  STAR WARS:  Episode IV (1977) ", ("star wars episode iv", "1977")),
    ],
)  # fmt: skip
def test_normalise_title(title, expected):
    assert normalise_title(title) == expected


def test_titles_map_movielens_1m_to_100k_formats_with_coverage(tmp_path):
    source = tmp_path / "movies.dat"
    source.write_bytes(
        "1::Matrix, The (1999)::Action\n2::Toy Story (1995)::Animation\n"
        "3::Heat (1995)::Crime\n4::Heat (1986)::Crime\n5::Amélie (2001)::Comedy\n".encode("latin-1")
    )
    target = tmp_path / "ml-100k.item"
    target.write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "10\tThe Matrix\t1999\tAction\n20\tToy Story\t1995\tAnimation\n"
        "30\tHeat\t1995\tCrime\n40\tGoldenEye\t1995\tAction\n"
    )
    u_item = tmp_path / "u.item"
    u_item.write_text("7|Amelie (2001)|01-Jan-2001||http://x|0|1\n8|Unknown Film (1990)|||x|0\n")

    titles = read_titles(target)
    assert titles["10"] == "The Matrix (1999)"
    mapping = map_by_titles(read_titles(source), titles, ["10", "20", "30", "40"])
    assert mapping.pairs == {"10": "1", "20": "2", "30": "3"}  # Heat by its year, not 1986
    assert mapping.summary() == {"mapped": 3, "target_items": 4, "coverage": 0.75}
    pipes = map_by_titles(read_titles(source), read_titles(u_item), ["7", "8"])
    assert pipes.pairs == {"7": "5"}  # accents ignored; the unknown film stays unmapped


def test_an_ambiguous_title_without_a_year_is_left_unmapped():
    mapping = map_by_titles({"1": "Heat (1995)", "2": "Heat (1986)"}, {"9": "Heat"}, ["9"])
    assert mapping.pairs == {} and mapping.coverage == 0.0


def test_ids_and_id_map_files(tmp_path):
    assert map_by_ids(["a", "b", "c"], ["b", "c", "d", "e"]).summary() == {
        "mapped": 2, "target_items": 4, "coverage": 0.5,
    }  # fmt: skip
    path = tmp_path / "map.csv"
    path.write_text("source_id,target_id\na,x\nb,y\nzz,z\n")
    mapping = read_id_map(path, ["a", "b"], ["x", "y", "z"])
    assert mapping.pairs == {"x": "a", "y": "b"}  # header skipped, unknown source ignored
    path.write_text("a,x,extra\n")
    with pytest.raises(TransferError, match="expected source_id,target_id"):
        read_id_map(path, ["a"], ["x"])
    with pytest.raises(TransferError, match="no such"):
        read_titles(tmp_path / "missing.item")


def test_transplant_copies_blocks_and_mapped_rows_only():
    torch.manual_seed(0)
    source_vocab, target_vocab = Vocabulary(), Vocabulary()
    source_vocab.add(["a", "b", "c"])
    target_vocab.add(["x", "y", "z", "w"])
    source = NextItNet(NextItNetConfig(n_items=4, dim=8, n_blocks=2))
    with torch.no_grad():
        for block in source.blocks:
            block.alpha.fill_(0.5)
    mapping = ItemMapping({"x": "c", "z": "a"}, 4)
    target = transplant(source, source_vocab, target_vocab, mapping)
    assert target.config.n_items == 5 and target.depth == 2
    assert torch.equal(target.blocks[1].conv1.conv.weight, source.blocks[1].conv1.conv.weight)
    assert float(target.blocks[0].alpha.detach()) == 0.5
    for table in ("embedding", "output"):
        new, old = getattr(target, table).weight, getattr(source, table).weight
        assert torch.equal(new[1], old[3]) and torch.equal(new[3], old[1])  # x<-c, z<-a
        assert not torch.equal(new[2], old[2])  # y unmapped: fresh
