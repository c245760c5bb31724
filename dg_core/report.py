"""Stage `report`: the trade-off table (Markdown + JSON) and an HTML page with plots, from stage outputs.

Inputs are published `attack` and `evaluate` artifacts. Each attack run against an (original, calibrated)
teacher pair is one point of the trade-off: teacher retention against student transfer (worst and mean over
attacks). With several calibrations (an η sweep) the points draw the knob's curve. Plots are matplotlib PNGs
embedded as base64, so the HTML is one self-contained file that renders in the Kubeflow UI.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.config import StageConfig, option
from dg_core.errors import DGError


def _label(attack: dict[str, Any], uri: str) -> str:
    """η of the calibrated teacher when its manifest records one, else the artifact's last path part."""
    cal = (attack.get("config") or {}).get("calibrated") or ""
    if cal:
        try:
            meta = store.read_manifest(cal).get("metadata", {})
            for key in ("eta", "η"):
                if key in meta:
                    return f"eta={meta[key]}"
        except DGError:
            pass
    return uri.rstrip("/").rsplit("/", 1)[-1]


def tradeoff_rows(attacks: dict[str, dict[str, Any]], direction: str = "undistillable") -> list[dict[str, Any]]:
    """One row per attack artifact: retention, per-attack transfer, min/max/mean transfer and the worst case
    for ``direction`` (the highest transfer when making a teacher undistillable, the lowest otherwise)."""
    rows = []
    for uri, a in attacks.items():
        transfers = {r["attack"]: r["transfer"] for r in a["attacks"] if "transfer" in r}
        t = a["teachers"]
        rows.append(
            {
                "label": _label(a, uri),
                "uri": uri,
                "teacher_original": t["original"]["accuracy"],
                "teacher_calibrated": t.get("calibrated", {}).get("accuracy"),
                "retention": a.get("retention"),
                "transfer": transfers,
                "worst_transfer": (max if direction == "undistillable" else min)(transfers.values())
                if transfers
                else None,
                "min_transfer": min(transfers.values()) if transfers else None,
                "max_transfer": max(transfers.values()) if transfers else None,
                "mean_transfer": sum(transfers.values()) / len(transfers) if transfers else None,
            }
        )
    return rows


