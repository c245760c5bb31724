"""The row type every part of the pipeline exchanges, and the score a task gives a response.

An :class:`Example` is what ``prep`` publishes (one JSON object per line, keys sorted so the same rows give the
same bytes) and what distillation, evaluation and calibration read back with ``load_split``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dg_core.errors import DGError


@dataclass(frozen=True)
class Score:
    """A task's verdict on one response: ``reward`` in [0, 1], the answer it parsed (or None) and why."""

    reward: float
    parsed: str | None
    reason: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.reward <= 1.0:
            raise ValueError(f"Score.reward must be in [0, 1], got {self.reward}")

    @property
    def correct(self) -> bool:
        """Whether the response counts as right (accuracy uses this; partial rewards count only when full)."""
        return self.reward >= 1.0


@dataclass
class Example:
    """One task instance.

    - ``prompt``: the user-facing question text (no chat template; ``Task.prompt`` adds that).
    - ``reference``: one good response (what SFT trains on); may be empty for eval-only data.
    - ``answer``: the gold answer the scorer checks (a number, an option letter, a short text, or empty for
      open-ended instructions scored by constraints or a reward model).
    - ``choices``: option texts for multiple choice (letters A, B, ... in order), else empty.
    - ``constraints``: verifiable instruction constraints (see ``dg_core.data.constraints``), else empty.
    - ``meta``: anything else (source fields, category, all reference styles under ``references``).
    """

    id: str
    prompt: str
    reference: str = ""
    answer: str = ""
    choices: list[str] = field(default_factory=list)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Example:
        """Rebuild from a published row; unknown keys go to ``meta`` so newer writers stay readable."""
        if not isinstance(d, dict):
            raise DGError(f"example row: expected a JSON object, got {type(d).__name__}")
        known = {"id", "prompt", "reference", "answer", "choices", "constraints", "meta"}
        for key in ("id", "prompt"):
            if not isinstance(d.get(key), str):
                raise DGError(f"example row: field '{key}' missing or not a string")
        meta = dict(d.get("meta") or {})
        meta.update({k: v for k, v in d.items() if k not in known})
        return cls(
            id=d["id"],
            prompt=d["prompt"],
            reference=str(d.get("reference") or ""),
            answer=str(d.get("answer") if d.get("answer") is not None else ""),
            choices=[str(c) for c in d.get("choices") or []],
            constraints=[dict(c) for c in d.get("constraints") or []],
            meta=meta,
        )

    def to_json(self) -> str:
        """Canonical one-line JSON (sorted keys, no NaN): byte-identical for identical rows."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, allow_nan=False)


def content_id(*parts: Any) -> str:
    """A short stable id from content, so the same row gets the same id (and split) in every run."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return h[:16]


def write_jsonl(path: str | Path, examples: Iterable[Example]) -> int:
    """Write examples as canonical JSONL; returns the row count."""
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for ex in examples:
            f.write(ex.to_json())
            f.write("\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[Example]:
    """Read a JSONL file of examples; a bad line fails naming the file and line."""
    out: list[Example] = []
    p = Path(path)
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(Example.from_dict(json.loads(line)))
            except json.JSONDecodeError as e:
                raise DGError(f"{p} line {i}: invalid JSON ({e.msg})") from None
            except DGError as e:
                raise DGError(f"{p} line {i}: {e}") from None
    return out
