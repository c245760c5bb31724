"""The proof that the knob turns: an eta sweep on the zoo, every teacher attacked by every student.

The same experiment as ``make demo`` (:mod:`pipelines.experiment`: the KFP components under ``kfp.local``),
with the sweep's settings in ``bench/knob.yaml`` over the demo's; the release gate of each eta carries the
product's targets (undistillable retention >= 0.95 and transfer <= 0.5 for every attack, distillable transfer
>= 1.10, eta = 0 a control). Prints the table and the gates, writes ``knob.json`` and the trade-off plot
``knob.png`` (retention vs transfer per eta). Every step is reused from the store, so a re-run resumes.

    .venv/bin/python bench/knob.py --small                       # plumbing check, a few minutes
    nohup .venv/bin/python bench/knob.py > /tmp/knob.log 2>&1 &  # the full sweep (hours on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dg_core.errors import DGError  # noqa: E402
from pipelines.experiment import EXPERIMENTS, load_settings, run, table  # noqa: E402

HERE = Path(__file__).resolve().parent


def plot(s: dict[str, Any], path: Path) -> None:
    """Trade-off: teacher retention (x) vs student transfer (y), one series per attack, labelled by eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    cal = [t for t in s["teachers"] if t["eta"] is not None]
    for a in s["attacks"]:
        pts = [(t["retention"], a[t["teacher"]]["transfer"], t["eta"]) for t in cal if a[t["teacher"]]["transfer"]]
        if not pts:
            continue
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=a["attack"])
        for x, y, eta in pts:
            ax.annotate(f"η={eta:+g}", (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.plot([1.0], [1.0], marker="*", ms=12, color=line[0].get_color())
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("teacher retention  acc(calibrated) / acc(original)")
    ax.set_ylabel("student transfer  acc(student←calibrated) / acc(student←original)")
    ax.set_title("Distillability knob: eta sweep (zoo models)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="file:///tmp/dg-knob/store", help="store root for every artifact (cache)")
    ap.add_argument("--out", default="/tmp/dg-knob", help="directory for knob.json, knob.png and the log")
    ap.add_argument("--workers", type=int, default=2, help="processes running tasks side by side")
    ap.add_argument("--small", action="store_true", help="bench/knob-small.yaml: the plumbing in minutes")
    ap.add_argument(
        "--with",
        dest="overlays",
        action="append",
        default=[],
        metavar="YAML",
        help="another settings overlay, e.g. bench/knob-adaptive.yaml (the adaptive attacks)",
    )
    ap.add_argument("overrides", nargs="*", help="settings as key.sub=JSON")
    args = ap.parse_args(argv)
    files = [EXPERIMENTS / "demo.yaml", HERE / "knob.yaml", *args.overlays]
    if args.small:
        files += [EXPERIMENTS / "small.yaml", HERE / "knob-small.yaml"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_settings(*files, overrides=args.overrides)
        s = run(cfg, args.store, out, args.workers, lambda x: print(x, flush=True))
    except DGError as e:
        print(f"knob failed: {e}\nlog: {out / 'knob.log'}", file=sys.stderr)
        return 2
    print("\n".join(table(s)))
    (out / "knob.json").write_text(json.dumps({"settings": cfg, **s}, indent=2, default=str))
    plot(s, out / "knob.png")
    print(f"\nwrote {out}/knob.json and knob.png ({s['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
