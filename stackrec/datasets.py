"""Readers for the interaction files users bring, all into one Arrow table.

Every reader returns columns ``user_id`` (string), ``item_id`` (string), ``ts`` (int64 epoch
milliseconds), sorted stably by time, so replaying the table reproduces the history. Formats:

- ``movielens``: ``user::item::rating::timestamp`` (seconds), as in ML-1M ``ratings.dat``;
- ``inter``: RecBole atomic files, tab-separated with typed headers (``user_id:token``...);
- ``csv`` / ``parquet``: columns user/item/timestamp under common names (see ``_COLUMN_NAMES``);
- ``lines``: ``user item`` or ``user item1 item2 ...`` per line; order is time (ts synthesised);
- ``auto``: chosen from the file name. ``.gz`` is read transparently.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FORMATS = ("auto", "movielens", "inter", "csv", "parquet", "lines")
_COLUMN_NAMES = {
    "user_id": ("user_id", "user", "userid", "uid", "user_id:token"),
    "item_id": ("item_id", "item", "itemid", "iid", "movie_id", "product_id", "item_id:token"),
    "ts": ("ts", "timestamp", "time", "timestamp:float", "datetime"),
}
SYNTHETIC_START_MS = 1_600_000_000_000  # 2020-09-13, for files whose line order is their time


class DatasetError(ValueError):
    """The file cannot be read as interactions; the message says why, in one line."""


def read_interactions(path: str | Path, fmt: str = "auto") -> pa.Table:
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"no such file: {path}")
    fmt = _guess_format(path) if fmt == "auto" else fmt
    try:
        table = _READERS[fmt](path)
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"cannot read {path} as {fmt}: {str(error).splitlines()[0]}") from None
    if table.num_rows == 0:
        raise DatasetError(f"{path} holds no interactions")
    order = pc.sort_indices(table, [("ts", "ascending")])  # stable: ties keep file order
    return table.take(order)


def _guess_format(path: Path) -> str:
    name = path.name.removesuffix(".gz")
    if name.endswith(".dat"):
        return "movielens"
    if name.endswith(".inter"):
        return "inter"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    if name.endswith(".txt"):
        return "lines"
    raise DatasetError(
        f"cannot tell the format of {path.name}; pass --format ({', '.join(FORMATS[1:])})"
    )


def _open_text(path: Path) -> io.BufferedReader | gzip.GzipFile:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_movielens(path: Path) -> pa.Table:
    with _open_text(path) as handle:
        raw = handle.read().replace(b"::", b"\t")
    table = pacsv.read_csv(
        io.BytesIO(raw),
        read_options=pacsv.ReadOptions(column_names=["user_id", "item_id", "rating", "ts"]),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(
            column_types={"user_id": pa.string(), "item_id": pa.string(), "ts": pa.int64()}
        ),
    )
    return _standard(table, seconds=True)


def _read_inter(path: Path) -> pa.Table:
    with _open_text(path) as handle:
        table = pacsv.read_csv(
            handle,
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
        )
    return _standard(_rename(table, path), seconds=True)


def _read_csv(path: Path) -> pa.Table:
    delimiter = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","
    with _open_text(path) as handle:
        table = pacsv.read_csv(handle, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    return _standard(_rename(table, path))


def _read_parquet(path: Path) -> pa.Table:
    return _standard(_rename(pq.read_table(path), path))


def _read_lines(path: Path) -> pa.Table:
    users: list[str] = []
    items: list[str] = []
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.decode("utf-8").split()
            if not fields:
                continue
            if len(fields) < 2:
                raise DatasetError(f"{path}:{number}: expected `user item [item ...]`")
            users.extend([fields[0]] * (len(fields) - 1))
            items.extend(fields[1:])
    ts = SYNTHETIC_START_MS + np.arange(len(items), dtype=np.int64) * 1000
    return pa.table({"user_id": users, "item_id": items, "ts": ts})


def _rename(table: pa.Table, path: Path) -> pa.Table:
    lower = {name.lower(): name for name in table.column_names}
    picked = {}
    for wanted, aliases in _COLUMN_NAMES.items():
        found = next((lower[a] for a in aliases if a in lower), None)
        if found is None:
            raise DatasetError(
                f"{path.name} has no {wanted} column (looked for "
                f"{', '.join(aliases)}; found {', '.join(table.column_names)})"
            )
        picked[wanted] = table.column(found)
    return pa.table(picked)


def _standard(table: pa.Table, seconds: bool = False) -> pa.Table:
    """Cast ids to strings and ``ts`` to int64 milliseconds."""
    ts = table.column("ts")
    if pa.types.is_timestamp(ts.type):
        ts = pc.cast(pc.cast(ts, pa.timestamp("ms")), pa.int64())
    else:
        ts = pc.cast(ts, pa.float64())
        newest = pc.max(ts).as_py()
        if seconds or (newest is not None and newest < 1e11):  # epoch seconds, as most data
            ts = pc.multiply(ts, 1000)
        ts = pc.cast(pc.round(ts), pa.int64())
    return pa.table(
        {
            "user_id": pc.cast(table.column("user_id"), pa.string()),
            "item_id": pc.cast(table.column("item_id"), pa.string()),
            "ts": ts,
        }
    )


_READERS = {
    "movielens": _read_movielens,
    "inter": _read_inter,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "lines": _read_lines,
}
