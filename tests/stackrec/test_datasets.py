"""Readers of user files: every format lands as (user_id, item_id, ts ms), in time order."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stackrec.datasets import DatasetError, read_interactions
from stackrec.synthetic import StreamConfig, generate
from tests.shared_data import dataset

EXPECTED = [("1", "10", 978_300_760_000), ("2", "20", 978_300_761_000)]


def rows(table: pa.Table) -> list[tuple]:
    return list(
        zip(*(table.column(c).to_pylist() for c in ("user_id", "item_id", "ts")), strict=True)
    )


def test_movielens_dat_gz(tmp_path):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(b"2::20::4::978300761\n1::10::5::978300760\n"))
    assert rows(read_interactions(path)) == EXPECTED


def test_recbole_inter(tmp_path):
    path = tmp_path / "x.inter"
    path.write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        "1\t10\t3\t978300760\n2\t20\t3\t978300761\n"
    )
    assert rows(read_interactions(path)) == EXPECTED


def test_csv_with_common_column_names_and_parquet(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("userId,movie_id,timestamp\n1,10,978300760\n2,20,978300761\n")
    assert rows(read_interactions(csv)) == EXPECTED
    parquet = tmp_path / "x.parquet"
    pq.write_table(
        pa.table({"user": [2, 1], "item": [20, 10], "ts": [978_300_761_000, 978_300_760_000]}),
        parquet,
    )
    assert rows(read_interactions(parquet)) == EXPECTED


def test_user_item_lines_keep_line_order_as_time(tmp_path):
    path = tmp_path / "seqs.txt"
    path.write_text("u1 a\nu2 b\nu1 c d\n")
    table = read_interactions(path)
    assert table.column("item_id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("ts").to_pylist() == sorted(table.column("ts").to_pylist())


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("missing.csv", None, "auto", "no such file"),
        ("x.bin", "1 2\n", "auto", "cannot tell the format"),
        ("x.csv", "a,b\n1,2\n", "auto", "has no user_id column"),
        ("x.csv", "user,item,ts\n", "auto", "holds no interactions"),
        ("x.csv", "user,item,ts\n1,2,3\n", "xml", "unknown format"),
        ("x.txt", "lonely\n", "auto", "expected `user item"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message) as error:
        read_interactions(path, fmt)
    assert "\n" not in str(error.value)


def test_real_movielens_100k():
    table = read_interactions(dataset("ml-100k/ml-100k.inter"))
    assert table.num_rows == 100_000
    assert table.column("ts")[0].as_py() == 874_724_710_000  # earliest rating, in ms


def test_synthetic_stream_has_the_promised_shape():
    table = generate(StreamConfig(n_events=4_000, n_users=200, n_items=400, seed=1))
    assert table.num_rows == 4_000
    users = table.column("user_id").to_pylist()
    items = table.column("item_id").to_pylist()
    assert len(set(users)) < 200 and max(users.count(u) for u in set(users)) > 40  # repeat users
    first_half, second_half = set(items[:2_000]), set(items[2_000:])
    assert len(second_half - first_half) > 20  # new items keep appearing
    assert generate(StreamConfig(n_events=100, seed=1)) == generate(
        StreamConfig(n_events=100, seed=1)
    )
