"""The calibration card: what was done to a teacher and what it did, as JSON (machines) and Markdown (people).

Holds the knob settings (η, β, proxies, guards), provenance (sha256 of the dataset, teacher and proxy artifacts),
the teacher's metrics before and after, the training trajectory summary, and the gate's verdict. ``dguard
publish`` copies it next to a released model (it reads ``card.json`` / ``card.md`` from the card artifact).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.knob import direction_of
from dg_core.models.resolve import to_uri
from dg_core.utils import json_safe

CARD_JSON = "card.json"
CARD_MD = "card.md"


def artifact_digest(ref: str) -> str | None:
    """The content identity of a model or dataset (:func:`dg_core.store.files_sha`): a published artifact's
    from its manifest, a ``zoo:`` member's from its store artifact, a local directory's from its files hashed
    now, so the same files give the same digest wherever they live (None for a hub id or unpublished URI)."""
    from pathlib import Path

    try:
        ref = to_uri(ref)
        d = Path(ref).expanduser()
        if store.is_store_uri(ref) or (d / store.MANIFEST).is_file():
            return store.content_sha(ref) if store.is_published(ref) else None
        if not d.is_dir():
            return None
        return store.files_sha(store.build_manifest(d)["files"])
    except Exception:  # provenance is best effort: the reference alone is still recorded
        return None


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
    return json_safe(
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


def model_readme(card: dict[str, Any]) -> str:
    """An HF model card (``README.md``) for the hardened model, written from the calibration card: what it was
    calibrated from, for which direction, with what effect, so a released model explains itself on a model hub."""
    teacher = card["teacher"]["uri"]
    hub_id = (
        teacher.count("/") == 1 and not teacher.startswith((".", "/", "~")) and ":" not in teacher
    )  # owner/name: a hub model the metadata may link to
    front = ["---", "library_name: transformers", "tags:", "- distillation-guards", "- calibrated",
             f"- {card['direction'].split(' ')[0]}"]  # fmt: skip
    if hub_id:
        front.append(f"base_model: {teacher}")
    front.append("---")
    after = card["teacher_metrics"].get("after") or {}
    before = card["teacher_metrics"]["before"]
    intro = [
        "",
        f"This model is `{teacher}` calibrated with distillation-guards: eta = {card['eta']:+g} "
        f"({card['direction']}), LoRA merged into the weights. Greedy held-out accuracy "
        f"{_fmt(before.get('greedy_accuracy'))} before, {_fmt(after.get('greedy_accuracy'))} after.",
        "",
    ]
    body = card_markdown(card).replace("# Calibration card", "## Calibration card", 1)
    return "\n".join(front + intro) + "\n" + body


def write_card(card: dict[str, Any], directory: str | Path) -> None:
    """Write ``card.json`` and ``card.md`` into ``directory``."""
    d = Path(directory)
    (d / CARD_JSON).write_text(json.dumps(card, indent=2, sort_keys=True, allow_nan=False) + "\n")
    (d / CARD_MD).write_text(card_markdown(card))
