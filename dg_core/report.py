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
from dg_core.distill.suite import read_attack
from dg_core.errors import DGError
from dg_core.evaluate import read_eval
from dg_core.gate import attack_name, read_result
from dg_core.knob import DIRECTIONS, UNDISTILLABLE, worst_attack
from dg_core.store import output_uri


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


def tradeoff_rows(attacks: dict[str, dict[str, Any]], direction: str = UNDISTILLABLE) -> list[dict[str, Any]]:
    """One row per attack artifact: retention, per-attack transfer, min/max/mean transfer and the worst case
    for ``direction`` (:func:`dg_core.knob.worst_attack`)."""
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
                "worst_transfer": transfers[worst_attack(direction, transfers)] if transfers else None,
                "min_transfer": min(transfers.values()) if transfers else None,
                "max_transfer": max(transfers.values()) if transfers else None,
                "mean_transfer": sum(transfers.values()) / len(transfers) if transfers else None,
            }
        )
    return rows


def _defined(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def eval_label(e: dict[str, Any], uri: str, calibration: str = "") -> str:
    """What an evaluation measured, for people: the teacher side it evaluated (original / calibrated (eta=...)) or
    the student and method, from the record the pipeline attached; the model's last path part otherwise."""
    rec = e.get("label") or e.get("record") or {}
    side = rec.get("teacher")
    if rec.get("model") == "teacher" and side:
        if side == "calibrated" and calibration:
            return f"calibrated teacher ({calibration})"
        return f"{side} teacher"
    if rec.get("student"):
        return f"student {attack_name(rec)} of {side or '?'} teacher"
    return str(e.get("model", uri)).rstrip("/").rsplit("/", 1)[-1]


def _calibration(rows: list[dict[str, Any]]) -> str:
    """The calibration's label (eta=... when the calibrated model records it) when the report has just one."""
    labels = {r["label"] for r in rows}
    return labels.pop() if len(labels) == 1 else ""


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
    if rows:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ok = [r for r in rows if _defined(r["retention"]) and _defined(r["worst_transfer"])]
        undefined = [r for r in rows if r not in ok]
        ax.scatter([r["retention"] for r in ok], [r["worst_transfer"] for r in ok], label="worst attack")
        ax.scatter([r["retention"] for r in ok], [r["mean_transfer"] for r in ok], marker="x", label="mean transfer")
        for r in ok:
            ax.annotate(
                r["label"], (r["retention"], r["max_transfer"]), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        # A NaN transfer (an original-teacher student at 0 accuracy) or retention is not dropped: it is drawn on
        # the x axis (at retention, or 0 when that is undefined too) as a hollow red marker, labelled.
        for r in undefined:
            x = r["retention"] if _defined(r["retention"]) else 0.0
            ax.scatter([x], [0.0], marker="o", facecolors="none", edgecolors="#d62728", clip_on=False,
                       label="transfer undefined")  # fmt: skip
            ax.annotate(f"{r['label']}: undefined", (x, 0.0), fontsize=7, xytext=(3, 6), textcoords="offset points")
        ax.axhline(1.0, color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("teacher retention")
        ax.set_ylabel("student transfer")
        ax.set_title("Distillability trade-off")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=8)
        out["tradeoff"] = _png(fig)
    if evals:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(evals)), 3.2))
        names = [eval_label(e, u, _calibration(rows)) for u, e in evals.items()]
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


