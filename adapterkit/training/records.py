"""Reading data files into records, with errors that name the file and the line.

Files: ``.jsonl`` (one JSON object per line; also a ``.json`` file that does not start with ``[``),
``.json`` (a list of objects), ``.csv`` (a header row, then one record per row) and ``.txt``
(documents separated by blank lines; ``text`` format only). Every file is UTF-8 (a byte-order mark
is allowed).

Each record is a ``Record``: a plain dict that also knows where it came from (``record.where``,
e.g. ``"train.jsonl:12"``), so that a missing or ill-typed field is reported at its line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


class Record(dict):
    """One record: the fields of a data file's entry, and ``where`` it is (``"file:line"``)."""

    where: str = ""


def _kind(value: Any) -> str:
    names = {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true or false",
        type(None): "null",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def record(value: Any, where: str) -> Record:
    """``value`` as a Record found at ``where``; an error unless it is a mapping of fields."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: a record must be a JSON object of fields (like "
            f'{{"prompt": ..., "response": ...}}); got {_kind(value)}.'
        )
    out = Record(value)
    out.where = where
    return out


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark (spreadsheets write one) is dropped
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {raw[err.start]:#04x}); save the data file as UTF-8."
        ) from None


def _json_error(path: Path, err: json.JSONDecodeError, line: int = 0) -> ConfigError:
    return ConfigError(f"{path}:{line or err.lineno}:{err.colno}: not valid JSON: {err.msg}.")


def _jsonl(path: Path, text: str) -> list[Record]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                raise _json_error(path, err, i) from None
            out.append(record(value, f"{path}:{i}"))
    return out


def _json_list(path: Path, text: str) -> list[Record]:
    """A JSON list of objects; each record's line is where its object starts."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(path, err) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read.") from None
    if not isinstance(items, list):
        raise ConfigError(f"{path}: holds {_kind(items)}; a .json data file holds a list of records.")
    decoder, out, i = json.JSONDecoder(), [], text.index("[") + 1
    for item in items:  # the text is valid JSON: walk it again for the line of each item
        while text[i] in " \t\r\n,":
            i += 1
        _, end = decoder.raw_decode(text, i)
        out.append(record(item, f"{path}:{text.count(chr(10), 0, i) + 1}"))
        i = end
    return out


def _csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields may hold newlines
    out, start = [], 2
    try:
        for row in reader:  # a row missing values has None for them; extra values are dropped
            out.append(record({k: v for k, v in row.items() if k is not None}, f"{path}:{start}"))
            start = reader.line_num + 1
    except csv.Error as err:
        raise ConfigError(f"{path}:{reader.line_num}: not valid CSV: {err}.") from None
    return out


def _txt(path: Path, text: str) -> list[Record]:
    out, line = [], 1
    for doc in text.split("\n\n"):
        if doc.strip():
            start = line + doc[: len(doc) - len(doc.lstrip())].count("\n")  # its first line of text
            out.append(record({"text": doc.strip()}, f"{path}:{start}"))
        line += doc.count("\n") + 2
    return out


def read_records(path: str, fmt: str) -> list[Record]:
    """The records of one data file (see the module docstring)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"data file {path!r} is a folder; give a .jsonl, .json, .csv or .txt file.")
    if not p.is_file():
        raise ConfigError(f"data file {path!r} does not exist; give a .jsonl, .json, .csv or .txt file.")
    suffix = p.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json_list, ".csv": _csv, ".txt": _txt}
    if suffix not in readers:
        raise ConfigError(f"data file {path!r} has an unknown extension; use .jsonl, .json, .csv or .txt.")
    if suffix == ".txt" and fmt != "text":
        raise ConfigError(f"{path}: a .txt file holds plain text; use data.format 'text' (got {fmt!r}).")
    text = _text(p)
    if suffix == ".json" and not text.lstrip().startswith("["):
        suffix = ".jsonl"  # one object per line
    return readers[suffix](p, text)
