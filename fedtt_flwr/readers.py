"""Rows of local files as records: CSV, TSV, JSON, JSONL and Parquet, a file, a folder or a glob of them.

Every record comes with where it is (``line 12`` for the line formats, ``record 3`` for a JSON array, ``row 7``
for Parquet), so that a bad value is reported by file, row and column (:mod:`.tasks` checks the values). The
standard library reads the text formats: it gives the line of every row and of every malformed one, which
``datasets``' CSV and JSON builders (pandas, pyarrow) do not; Parquet goes through pyarrow.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FileKind = Literal["csv", "tsv", "json", "jsonl", "parquet"]
EXTENSIONS: dict[str, FileKind] = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl",
                                   ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
csv.field_size_limit(1 << 26)  # long passages (BoolQ, MultiRC) exceed the default 128 kB


class RowError(ValueError):
    """One row is bad (a value, a field count, a line of JSON): with ``bad-rows = skip`` it is skipped and
    counted; anything else about a file stops the load. Readers yield it in the row's place (a generator that
    raised could not go on to the next row)."""


@dataclass(frozen=True)
class FileFormat:
    """How to read a file. ``kind`` None: from the extension. ``quoting`` False reads a GLUE ``.tsv`` (no quote
    characters: a ``"`` is text); ``columns`` names the columns of a file without a header row (CoLA)."""

    kind: FileKind | None = None
    quoting: bool = True
    columns: tuple[str, ...] | None = None


def read_text(path: Path) -> str:
    """The whole file as text, a leading BOM dropped; not UTF-8: the line and column of the first bad byte."""
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n").split("\n")
        raise ValueError(f"{path} line {len(before)}, column {len(before[-1]) + 1} (byte 0x{data[e.start]:02x}): "
                         "not valid UTF-8") from None


def expand(spec: str, base: Path | None = None, any_file: bool = False) -> list[Path]:
    """The files of a ``train-file``/``dev-file`` value: a file, a folder (its files with a known extension, or
    every visible file with ``any_file``: the format is given), or a glob. Relative values are under ``base``."""
    path = Path(spec).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if any(c in spec for c in "*?[") and not path.exists():  # a real file named "a[1].csv" is that file
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"{spec}: no file matches")
        return files
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and (any_file or p.suffix.lower() in EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"{path}: the folder holds no {', '.join(sorted(set(EXTENSIONS)))} file")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [path]


def file_kind(path: Path, fmt: FileFormat) -> FileKind:
    if fmt.kind:
        return fmt.kind
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; name it .csv, .tsv, .json, .jsonl or .parquet, "
                         "or set data-format")
    return kind


@dataclass
class Records:
    """One file's records: its columns (None where each record has its own: JSON) and ``(where, record)``."""

    path: Path
    columns: list[str] | None
    rows: Iterator[tuple[str, dict | RowError]]
    blank: list[int]  # blank lines skipped (line formats), filled as ``rows`` is consumed


def read_records(path: Path, fmt: FileFormat = FileFormat()) -> Records:
    kind = file_kind(path, fmt)
    blank: list[int] = []
    if kind in ("csv", "tsv"):
        return _delimited(path, kind, fmt, blank)
    if kind == "jsonl":
        return Records(path, None, _jsonl(path, blank), blank)
    if kind == "json":
        return Records(path, None, _json(path), blank)
    return _parquet(path)


def _delimited(path: Path, kind: FileKind, fmt: FileFormat, blank: list[int]) -> Records:
    options = {"delimiter": "\t" if kind == "tsv" else ","}
    options.update({"quoting": csv.QUOTE_NONE} if not fmt.quoting else {"strict": True})
    reader = csv.reader(io.StringIO(read_text(path), newline=""), **options)
    if fmt.columns is None:
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: the file is empty (expected a header row)") from None
        except csv.Error as e:
            raise ValueError(f"{path} line 1: {e}") from None
        columns = [c.strip() for c in header]
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"{path} line 1: the column '{repeated[0]}' appears twice in the header")
    else:
        columns = list(fmt.columns)

    def rows() -> Iterator[tuple[str, dict | RowError]]:
        last = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # the quoting is broken: nothing after it can be trusted
                hint = " (a quote opened here is never closed)" if "end of data" in str(e) else (
                    " (a quoted field must end at its quote: double a quote inside it, \"\")" if "expected after" in
                    str(e) else "")
                raise ValueError(f"{path} line {last + 1}: {e}{hint}") from None
            line, last = last + 1, reader.line_num
            if not row or all(not v.strip() for v in row):
                blank.append(line)
                continue
            if len(row) != len(columns):
                yield f"line {line}", RowError(
                    f"{path} line {line}: expected {len(columns)} {'tab' if kind == 'tsv' else 'comma'}-separated "
                    f"fields ({', '.join(columns)}), got {len(row)}")
                continue
            yield f"line {line}", dict(zip(columns, row, strict=True))

    return Records(path, columns, rows(), blank)


def _jsonl(path: Path, blank: list[int]) -> Iterator[tuple[str, dict | RowError]]:
    for n, line in enumerate(io.StringIO(read_text(path), newline=None), 1):
        if not line.strip():
            blank.append(n)
            continue
        try:
            record = json.loads(line.rstrip("\n"), object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            yield f"line {n}", RowError(f"{path} line {n}: invalid JSON ({e.msg} at column {e.colno})")
            continue
        except _RepeatedKey as e:
            yield f"line {n}", RowError(f"{path} line {n}: the field '{e.args[0]}' appears twice")
            continue
        if not isinstance(record, dict):
            record = RowError(f"{path} line {n}: expected a JSON object, got {type(record).__name__}")
        yield f"line {n}", record


class _RepeatedKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object; a key given twice is an error (json keeps the last one silently)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _RepeatedKey(key)
        out[key] = value
    return out


def _json(path: Path) -> Iterator[tuple[str, dict | RowError]]:
    try:
        data = json.loads(read_text(path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
    except _RepeatedKey as e:
        raise ValueError(f"{path}: a record has the field '{e.args[0]}' twice") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]}, as the Hugging Face JSON loader accepts (field="data")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects (or JSON Lines: name it .jsonl), "
                         f"got {type(data).__name__}")
    for n, record in enumerate(data, 1):
        if not isinstance(record, dict):
            record = RowError(f"{path} record {n}: expected a JSON object, got {type(record).__name__}")
        yield f"record {n}", record


def _parquet(path: Path) -> Records:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own types for every kind of broken file
        raise ValueError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    rows = ((f"row {n}", record) for n, record in enumerate(table.to_pylist(), 1))
    return Records(path, list(table.column_names), rows, [])
