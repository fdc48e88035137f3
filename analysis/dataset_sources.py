"""Dataset mode's sources: a file (.txt, .jsonl/.json, .csv/.tsv), a HuggingFace `datasets` id
or folder, or a bundled name, read as a stream of (text id, text) with a fingerprint and, where
cheap, a total. Text ids and blank texts follow analysis/dataset.py's module docstring; every
bad input is one clear UserError."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from analysis import datasets_builtin as builtin
from models.common import UserError, check_text

log = logging.getLogger(__name__)

FORMATS = (".txt", ".jsonl", ".json", ".csv", ".tsv")
HASH_WHOLE_MAX = 256 * 2**20  # files up to this size are hashed whole for the fingerprint
HASH_PART = 16 * 2**20  # larger ones: this much of their start and of their end, and the size
COUNT_MAX = 64 * 2**20  # files up to this size are counted first (a total for the progress bar)
JSON_MAX = 512 * 2**20  # a .json list is read whole: larger files must be .jsonl
_SNIFF = 8192

@dataclass
class TextSource:
    """A dataset as a stream of records. `records(start)` yields (id, text or None) for every
    record from index `start` (None: a null value); `fingerprint` identifies the content
    cheaply (resume checks, the accumulator's metadata); `total` is the number of non-blank
    texts when cheap to know (a `datasets` split: its rows, blank ones included; None when
    unknown)."""
    name: str  # as the user gave it
    kind: str  # txt | jsonl | json | csv | tsv | datasets | builtin
    fingerprint: str
    records: Callable[[int], Iterator[tuple[int, str | None]]] = field(repr=False)
    column: str | None = None
    total: int | None = None

    def texts(self, start: int = 0, limit: int | None = None) -> Iterator[tuple[int, str]]:
        """The non-blank texts (id, text) from record `start`, at most `limit` of them; a
        UserError when a source read from its start holds no text at all."""
        n = 0
        for rid, text in self.records(start):
            if limit is not None and n >= limit:
                return
            if text is None or not text.strip():
                continue
            n += 1
            yield rid, check_text(text, f"Text {rid} of {self.name}")
        if n == 0 and start == 0:
            raise UserError(f"Every text in {self.name} is empty: nothing to analyse.")


def read_texts(source: str, split: str | None = None, column: str | None = None,
               limit: int | None = None) -> Iterator[tuple[int, str]]:
    """The non-blank texts (id, text) of a source, streamed (see `open_source`; the ids are
    the records' indices, the module docstring says how they count)."""
    return open_source(source, split, column, count=False).texts(limit=limit)


def open_source(source: str, split: str | None = None, column: str | None = None,
                count: bool = True, limit: int | None = None) -> TextSource:
    """A TextSource for: a .txt (one text per line), .jsonl / .json (field `column`, default
    "text" or the only field; a .json may be a list of objects or of strings), .csv / .tsv
    (`column`, default "text" or the only column), a `datasets` folder (save_to_disk) or a
    HuggingFace dataset id ("org/name" or "org/name:config"; `split`, default "train" or the only
    one), or a bundled name (`corpus`, `stdlib-docstrings`). An existing path wins over a
    bundled name. Bad input: one UserError saying what to do. With `count`, small files are
    read once more to count their texts (at most `limit`) for `total`."""
    source = str(source or "").strip()
    if not source:
        raise UserError("No dataset given: pass a file (.txt, .jsonl, .json, .csv, .tsv), a "
                        f"HuggingFace dataset id or folder, or one of {', '.join(builtin.NAMES)}.")
    path = Path(source).expanduser()
    if path.is_dir():
        src = _open_datasets(source, split, column)
    elif path.is_file():
        src = _open_file(path, source, column)
    elif source in builtin.NAMES:
        src = _open_builtin(source)
    elif path.suffix.lower() in FORMATS or source.startswith((".", "~", os.sep)):
        raise UserError(f"No such file: {source}")
    elif _looks_like_hub_id(source):
        src = _open_datasets(source, split, column)
    else:
        raise UserError(f"'{source}' is not a file, a folder, a bundled dataset "
                        f"({', '.join(builtin.NAMES)}) or a HuggingFace dataset id.")
    if count and src.total is None and _countable(src):
        src.total = sum(1 for _ in src.texts(limit=limit))
    elif src.total is not None and limit is not None:
        src.total = min(src.total, limit)
    return src


def _countable(src: TextSource) -> bool:
    if src.kind == "builtin":
        return True
    path = Path(src.name).expanduser()
    return src.kind != "datasets" and path.is_file() and path.stat().st_size <= COUNT_MAX


def _looks_like_hub_id(name: str) -> bool:
    repo = name.split(":", 1)[0]
    parts = repo.split("/")
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return 1 <= len(parts) <= 2 and all(p and set(p) <= ok and ".." not in p for p in parts)


def _open_file(path: Path, name: str, column: str | None) -> TextSource:
    kind = path.suffix.lower().lstrip(".")
    if f".{kind}" not in FORMATS:
        raise UserError(f"{name}: unknown dataset format '{path.suffix}'; use .txt (one text per "
                        "line), .jsonl, .json, .csv or .tsv.")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{name} is empty: nothing to analyse.")
    with path.open("rb") as fh:
        head = fh.read(_SNIFF)
    if b"\x00" in head:
        raise UserError(f"{name} looks like a binary file (it holds NUL bytes), not UTF-8 text; "
                        "give a text file, or save it as UTF-8 (UTF-16 files hold NUL bytes too).")
    fp = f"{kind}:{path.name}:{_file_hash(path, size)}"
    if kind == "txt":
        return TextSource(name, kind, fp, lambda start: _line_records(path, name, start))
    if kind == "jsonl":
        col = [column]
        return TextSource(name, kind, fp, lambda start: _jsonl_records(path, name, col, start), column)
    if kind == "json":
        return _open_json(path, name, column, fp, size)
    return _open_csv(path, name, column, fp, "\t" if kind == "tsv" else ",")


def _file_hash(path: Path, size: int) -> str:
    """size and sha256 of the whole file (up to HASH_WHOLE_MAX) or of its first and last
    HASH_PART bytes: a copy of the file matches, an edit that changes its size or its hashed
    bytes does not (a same-size edit in the unhashed middle of a huge file is not seen)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= HASH_WHOLE_MAX:
            for chunk in iter(lambda: fh.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(fh.read(HASH_PART))
            fh.seek(size - HASH_PART)
            h.update(fh.read(HASH_PART))
    part = "" if size <= HASH_WHOLE_MAX else "-ends"
    return f"size={size}:sha256{part}={h.hexdigest()[:16]}"


def _decode(raw: bytes, name: str, line: int) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} line {line} is not valid UTF-8 (byte {exc.start + 1} of the line); "
                        "save the file as UTF-8.") from None


def _line_records(path: Path, name: str, start: int, skip: int = 0) -> Iterator[tuple[int, str]]:
    """Every line as a record (its terminator removed), after `skip` header lines."""
    with path.open("rb") as fh:
        for i, raw in enumerate(fh):
            rid = i - skip
            if rid >= start:
                yield rid, _decode(raw, name, i + 1)


def _jsonl_records(path: Path, name: str, column: list, start: int) -> Iterator[tuple[int, str | None]]:
    """`column` is a one-item list: None until the first record decides the default."""
    for rid, line in _line_records(path, name, start):
        if not line.strip():
            yield rid, None
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{name} line {rid + 1} is not JSON ({exc}); a .jsonl file holds one "
                            "JSON object per line.") from None
        yield rid, _field(obj, column, f"{name} line {rid + 1}")


def _field(obj, column: list, where: str) -> str | None:
    """The text of one JSON record: a string, or the `column[0]` field of an object."""
    if isinstance(obj, str) or obj is None:
        return obj
    if not isinstance(obj, dict):
        raise UserError(f"{where} is a JSON {type(obj).__name__}; expected an object with a text "
                        "field or a string.")
    if column[0] is None:
        column[0] = _pick_column(None, list(obj), where)
    if column[0] not in obj:
        raise UserError(f"{where} has no field '{column[0]}' (its fields: {', '.join(map(str, obj))}); "
                        "choose one with --column.")
    return _text_value(obj[column[0]], where, column[0])


def _text_value(value, where: str, column: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UserError(f"{where}: field '{column}' is a {type(value).__name__}, not text; choose a "
                    "text field with --column.")


def _pick_column(column: str | None, columns: list[str], where: str) -> str:
    """`column` when it exists; by default "text", else the only column."""
    if column is not None:
        if column not in columns:
            raise UserError(f"{where} has no column '{column}'; its columns are: "
                            f"{', '.join(map(str, columns))}.")
        return column
    if "text" in columns:
        return "text"
    if len(columns) == 1:
        return columns[0]
    raise UserError(f"{where} has no column 'text' and several others "
                    f"({', '.join(map(str, columns))}); choose one with --column.")


def _open_json(path: Path, name: str, column: str | None, fp: str, size: int) -> TextSource:
    if size > JSON_MAX:
        raise UserError(f"{name} is {size / 2**20:.0f} MB: a .json file is read whole; write it as "
                        ".jsonl (one object per line) to stream it.")
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{name} is not valid UTF-8 (byte {exc.start + 1}); save it as UTF-8.") from None
    except ValueError as exc:
        raise UserError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise UserError(f"{name} holds a JSON {type(data).__name__}; expected a list of objects "
                        "or of strings (or use .jsonl).")
    col = [column]
    if data:
        _field(data[0], col, f"{name} item 0")  # the column is checked before any model runs

    def records(start: int) -> Iterator[tuple[int, str | None]]:
        for i in range(start, len(data)):
            yield i, _field(data[i], col, f"{name} item {i}")
    return TextSource(name, "json", f"{fp}:{col[0]}", records, col[0], None)


def _open_csv(path: Path, name: str, column: str | None, fp: str, delimiter: str) -> TextSource:
    csv.field_size_limit(2**31 - 1)  # one text may be long (the default limit is 128 KiB)

    def rows() -> Iterator[list[str]]:
        with path.open("rb") as fh:
            wrap = io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")
            try:
                yield from csv.reader(wrap, delimiter=delimiter)
            except UnicodeDecodeError as exc:
                raise UserError(f"{name} is not valid UTF-8 (byte {exc.start + 1} of a block "
                                "near where reading stopped); save it as UTF-8.") from None
            except csv.Error as exc:
                raise UserError(f"{name} is not a readable {'TSV' if delimiter == chr(9) else 'CSV'} "
                                f"file: {exc}") from None
    header = next(rows(), None)
    if not header:
        raise UserError(f"{name} has no header row: the first line must name the columns.")
    col = _pick_column(column, header, name)
    index = header.index(col)

    def records(start: int) -> Iterator[tuple[int, str | None]]:
        it = rows()
        next(it)
        for rid, row in enumerate(it):
            if rid >= start:
                yield rid, row[index] if index < len(row) else None
    return TextSource(name, path.suffix.lower().lstrip("."), f"{fp}:{col}", records, col)


def _open_builtin(name: str) -> TextSource:
    path = builtin.path_of(name)
    skip = builtin.header_lines(name)
    return TextSource(name, "builtin", builtin.fingerprint(name),
                      lambda start: _line_records(path, name, start, skip), None, builtin.count(name))


def _open_datasets(source: str, split: str | None, column: str | None) -> TextSource:
    """A `datasets` folder (save_to_disk) or hub id, read from the local cache or the hub."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"Reading '{source}' needs the HuggingFace `datasets` package, which is not "
                        "installed: pip install datasets (or give a .txt/.jsonl/.csv file).") from None
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
        else:
            repo, _, config = source.partition(":")
            ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types; the user needs one line
        raise _datasets_error(source, path.is_dir(), exc) from None
    ds = _pick_split(ds, split, source)
    col = _pick_column(column, list(ds.column_names), f"The dataset '{source}'")
    ds = ds.select_columns([col])
    fp = f"datasets:{ds._fingerprint}:{col}:rows={len(ds)}"

    def records(start: int) -> Iterator[tuple[int, str | None]]:
        for lo in range(start, len(ds), 1000):
            for k, v in enumerate(ds[lo:lo + 1000][col]):
                yield lo + k, _text_value(v, f"Row {lo + k} of '{source}'", col)
    if len(ds) == 0:
        raise UserError(f"The dataset '{source}' is empty: nothing to analyse.")
    return TextSource(source, "datasets", fp, records, col, len(ds))


def _datasets_error(source: str, folder: bool, exc: Exception) -> UserError:
    from models.registry import offline

    msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if folder:
        return UserError(f"{source} is a folder but not a saved `datasets` dataset ({msg}).")
    if offline():
        return UserError(f"'{source}' is no local file or folder, and as a HuggingFace dataset id it is not "
                         "in the local HuggingFace cache and HF_HUB_OFFLINE is set, so it cannot be "
                         "downloaded: fetch it once online, or give a local file.")
    return UserError(f"Could not load the dataset '{source}': {msg}")


def _pick_split(ds, split: str | None, source: str):
    if not hasattr(ds, "keys"):  # a single split already
        return ds
    names = list(ds.keys())
    if split is None:
        split = "train" if "train" in names else names[0] if len(names) == 1 else None
        if split is None:
            raise UserError(f"The dataset '{source}' has the splits {', '.join(names)}; choose one "
                            "with --split.")
    if split not in names:
        raise UserError(f"The dataset '{source}' has no split '{split}'; its splits are: {', '.join(names)}.")
    return ds[split]
