"""The release owner's plot: teacher retention against worst-case student transfer over an eta sweep, with 95%
intervals, from the ``summary.json`` of one or more experiment runs on the same original teacher.

    .venv/bin/python -m pipelines.demo --config pipelines/experiments/demo.yaml --config bench/tradeoff.yaml \\
        --dir /tmp/trade                                   # the sweep (the demo's teacher, 7 etas, 3 seeds)
    .venv/bin/python bench/tradeoff.py /tmp/trade/summary.json [more summaries] --out docs/results/knob

Retention = acc(calibrated) / acc(original) on the test split; its interval is a paired bootstrap over the test
problems (both teachers answer the same ones). Transfer = mean acc(student <- calibrated) / mean acc(student <-
original) over the attack's seeds; its interval is the gate's (:func:`dg_core.gate.transfer_interval`: the delta
method on the log ratio with a t quantile; few seeds, wide, as it should be). The worst case is the attack with the highest transfer for eta < 0 and the lowest
for eta > 0. The teacher's style is read off its greedy test answers (``bare``: no more text before the answer than
the family's shortest reference style has: ``#90`` in math, ``The answer is Sek.`` in QA); ``traces`` says which
reference style's steps each answer repeats exactly, ``own`` for steps of the teacher's own making.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dg_core import store  # noqa: E402
from dg_core.gate import transfer_interval  # noqa: E402
from dg_core.knob import direction_of, worst_attack  # noqa: E402


def samples(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-problem greedy answers of one evaluation record."""
    path = store.local_payload(record["eval"]) / "samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def traces(results: dict[str, Any], got: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a teacher's greedy answers write before the answer: ``bare``, the share with no more text there than
    the family's shortest reference style (see the module docstring); ``styles``, the share whose trace is exactly
    one reference style's (``own``: steps of the teacher's making, e.g. the facts it makes up when imitating
    ``noise``); ``told``, the share whose trace already names the answer (what a student copying it is handed)."""
    from dg_core.data import load_split, task_of

    dataset = results["prep"]["dataset"]
    task, rows = task_of(dataset), {e.id: e for e in load_split(dataset, "test")}
    bare = told = 0
    counts: dict[str, int] = {}
    for i, g in got.items():
        ex, text = rows[i], g["response"].strip()
        refs = ex.meta.get("references") or {}
        at = task.answer_start(ex, text)
        bare += at <= min((task.answer_start(ex, r) for r in refs.values()), default=0)
        trace = text[:at].strip()
        told += bool(re.search(rf"(?<!\w){re.escape(ex.meta.get('answer_text', ex.answer))}(?!\w)", trace))
        style = task.trace_style(ex, text) or "own"
        counts[style] = counts.get(style, 0) + 1
    n = len(got)
    styles = {k: v / n for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
    return {"bare": bare / n, "styles": styles, "told": told / n}


def paired_interval(orig: list[bool], cal: list[bool], boot: int, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of sum(cal) / sum(orig) resampling problems (both answered the same ones)."""
    rng, n, ratios = random.Random(seed), len(orig), []
    for _ in range(boot):
        idx = [rng.randrange(n) for _ in range(n)]
        o = sum(orig[i] for i in idx)
        ratios.append(sum(cal[i] for i in idx) / o if o else math.inf)
    ratios.sort()
    return ratios[int(0.025 * boot)], ratios[int(0.975 * boot) - 1]


def collect(summaries: list[dict[str, Any]], boot: int) -> dict[str, Any]:
    """Teachers (accuracy, retention with interval, style) and attacks (per-seed accuracies, transfer per eta)."""
    results: dict[str, Any] = {}
    for s in summaries:
        results.update(s["results"])
    orig = {x["id"]: x["greedy"] for x in samples(results["eval-original"]["record"])}
    ok0 = [orig[i]["correct"] for i in sorted(orig)]
    etas = sorted({float(k[3:]) for k in results if k.startswith("cal") and "|" not in k})
    sides = {"original": None, **{f"cal{e:+g}": e for e in etas}}
    teachers = []
    for side, eta in sides.items():
        rec = results["eval-original" if eta is None else side]["record"]
        got = {x["id"]: x["greedy"] for x in samples(rec)}
        ok = [got[i]["correct"] for i in sorted(orig)]
        answers = [got[i]["response"].strip() for i in sorted(orig)]
        lo, hi = (1.0, 1.0) if eta is None else paired_interval(ok0, ok, boot)
        teachers.append(
            {
                "side": side,
                "eta": eta,
                "accuracy": sum(ok) / len(ok),
                "retention": sum(ok) / sum(ok0),
                "retention_95": [lo, hi],
                **traces(results, {i: got[i] for i in sorted(orig)}),
                "chars": statistics.fmean(len(a) for a in answers),
            }
        )
    attacks: dict[str, dict[str, list[float]]] = {}
    for key, r in results.items():
        if key.count("|") == 2:
            side, attack, _seed = key.split("|")
            attacks.setdefault(attack, {}).setdefault(side, []).append(r["record"]["accuracy"])
    table = []
    for attack, by_side in sorted(attacks.items()):
        row: dict[str, Any] = {"attack": attack, "original": by_side.get("original", [])}
        for side, eta in sides.items():
            if eta is None or side not in by_side or not row["original"]:
                continue
            t = statistics.fmean(by_side[side]) / statistics.fmean(row["original"])
            row[side] = {
                "accs": by_side[side],
                "transfer": t,
                "transfer_95": list(transfer_interval(by_side[side], row["original"]) or (None, None)),
            }
        table.append(row)
    for t in teachers:
        cells = {a["attack"]: a[t["side"]] for a in table if t["eta"] is not None and t["side"] in a}
        if cells:
            name = worst_attack(direction_of(t["eta"]), {k: v["transfer"] for k, v in cells.items()})
            t["worst"] = {
                "attack": name,
                "transfer": cells[name]["transfer"],
                "transfer_95": cells[name]["transfer_95"],
            }
    return {"teachers": teachers, "attacks": table}


