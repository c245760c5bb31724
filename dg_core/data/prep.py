"""Stage ``prep``: load or generate a task dataset, validate, normalise, deduplicate, split and publish it.

    dguard prep source=synthetic task=synthetic_math n=4000 task_options='{terms: 2}'
    dguard prep source=data/gsm8k_test.jsonl format=gsm8k output=s3://bucket/datasets/gsm8k

Malformed rows are counted and reported with their reason (row number and field; the first few are kept in
``dataset.json``), never silently dropped, and the stage fails when they exceed ``max_rejected_fraction``.
Splits are decided by a hash of (seed, example id), so an example keeps its split across runs and when rows are
added. The same inputs give a byte-identical artifact (``dataset.json`` + one JSONL per split).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.config import StageConfig, option
from dg_core.data.adapters import ADAPTERS, detect_format, get_adapter
from dg_core.data.artifact import FORMAT_VERSION, write_manifest
from dg_core.data.choice import normalize_text
from dg_core.data.example import Example, write_jsonl
from dg_core.data.sources import BadRow, read_source
from dg_core.data.tasks import RowError, Task, get_task
from dg_core.errors import DGError

log = logging.getLogger(__name__)

SHOWN = 20  # rejected / duplicate rows listed in dataset.json (all are counted)


@dataclass
class Config(StageConfig):
    source: str = option(
        "synthetic",
        "'synthetic' (generate with the task), a local JSONL/JSON/Parquet/Arrow file, an s3:// or file:// URI "
        "(a file or an artifact holding one), or a hub dataset id (online only).",
    )
    format: str = option("auto", "Source layout (adapter).", choices=("auto", *ADAPTERS))
    task: str = option("", "Task that scores the data (default: synthetic_math, or the format's task).")
    task_options: dict = option({}, "Options of the task (e.g. synthetic_math knobs, reward_model for open_ended).")
    n: int = option(2000, "Synthetic only: number of examples to generate.", ge=1)
    limit: int = option(0, "Read at most this many source rows (0: all).", ge=0)
    splits: dict = option({"train": 0.8, "validation": 0.1, "test": 0.1}, "Split name -> fraction (sum 1).")
    seed: int = option(0, "Seed for generation and the split assignment.")
    max_rejected_fraction: float = option(0.05, "Fail when more than this share of rows is malformed.", ge=0, le=1)
    dedupe: bool = option(True, "Drop repeated prompts (same normalised text and options), keeping the first.")
    output: str = option("", "Artifact URI (default: <store root>/datasets/<name>).")
    name: str = option("", "Dataset name for the default output URI (default: task name, or the source's stem).")
    hub_split: str = option("train", "Hub sources: which split to read.")
    hub_config: str = option("", "Hub sources: dataset config name (e.g. 'main' for gsm8k).")
    revision: str = option("", "Hub sources: revision (commit or tag) to pin.")
    data_file: str = option("", "Artifact sources holding several files: which one to read.")

    def check(self) -> None:
        if not self.splits:
            raise DGError("config field 'splits': empty, expected e.g. {train: 0.9, test: 0.1}")
        for k, v in self.splits.items():
            if not isinstance(k, str) or not k.replace("_", "").replace("-", "").isalnum():
                raise DGError(f"config field 'splits': split name {k!r}, expected letters, digits, '_' or '-'")
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not 0 <= v <= 1:
                raise DGError(f"config field 'splits.{k}': got {v!r}, expected a fraction in [0, 1]")
        total = sum(self.splits.values())
        if not abs(total - 1.0) <= 1e-6:
            raise DGError(f"config field 'splits': fractions sum to {total:g}, expected 1")
        if self.source == "synthetic" and self.format != "auto":
            raise DGError("config field 'format': synthetic sources have no format, leave it 'auto'")


def _norm(text: str) -> str:
    """NFC, Unix newlines, no trailing spaces: the same text always gives the same bytes and dedupe key."""
    s = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in s.split("\n")).strip()


def normalize(ex: Example) -> Example:
    return replace(
        ex,
        id=ex.id.strip(),
        prompt=_norm(ex.prompt),
        reference=_norm(ex.reference),
        answer=_norm(ex.answer),
        choices=[_norm(c) for c in ex.choices],
    )


def assign_split(example_id: str, seed: int, splits: dict[str, float]) -> str:
    """Split of an example: a hash of (seed, id) mapped onto the cumulative fractions (stable across runs).

    The fractions are laid out in sorted name order, not the mapping's: KFP hands a component its dict options
    in another key order than the YAML (a protobuf Struct has none), and the same fractions must give the same
    split whichever way they arrive."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{example_id}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    names = sorted(splits)
    for name in names:
        acc += splits[name]
        if u < acc:
            return name
    return names[-1]


def _default_task(cfg: Config, adapter_task: str | None) -> str:
    if cfg.task:
        return cfg.task
    return adapter_task or "synthetic_math"


