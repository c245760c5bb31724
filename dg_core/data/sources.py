"""Raw rows from where users keep data: a local JSONL/JSON/Parquet/Arrow file, an s3:// or file:// URI (a file, or
a published artifact holding one), or a Hugging Face hub id (only when online).

Rows come back as plain dicts numbered from 1 in file order; a line that is not valid JSON (or not UTF-8, or
nested too deeply to parse) becomes a :class:`BadRow` so prep can count and report it instead of failing on the
first typo. Every source also reports
a content hash (sha256 of the file, or the hub revision/fingerprint) for the dataset manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.errors import DGError

SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


@dataclass(frozen=True)
class BadRow:
    """A row that could not even be parsed (e.g. invalid JSON on its line)."""

    reason: str


@dataclass
class SourceRows:
    rows: list[dict[str, Any] | BadRow]
    where: str  # what error messages call the source (file name or hub id)
    info: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MAX_DEPTH = 64  # deeper JSON is not a dataset row (and would exhaust the parser's recursion)


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (a deep value must not exhaust the stack here either)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def _loads(text: str) -> Any:
    """``json.loads`` that reports too-deep nesting as a ValueError (never a RecursionError)."""
    try:
        obj = json.loads(text)
    except RecursionError:
        obj = None
    else:
        if _depth(obj) <= MAX_DEPTH:
            return obj
    raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")


def read_file(path: Path, where: str) -> list[dict[str, Any] | BadRow]:
    """Rows of one local file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: list[dict[str, Any] | BadRow] = []
        with open(path, "rb") as f:
            for raw in f:
                if not raw.strip():
                    continue
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    rows.append(BadRow(f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"))
                    continue
                try:
                    obj = _loads(line)
                except json.JSONDecodeError as e:
                    rows.append(BadRow(f"invalid JSON ({e.msg} at column {e.colno})"))
                    continue
                except ValueError as e:
                    rows.append(BadRow(str(e)))
                    continue
                rows.append(
                    obj if isinstance(obj, dict) else BadRow(f"expected a JSON object, got {type(obj).__name__}")
                )
        return rows
    if suffix == ".json":
        try:
            data = _loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DGError(f"{where}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise DGError(f"{where}: invalid JSON at line {e.lineno} ({e.msg})") from None
        except ValueError as e:
            raise DGError(f"{where}: {e}, expected an array of row objects") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DGError(f"{where}: expected a JSON array of row objects (or {{'data': [...]}})")
        return [r if isinstance(r, dict) else BadRow(f"expected a JSON object, got {type(r).__name__}") for r in data]
    if suffix in (".parquet", ".arrow"):
        import pyarrow as pa

        try:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(path)
            else:
                try:
                    with pa.memory_map(str(path)) as src:
                        table = pa.ipc.open_stream(src).read_all()  # what `datasets` writes
                except pa.ArrowInvalid:
                    with pa.memory_map(str(path)) as src:
                        table = pa.ipc.open_file(src).read_all()
        except (pa.ArrowInvalid, OSError) as e:
            raise DGError(f"{where}: not a readable {suffix[1:]} file ({str(e).splitlines()[0][:120]})") from None
        return table.to_pylist()
    raise DGError(f"{where}: unsupported file type {suffix or '(none)'!r}, expected one of {', '.join(SUFFIXES)}")


def _pick_file(d: Path, data_file: str, where: str, listed: set[str] | None = None) -> Path:
    """The data file of a folder: ``data_file`` (a relative path that stays inside it, and for a published
    artifact one its manifest lists), or its only data file. ``listed``: the manifest's files, when published."""
    if data_file:
        from pathlib import PurePosixPath

        rel = PurePosixPath(data_file.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or data_file.startswith("~"):
            raise DGError(
                f"{where}: data_file {data_file!r} leaves the artifact, expected a path inside it such as "
                "'train.jsonl' or 'data/part-0.jsonl'"
            )
        p = d / rel
        try:
            inside = p.resolve().is_relative_to(d.resolve())
        except OSError:
            inside = False
        if not inside:
            raise DGError(f"{where}: data_file {data_file!r} resolves outside the artifact (a symbolic link?)")
        if listed is not None and rel.as_posix() not in listed:
            raise DGError(f"{where}: no file {data_file!r} in the artifact's manifest")
        if not p.is_file():
            raise DGError(f"{where}: no file {data_file!r} in the artifact")
        return p
    files = sorted(
        p
        for p in d.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and p.name != "MANIFEST.json"
        and (listed is None or p.relative_to(d).as_posix() in listed)
    )
    if len(files) != 1:
        names = [str(p.relative_to(d)) for p in files]
        raise DGError(f"{where}: {len(files)} data files {names[:5]}, expected one (set data_file=)")
    return files[0]


def read_source(
    source: str, *, split: str = "train", config: str = "", revision: str = "", data_file: str = ""
) -> SourceRows:
    """Rows and provenance of ``source`` (see module docstring)."""
    if not source:
        raise DGError("source is empty: expected a file path, an s3:// or file:// URI, or a hub dataset id")
    local = Path(source[len("file://") :] if source.startswith("file://") else source).expanduser()
    if source.startswith(("s3://", "file://")) or local.exists():
        if local.is_file():
            return SourceRows(
                read_file(local, source),
                source,
                {"kind": "file", "location": source, "file": local.name, "sha256": _sha256(local)},
            )
        if source.startswith("s3://") or local.is_dir():
            if store.is_published(source):
                d = store.fetch(source)
                p = _pick_file(d, data_file, source, set(store.read_manifest(source)["files"]))
                where = f"{source}/{p.relative_to(d)}"
                return SourceRows(
                    read_file(p, where),
                    where,
                    {"kind": "artifact", "location": source, "file": str(p.relative_to(d)), "sha256": _sha256(p)},
                )
            if local.is_dir() and not source.startswith("s3://"):
                p = _pick_file(local, data_file, source)
                return SourceRows(
                    read_file(p, str(p)),
                    str(p),
                    {"kind": "file", "location": source, "file": p.name, "sha256": _sha256(p)},
                )
        st, key = store.open_store(source)
        if not st.exists(key):
            raise DGError(f"{source}: not found, expected a data file or a published artifact holding one")
        name = key.rsplit("/", 1)[-1]
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            st.get_file(key, p)
            return SourceRows(
                read_file(p, source), source, {"kind": "object", "location": source, "file": name, "sha256": _sha256(p)}
            )
    if source.startswith(("/", ".", "~")) or source.lower().endswith(SUFFIXES):
        raise DGError(f"source {source!r}: file not found")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise DGError(
            f"source {source!r}: not a local file, and hub downloads are disabled (HF_HUB_OFFLINE=1); "
            "expected a local file, an s3:// or file:// URI, or go online"
        )
    try:
        import datasets

        ds = datasets.load_dataset(source, config or None, split=split or "train", revision=revision or None)
    except Exception as e:  # noqa: BLE001 - the hub raises many types; report one line
        raise DGError(f"source {source!r}: cannot load from the hub ({type(e).__name__}: {str(e)[:160]})") from None
    info = {
        "kind": "hub",
        "location": source,
        "config": config,
        "split": split,
        "revision": revision or "default",
        "sha256": getattr(ds, "_fingerprint", ""),
    }
    return SourceRows([dict(r) for r in ds], f"{source}[{split}]", info)