def _ci(lo: float | None, hi: float | None) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "[n/a]"


def markdown(c: dict[str, Any]) -> list[str]:
    """The two tables: teachers (retention, style, worst case) and every attack's transfer per eta."""
    out = [
        "| teacher | accuracy | retention [95%] | bare answers | traces | trace names the answer | chars "
        "| worst-case attack | transfer [95%] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in c["teachers"]:
        w = t.get("worst")
        worst = f"{w['attack']} | {w['transfer']:.2f} {_ci(*w['transfer_95'])}" if w else "— | —"
        name = "original" if t["eta"] is None else f"eta={t['eta']:+g}"
        out.append(
            f"| {name} | {t['accuracy']:.3f} | {t['retention']:.3f} {_ci(*t['retention_95'])} | "
            f"{t['bare']:.0%} | {', '.join(f'{k} {v:.0%}' for k, v in t['styles'].items())} | {t['told']:.0%} | "
            f"{t['chars']:.1f} | "
            f"{worst} |"
        )
    sides = [t for t in c["teachers"] if t["eta"] is not None]
    out += [
        "",
        "| attack: accuracy (transfer [95%]) | original (seeds) | "
        + " | ".join(f"eta={t['eta']:+g}" for t in sides)
        + " |",
    ]
    out.append("|---|---|" + "---|" * len(sides))
    for a in c["attacks"]:
        o = a["original"]
        cells = []
        for t in sides:
            x = a.get(t["side"])
            cells.append(
                f"{statistics.fmean(x['accs']):.3f} ({x['transfer']:.2f} {_ci(*x['transfer_95'])})" if x else "—"
            )
        spread = f" ± {statistics.stdev(o):.3f}" if len(o) > 1 else ""
        out.append(f"| {a['attack']} | {statistics.fmean(o):.3f}{spread} ({len(o)}) | " + " | ".join(cells) + " |")
    return out


def plot(c: dict[str, Any], path: Path, title: str) -> None:
    """Left: retention vs worst-case transfer, one point per eta. Right: every attack's transfer vs eta."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5))
    for t in c["teachers"]:
        w = t.get("worst")
        if not w:
            continue
        x, (xlo, xhi) = t["retention"], t["retention_95"]
        y, (ylo, yhi) = w["transfer"], w["transfer_95"]
        color = "tab:red" if t["eta"] < 0 else "tab:green" if t["eta"] > 0 else "tab:grey"
        yerr = [[y - ylo], [yhi - y]] if ylo is not None else None
        ax.errorbar([x], [y], xerr=[[x - xlo], [xhi - x]], yerr=yerr, fmt="o", color=color, capsize=3)
        ax.annotate(f"η={t['eta']:+g}", (x, y), fontsize=8, xytext=(5, 5), textcoords="offset points")
    ax.axvline(0.95, color="grey", ls="--", lw=0.8)
    for y, label in ((0.5, "undistillable ≤ 0.5"), (1.1, "distillable ≥ 1.1")):
        ax.axhline(y, color="grey", ls=":", lw=0.8)
        ax.annotate(label, (ax.get_xlim()[0], y), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("teacher retention (95% paired bootstrap)")
    ax.set_ylabel("worst-case student transfer (95% interval)")
    ax.set_title(title)
    etas = [t["eta"] for t in c["teachers"] if t["eta"] is not None]
    for a in c["attacks"]:
        pts = [(t["eta"], a[t["side"]]) for t in c["teachers"] if t["eta"] is not None and t["side"] in a]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ys = [p[1]["transfer"] for p in pts]
        lo = [p[1]["transfer"] - (p[1]["transfer_95"][0] or p[1]["transfer"]) for p in pts]
        hi = [(p[1]["transfer_95"][1] or p[1]["transfer"]) - p[1]["transfer"] for p in pts]
        bx.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", capsize=2, label=a["attack"], alpha=0.8)
    bx.plot(etas, [t["retention"] for t in c["teachers"] if t["eta"] is not None], "k*--", label="teacher retention")
    bx.axhline(1.0, color="grey", lw=0.5)
    bx.set_xlabel("η")
    bx.set_ylabel("transfer per attack")
    bx.set_yscale("log")
    bx.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    bx.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bx.set_yticks([0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0])
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("summaries", nargs="+", help="summary.json of experiment runs sharing one original teacher")
    ap.add_argument("--out", default="/tmp/dg-tradeoff", help="directory for <name>.md, .json and .png")
    ap.add_argument("--name", default="tradeoff", help="file stem of the outputs")
    ap.add_argument("--title", default="Distillability knob: one teacher, η sweep (zoo)")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for retention")
    args = ap.parse_args(argv)
    c = collect([json.loads(Path(p).read_text()) for p in args.summaries], args.boot)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = markdown(c)
    print("\n".join(lines))
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(c, indent=1))
    plot(c, out / f"{args.name}.png", args.title)
    print(f"wrote {out / args.name}.{{md,json,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