def _load_rows(cfg: Config) -> tuple[list[tuple[int, Example | None, str, str]], Task, dict[str, Any], str, str]:
    """(row number, example or None, field, reason) per source row; the task; provenance; where; format."""
    if cfg.source == "synthetic":
        task = get_task(_default_task(cfg, None), **cfg.task_options)
        examples = task.generate(cfg.n, cfg.seed)
        digest = hashlib.sha256("\n".join(e.to_json() for e in examples).encode()).hexdigest()
        info = {"kind": "synthetic", "location": "synthetic", "n": cfg.n, "sha256": digest}
        return [(i + 1, e, "", "") for i, e in enumerate(examples)], task, info, f"synthetic {task.name}", "synthetic"
    src = read_source(
        cfg.source, split=cfg.hub_split, config=cfg.hub_config, revision=cfg.revision, data_file=cfg.data_file
    )
    rows = src.rows[: cfg.limit] if cfg.limit else src.rows
    if not rows:
        raise DGError(f"{src.where}: no rows, expected at least one")
    if not any(isinstance(r, dict) for r in rows):
        first = next((i, r) for i, r in enumerate(rows, start=1) if isinstance(r, BadRow))
        raise DGError(
            f"{src.where}: none of {len(rows)} rows could be read (row {first[0]}: {first[1].reason}); "
            "expected one JSON object per line in UTF-8"
        )
    adapter = (
        get_adapter(cfg.format)
        if cfg.format != "auto"
        else detect_format([r for r in rows if isinstance(r, dict)] or [{}], src.where)
    )
    task = get_task(_default_task(cfg, adapter.task), **cfg.task_options)
    out: list[tuple[int, Example | None, str, str]] = []
    for i, row in enumerate(rows, start=1):
        if isinstance(row, BadRow):
            out.append((i, None, "", row.reason))
            continue
        try:
            ex = normalize(adapter.fn(row))
            task.validate(ex)
        except RowError as e:
            out.append((i, None, e.field, e.reason))
            continue
        out.append((i, ex, "", ""))
    info = {**src.info, "format": adapter.name, "rows": len(rows)}
    return out, task, info, src.where, adapter.name


def prepare(cfg: Config, directory: Path) -> dict[str, Any]:
    """Build the artifact's files in ``directory``; returns the dataset manifest (also written there)."""
    rows, task, info, where, fmt = _load_rows(cfg)
    rejected = [{"row": i, "field": f, "reason": r} for i, ex, f, r in rows if ex is None]
    frac = len(rejected) / len(rows)
    if rejected and frac > cfg.max_rejected_fraction:
        first = rejected[0]
        field = f" field '{first['field']}'" if first["field"] else ""
        raise DGError(
            f"{where}: {len(rejected)} of {len(rows)} rows malformed ({frac:.1%} > max_rejected_fraction "
            f"{cfg.max_rejected_fraction:g}); first: row {first['row']}{field}: {first['reason']}"
        )
    kept: list[Example] = []
    duplicates: list[dict[str, Any]] = []
    by_key: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for i, ex, _, _ in rows:
        if ex is None:
            continue
        key = normalize_text(ex.prompt) + "\x00" + "\x00".join(normalize_text(c) for c in ex.choices)
        if cfg.dedupe and key in by_key:
            duplicates.append({"row": i, "id": ex.id, "duplicate_of": by_key[key]})
            continue
        if ex.id in by_id:
            rejected.append({"row": i, "field": "id", "reason": f"id {ex.id!r} repeats with a different prompt"})
            continue
        by_key.setdefault(key, ex.id)
        by_id[ex.id] = key
        kept.append(ex)
    if not kept:
        raise DGError(f"{where}: no usable rows left after validation and deduplication")
    if len(rejected) / len(rows) > cfg.max_rejected_fraction:
        first = rejected[0]
        raise DGError(
            f"{where}: {len(rejected)} of {len(rows)} rows rejected (> max_rejected_fraction "
            f"{cfg.max_rejected_fraction:g}); first: row {first['row']} field '{first['field']}': {first['reason']}"
        )
    parts: dict[str, list[Example]] = {name: [] for name in sorted(cfg.splits)}
    for ex in kept:
        parts[assign_split(ex.id, cfg.seed, cfg.splits)].append(ex)
    splits_meta = {}
    for name, exs in parts.items():
        fname = f"{name}.jsonl"
        write_jsonl(directory / fname, exs)
        splits_meta[name] = {"file": fname, "count": len(exs)}
    manifest = {
        "format_version": FORMAT_VERSION,
        "task": task.spec(),
        "source": info,
        "format": fmt,
        "seed": cfg.seed,
        "split_fractions": {k: cfg.splits[k] for k in sorted(cfg.splits)},
        "splits": splits_meta,
        "counts": {"rows": len(rows), "kept": len(kept), "rejected": len(rejected), "duplicates": len(duplicates)},
        "rejected": rejected[:SHOWN],
        "duplicates": duplicates[:SHOWN],
    }
    write_manifest(directory, manifest)
    return manifest


def _default_out(cfg: Config, task_name: str) -> str:

    name = cfg.name
    if not name:
        if cfg.source == "synthetic":
            name = f"{task_name}-s{cfg.seed}-n{cfg.n}"
        else:
            name = Path(cfg.source.rstrip("/")).name.split(".")[0] or task_name
    return store.join(store.default_root(), "datasets", name)


def run(cfg: Config) -> dict[str, Any]:
    """Prepare and publish; returns the artifact URI, counts per split and rejected/duplicate counts."""

    with tempfile.TemporaryDirectory(prefix="dg-prep-") as tmp:
        manifest = prepare(cfg, Path(tmp))
        uri = cfg.output or _default_out(cfg, manifest["task"]["name"])
        counts = {k: v["count"] for k, v in manifest["splits"].items()}
        store.publish(
            tmp,
            uri,
            metadata={"kind": "dataset", "task": manifest["task"], "splits": counts, "source": manifest["source"]},
        )
    log.info("prep: published %s (%s)", uri, counts)
    return {
        "uri": uri,
        "task": manifest["task"]["name"],
        "splits": counts,
        "rejected": manifest["counts"]["rejected"],
        "duplicates": manifest["counts"]["duplicates"],
        "source_sha256": manifest["source"].get("sha256", ""),
    }