def _table(head: list[str], rows: list[list[str]], caption: str = "") -> str:
    """A real HTML table (escaped cells; a header row always, so an empty table still says what it holds)."""
    e = html.escape
    cap = f"<caption>{e(caption)}</caption>" if caption else ""
    th = "".join(f"<th scope='col'>{e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _short(uri: str) -> str:
    """The last two path parts of a URI (the full one goes in the title attribute)."""
    return "/".join(uri.rstrip("/").split("/")[-2:])


def _stat(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{_fmt(d.get('mean'))} ± {_fmt(d.get('std'))} (n={d.get('n', '?')})"


def render_html(
    markdown: str,
    attacks: dict[str, dict[str, Any]],
    images: dict[str, str],
    rows: list[dict[str, Any]] | None = None,
    evals: dict[str, dict[str, Any]] | None = None,
    verdict: dict[str, Any] | None = None,
) -> str:
    """One self-contained page: the gate's verdict and reasons first, then real tables and the plots."""
    e = html.escape
    rows = rows if rows is not None else []
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>distillation-guards report</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}"
        "caption{text-align:left;font-weight:bold;padding:.3em 0}img{max-width:100%}.pass{color:#070}"
        ".fail{color:#b00}code{font-size:90%}</style></head><body>",
        "<h1>distillation-guards report</h1>",
    ]
    if verdict:
        ok = verdict.get("passed")
        word, cls = ("PASSED", "pass") if ok else ("FAILED", "fail")
        parts.append(
            f"<h2>Release gate: <span class='{cls}'>{word}</span> ({e(str(verdict.get('direction', '')))})</h2>"
        )
        parts.append("<ul>" + "".join(f"<li>{e(str(r))}</li>" for r in verdict.get("reasons") or []) + "</ul>")
    else:
        parts.append("<p>No release-gate decision was given to this report.</p>")
    if rows:
        parts.append(
            _table(
                [
                    "calibration",
                    "original teacher",
                    "calibrated teacher",
                    "retention",
                    "transfer (worst)",
                    "transfer (min)",
                    "transfer (max)",
                    "transfer (mean)",
                ],  # fmt: skip
                [
                    [
                        r["label"],
                        _fmt(r["teacher_original"]),
                        _fmt(r["teacher_calibrated"]),
                        _fmt(r["retention"]),
                        _fmt(r["worst_transfer"]),
                        _fmt(r["min_transfer"]),
                        _fmt(r["max_transfer"]),
                        _fmt(r["mean_transfer"]),
                    ]  # fmt: skip
                    for r in rows
                ],
                "Distillability trade-off (teacher accuracy; transfer = student accuracy from the calibrated "
                "teacher / from the original; '-' = undefined)",
            )
        )
    if "tradeoff" in images:
        parts.append(f"<h2>Trade-off</h2><img alt='trade-off plot' src='data:image/png;base64,{images['tradeoff']}'>")
    for uri, a in attacks.items():
        label = _label(a, uri)
        cal = "calibrated" in a["teachers"]
        head = ["attack (student/method)", "undistilled floor", "students of the original teacher"]
        if cal:
            head += [f"students of the calibrated teacher ({label})", "transfer"]
        body = []
        for r in a["attacks"]:
            row = [r["attack"], _fmt(r.get("floor")), _stat(r.get("original"))]
            if cal:
                row += [_stat(r.get("calibrated")), _fmt(r.get("transfer"))]
            body.append(row)
        parts.append(f"<h2 title='{e(uri)}'>Attack suite <code>{e(_short(uri))}</code></h2>")
        parts.append(_table(head, body, "Student accuracy, mean ± std over seeds"))
        if f"attack:{uri}" in images:
            parts.append(f"<img alt='attack suite {e(label)}' src='data:image/png;base64,{images[f'attack:{uri}']}'>")
    if evals:
        parts.append("<h2>Evaluations</h2>")
        parts.append(
            _table(
                ["model", "n", "greedy accuracy", "sampled accuracy"],
                [
                    [
                        eval_label(ev, u, _calibration(rows)),
                        str(ev.get("n")),
                        _fmt(ev.get("greedy_accuracy")),
                        _fmt(ev.get("sampled_accuracy")),
                    ]
                    for u, ev in evals.items()
                ],  # fmt: skip
            )
        )
    if "evals" in images:
        parts.append(f"<img alt='evaluations' src='data:image/png;base64,{images['evals']}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


@dataclass
class Config(StageConfig):
    attacks: list[str] = option([], "URIs of published `attack` outputs (one per calibrated teacher).")
    evals: list[str] = option([], "URIs of published `evaluate` outputs.")
    direction: str = option(
        UNDISTILLABLE,
        "Which transfer is the worst case (dg_core.knob): the highest (undistillable), the lowest (distillable), "
        "or the furthest from 1 (control).",
        choices=DIRECTIONS,
    )
    gate: str = option("", "URI of the release gate's decision (gate.json): its verdict and reasons head the page.")
    output: str = option("", "Where to publish the report (default: <store root>/reports/<inputs hash>).")

    def check(self) -> None:
        if not self.attacks and not self.evals:
            raise DGError("config fields 'attacks' and 'evals' are both empty: expected at least one input URI")


def build(cfg: Config) -> dict[str, Any]:
    """Read the inputs and build markdown, JSON and HTML (no publishing)."""

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
    verdict = None
    if cfg.gate:
        verdict = read_result(cfg.gate)
        data["gate"] = {"uri": cfg.gate, **{k: verdict.get(k) for k in ("passed", "direction", "reasons")}}
    page = render_html(md, attacks, images, rows, evals, verdict)
    return {"markdown": md, "json": data, "html": page, "n_plots": len(images)}


def run(cfg: Config) -> dict:

    out = cfg.output or output_uri("reports", asdict(cfg) | {"output": ""})
    rep = build(cfg)
    with tempfile.TemporaryDirectory(prefix="dg-report-") as tmp:
        (Path(tmp) / "report.md").write_text(rep["markdown"])
        (Path(tmp) / "report.json").write_text(json.dumps(rep["json"], indent=2, sort_keys=True))
        (Path(tmp) / "report.html").write_text(rep["html"])
        store.publish(tmp, out, metadata={"kind": "report"})
    return {"report": out, "tradeoff": rep["json"]["tradeoff"], "plots": rep["n_plots"]}
