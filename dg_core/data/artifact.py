"""Reading (and writing) a prepared dataset artifact.

Layout of a dataset artifact (a published store directory)::

    dataset.json        manifest: task (name + options), source, revision/hash, seed, counts per split,
                        rejected and duplicate rows (first few shown)
    <split>.jsonl       one canonical JSON object per line, see :class:`dg_core.data.Example`

Everything a downstream stage needs is ``load_split(uri, "train")`` and ``task_of(uri)``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from dg_core import store
from dg_core.data.example import Example, read_jsonl
from dg_core.data.tasks import Task, get_task
from dg_core.errors import DGError

MANIFEST = "dataset.json"
FORMAT_VERSION = 1
C = TypeVar("C")


def local_dir(dataset_uri: str) -> Path:
    """A verified local directory holding the artifact at ``dataset_uri`` (s3://, file:// or a local path)."""
    parsed = urlparse(str(dataset_uri))
    if parsed.scheme in ("", "file") and not re.match(r"^[a-zA-Z]:", str(dataset_uri)):
        path = Path(parsed.path if parsed.scheme == "file" else str(dataset_uri))
        if path.is_dir() and not (path / "MANIFEST.json").exists():
            # A plain directory written by hand or by tests (no store manifest): read it as is.
            return path

    return Path(store.fetch(str(dataset_uri)))


def read_dataset_manifest(dataset_uri: str) -> dict[str, Any]:
    """The ``dataset.json`` of a prepared dataset."""
    d = local_dir(dataset_uri)
    p = d / MANIFEST
    if not p.is_file():
        raise DGError(f"{dataset_uri}: no {MANIFEST}, expected a dataset artifact written by `dguard prep`")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DGError(f"{dataset_uri}/{MANIFEST}: invalid JSON ({e.msg})") from None


def load_split(dataset_uri: str, split: str) -> list[Example]:
    """The examples of one split (``train``, ``validation``, ``test``...) of a prepared dataset."""
    manifest = read_dataset_manifest(dataset_uri)
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DGError(f"{dataset_uri}: no split {split!r}, expected one of {sorted(splits)}")
    path = local_dir(dataset_uri) / splits[split]["file"]
    if not path.is_file():
        raise DGError(f"{dataset_uri}: split file {splits[split]['file']!r} is missing")
    return read_jsonl(path)


def task_of(dataset_uri: str) -> Task:
    """The task (with the options it was prepared with) that scores a prepared dataset."""
    spec = read_dataset_manifest(dataset_uri).get("task")
    if not isinstance(spec, dict) or "name" not in spec:
        raise DGError(f"{dataset_uri}/{MANIFEST}: field 'task' missing, expected {{name, options}}")
    return get_task(spec["name"], **(spec.get("options") or {}))


def with_task_budget(cfg: C) -> C:
    """``cfg`` with ``max_new_tokens = 0`` replaced by its dataset's task budget (``Task.max_new_tokens``), so a
    stage's default fits the task: hundreds of tokens for real math, a few dozen for the zoo's arithmetic."""
    if getattr(cfg, "max_new_tokens", None) != 0:
        return cfg
    return dataclasses.replace(cfg, max_new_tokens=task_of(cfg.dataset).max_new_tokens)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``dataset.json`` canonically (sorted keys, fixed indent) so equal inputs give equal bytes."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
