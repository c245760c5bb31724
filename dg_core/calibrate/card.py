"""The calibration card: what was done to a teacher and what it did, as JSON (machines) and Markdown (people).

Holds the knob settings (η, β, proxies, guards), provenance (sha256 of the dataset, teacher and proxy artifacts),
the teacher's metrics before and after, the training trajectory summary, and the gate's verdict. ``dguard
publish`` copies it next to a released model (it reads ``card.json`` / ``card.md`` from the card artifact).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from dg_core.knob import direction_of

CARD_JSON = "card.json"
CARD_MD = "card.md"


def artifact_digest(uri: str) -> str | None:
    """A content digest of a published artifact: sha256 over its manifest's file digests (None if unpublished)."""
    from dg_core import store

    try:
        if not store.is_published(uri):
            return None
        files = store.read_manifest(uri).get("files", {})
    except Exception:  # a hub id or a plain local dir has no manifest: provenance is then the reference alone
        return None
    body = json.dumps({k: v.get("sha256") for k, v in sorted(files.items())}, sort_keys=True).encode()
    return hashlib.sha256(body).hexdigest()


def _clean(x: Any) -> Any:
    """JSON without NaN/inf (they become null), so the card parses everywhere."""
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def build_card(
    *,
    settings: dict[str, Any],
    teacher: str,
    proxies: list[str],
    dataset: str,
    before: dict[str, Any],
    after: dict[str, Any],
    training: dict[str, Any],
    status: str,
    reason: str,
    outputs: dict[str, str | None],
) -> dict[str, Any]:
    """The card's JSON body."""
    eta = float(settings.get("eta", 0.0))
    direction = direction_of(eta)
    return _clean(
        {
            "kind": "calibration-card",
            "version": 1,
            "status": status,
            "reason": reason,
            "direction": direction,
            "eta": eta,
            "beta": settings.get("beta"),
            "teacher": {"uri": teacher, "sha256": artifact_digest(teacher)},
            "proxies": [{"uri": p, "sha256": artifact_digest(p)} for p in proxies],
            "dataset": {"uri": dataset, "sha256": artifact_digest(dataset)},
            "settings": settings,
            "teacher_metrics": {"before": before, "after": after},
            "training": training,
            "outputs": outputs,
        }
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def card_markdown(card: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`build_card`'s output."""
    before, after = card["teacher_metrics"]["before"], card["teacher_metrics"]["after"] or {}
    keys = sorted(set(before) | set(after))
    lines = [
        "# Calibration card",
        "",
        f"**Status: {card['status']}** — {card['reason']}",
        "",
        f"- direction: {card['direction']} (eta = {card['eta']:+g}, beta = {_fmt(card['beta'])})",
        f"- teacher: `{card['teacher']['uri']}` (sha256 `{(card['teacher']['sha256'] or '-')[:16]}`)",
    ]
    for p in card["proxies"]:
        lines.append(f"- proxy: `{p['uri']}` (sha256 `{(p['sha256'] or '-')[:16]}`)")
    lines += [
        f"- dataset: `{card['dataset']['uri']}` (sha256 `{(card['dataset']['sha256'] or '-')[:16]}`)",
        "",
        "## Teacher before and after",
        "",
        "| metric | before | after |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_fmt(before.get(k))} | {_fmt(after.get(k))} |" for k in keys]
    tr = card["training"]
    lines += ["", "## Training", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in tr.items() if not isinstance(v, (list, dict))]
    lines += ["", "## Outputs", ""]
    lines += [f"- {k}: `{v}`" if v else f"- {k}: not published" for k, v in card["outputs"].items()]
    s = card["settings"]
    lines += ["", "## Settings", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(s[k])} |" for k in sorted(s)]
    return "\n".join(lines) + "\n"


def write_card(card: dict[str, Any], directory: str | Path) -> None:
    """Write ``card.json`` and ``card.md`` into ``directory``."""
    d = Path(directory)
    (d / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True, allow_nan=False) + "\n")
    (d / CARD_MD).write_text(card_markdown(card))