def _fmt(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def tradeoff_markdown(rows: list[dict[str, Any]], evals: dict[str, dict[str, Any]]) -> str:
    lines = ["# Distillability trade-off", ""]
    if rows:
        lines += [
            "| calibration | teacher orig | teacher cal | retention | transfer (worst) | transfer (min) | "
            "transfer (max) | transfer (mean) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['label']} | {_fmt(r['teacher_original'])} | {_fmt(r['teacher_calibrated'])} | "
                f"{_fmt(r['retention'])} | {_fmt(r['worst_transfer'])} | {_fmt(r['min_transfer'])} | "
                f"{_fmt(r['max_transfer'])} | "
                f"{_fmt(r['mean_transfer'])} |"
            )
        lines.append("")
    if evals:
        lines += ["## Evaluations", "", "| model | n | greedy | sampled |", "|---|---|---|---|"]
        for uri, e in evals.items():
            lines.append(
                f"| {e.get('model', uri)} | {e.get('n')} | {_fmt(e.get('greedy_accuracy'))} | "
                f"{_fmt(e.get('sampled_accuracy'))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plots(rows: list[dict[str, Any]], attacks: dict[str, dict[str, Any]], evals: dict[str, dict[str, Any]]) -> dict:
    """Named base64 PNGs: per-attack student accuracy bars, the retention/transfer trade-off, evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    for uri, a in attacks.items():
        names = [r["attack"] for r in a["attacks"]]
        fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(names)), 3.2))
        series = [("floor", None)] + [(role, role) for role in ("original", "calibrated") if role in a["teachers"]]
        width = 0.8 / len(series)
        for j, (title, role) in enumerate(series):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
            if role is None:
                ax.bar(xs, [r["floor"] for r in a["attacks"]], width, label="undistilled floor", color="#bbbbbb")
            else:
                ax.bar(
                    xs,
                    [r[role]["mean"] for r in a["attacks"]],
                    width,
                    yerr=[r[role]["std"] for r in a["attacks"]],
                    label=f"← {title} teacher",
                    capsize=3,
                )
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylabel("student accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"Attack suite: {_label(a, uri)}")
        ax.legend(fontsize=8)
        out[f"attack:{uri}"] = _png(fig)
    pts = [r for r in rows if r["retention"] is not None and r["worst_transfer"] is not None]
    if pts:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter([r["retention"] for r in pts], [r["worst_transfer"] for r in pts], label="worst attack")
        ax.scatter([r["retention"] for r in pts], [r["mean_transfer"] for r in pts], marker="x", label="mean transfer")
        for r in pts:
            ax.annotate(
                r["label"], (r["retention"], r["max_transfer"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("teacher retention")
        ax.set_ylabel("student transfer")
        ax.set_title("Distillability trade-off")
        ax.legend(fontsize=8)
        out["tradeoff"] = _png(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(evals)), 3.2))
        names = [str(e.get("model", u)).rstrip("/").rsplit("/", 1)[-1] for u, e in evals.items()]
        accs = [e.get("accuracy") or 0.0 for e in evals.values()]
        ci = [e.get("greedy_ci95") or e.get("sampled_ci95") or [a, a] for a, e in zip(accs, evals.values())]
        ax.bar(
            range(len(names)),
            accs,
            yerr=[[a - c[0] for a, c in zip(accs, ci)], [c[1] - a for a, c in zip(accs, ci)]],
            capsize=3,
        )
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (95% CI)")
        ax.set_title("Evaluations")
        out["evals"] = _png(fig)
    return out


def render_html(markdown: str, attacks: dict[str, dict[str, Any]], images: dict[str, str]) -> str:
    from dg_core.distill.suite import attack_markdown

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>distillation-guards report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}pre{background:#f6f6f6;padding:1em;"
        "overflow-x:auto}img{max-width:100%}</style></head><body>",
        "<h1>distillation-guards report</h1>",
        f"<pre>{html.escape(markdown)}</pre>",
    ]
    if "tradeoff" in images:
        parts.append(f"<h2>Trade-off</h2><img alt='trade-off' src='data:image/png;base64,{images['tradeoff']}'>")
    for uri, a in attacks.items():
        parts.append(f"<h2>Attack suite {html.escape(uri)}</h2><pre>{html.escape(attack_markdown(a))}</pre>")
        parts.append(f"<img alt='attack' src='data:image/png;base64,{images[f'attack:{uri}']}'>")
    if "evals" in images:
        parts.append(f"<h2>Evaluations</h2><img alt='evaluations' src='data:image/png;base64,{images['evals']}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass
class Config(StageConfig):
    attacks: list[str] = option([], "URIs of published `attack` outputs (one per calibrated teacher).")
    evals: list[str] = option([], "URIs of published `evaluate` outputs.")
    direction: str = option(
        "undistillable",
        "Which transfer is the worst case: the highest (undistillable) or lowest (distillable).",
        choices=("undistillable", "distillable"),
    )
    output: str = option("", "Where to publish the report (default: <store root>/reports/<inputs hash>).")

    def check(self) -> None:
        if not self.attacks and not self.evals:
            raise DGError("config fields 'attacks' and 'evals' are both empty: expected at least one input URI")


def build(cfg: Config) -> dict[str, Any]:
    """Read the inputs and build markdown, JSON and HTML (no publishing)."""
    from dg_core.distill.suite import read_attack
    from dg_core.evaluate import read_eval

    attacks = {u: read_attack(u) for u in cfg.attacks}
    evals = {u: read_eval(u) for u in cfg.evals}
    rows = tradeoff_rows(attacks, cfg.direction)
    md = tradeoff_markdown(rows, evals)
    images = plots(rows, attacks, evals)
    data = {
        "tradeoff": rows,
        "evals": {
            u: {
                k: e.get(k)
                for k in (
                    "model",
                    "n",
                    "accuracy",
                    "greedy_accuracy",
                    "sampled_accuracy",
                    "greedy_ci95",
                    "sampled_ci95",
                )
            }
            for u, e in evals.items()
        },
    }
    return {"markdown": md, "json": data, "html": render_html(md, attacks, images), "n_plots": len(images)}


def run(cfg: Config) -> dict:
    from dg_core.distill.common import output_uris

    out, _ = output_uris("reports", cfg.output, asdict(cfg) | {"output": ""})
    rep = build(cfg)
    with tempfile.TemporaryDirectory(prefix="dg-report-") as tmp:
        (Path(tmp) / "report.md").write_text(rep["markdown"])
        (Path(tmp) / "report.json").write_text(json.dumps(rep["json"], indent=2, sort_keys=True))
        (Path(tmp) / "report.html").write_text(rep["html"])
        store.publish(tmp, out, metadata={"kind": "report"})
    return {"report": out, "tradeoff": rep["json"]["tradeoff"], "plots": rep["n_plots"]}
