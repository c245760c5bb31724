"""Which answer style a student learns best, next to which style r_cal calls easy to distil: the check that the
knob's sign means on a task family what it should, minutes before a sweep of an hour.

For each style of the dataset's references, a probe student is fine-tuned on the train split's references in that
style alone (the `train` stage: published, and reused on a second run), then scored greedy on the test split. Next
to it, the teacher's accuracy once its response starts with that style's steps (how sound it is at the style: where
retention ends up if calibration moves it there), and r_cal per style (teacher against the proxies, mean over the
test references, which are correct by construction) for each span and normalisation. Calibration at eta < 0 pushes towards the style with the lowest
r_cal; the knob points the right way when that is the style the probe student learns worst, which is what
calibrate's `hardest_style` guard checks (its verdict is printed for each variant).

    DG_STORE_ROOT=file:///tmp/fc/.dg/store .venv/bin/python bench/style_learnability.py --dataset URI \\
        [--teacher URI --proxy URI] [--styles bare,decoy] [--student zoo:student-gpt2] [--steps 900]

Without --teacher it prints the probe accuracies alone: which style to name as calibrate's `hardest_style`, known
before a teacher is trained on it.

With --renderings (and --teacher) the probes learn from the teacher's own samples instead of the references: the
teacher answers each train prompt --samples times, each sample is put in the style its trace follows
(``Task.trace_style``: ``own`` for steps of its own making), and each style's probe is trained on as many of its samples as
the rarest style has, spread over the prompts the teacher wrote it for. What an attacker copies is
these, not the references; a teacher that renders a trap as something else (session 15's repeated answer) shows it
here. Accuracy of the samples themselves is printed next to the probe's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--teacher", default="", help="with --proxy: also r_cal per style and the guard's verdicts")
    ap.add_argument("--proxy", action="append", default=[])
    ap.add_argument("--styles", default="", help="comma list of reference styles to probe (default: every one)")
    ap.add_argument("--student", default="zoo:student-gpt2", help="the probe student (not a calibration proxy)")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--limit", type=int, default=150, help="test problems scored")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--renderings", action="store_true", help="probe on the teacher's own samples by style")
    ap.add_argument("--samples", type=int, default=8, help="with --renderings: samples per train prompt")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dg_core.calibrate.guards import style_sign
    from dg_core.calibrate.rewards import CalibrationReward
    from dg_core.calibrate.stage import style_accuracy, style_r_cal_rows
    from dg_core.data import load_split, task_of
    from dg_core.models import load_model

    torch.set_num_threads(int(os.environ.get("DG_THREADS", "1")))
    task = task_of(args.dataset)
    test = load_split(args.dataset, "test")[: args.limit]
    if args.renderings:  # styles as the teacher's samples follow them (``own`` among them), not reference styles
        if not args.teacher:
            raise SystemExit("--renderings needs --teacher (whose samples the probes learn from)")
        return renderings(args, task, test, args.styles.split(",") if args.styles else [])
    styles = sorted(set.intersection(*(set(ex.meta.get("references", {})) for ex in test)))
    if args.styles:
        unknown = sorted(set(args.styles.split(",")) - set(styles))
        if unknown:
            raise SystemExit(f"--styles: {unknown} are not reference styles of {args.dataset}, expected of {styles}")
        styles = args.styles.split(",")
    if len(styles) < 2:
        raise SystemExit(f"{args.dataset}: test rows carry {styles or 'no'} reference styles, expected two or more")
    if bool(args.teacher) != bool(args.proxy):
        raise SystemExit("--teacher and --proxy go together (r_cal needs both), or leave both out for the probes alone")

    learned = {s: probe(args, args.dataset, s, task, test) for s in styles}
    print(f"probe student {args.student}, {args.steps} SFT steps per style; {len(test)} test problems")
    print(f"  {'':<22} " + " ".join(f"{s:>10}" for s in styles))
    print(f"  {'student accuracy':<22} " + " ".join(f"{learned[s]:>10.3f}" for s in styles))
    hardest = min(styles, key=learned.get)
    if not args.teacher:
        print(f"the probe student learns {hardest!r} worst")
        return 0
    teacher, ttok = load_model(args.teacher, device="cpu")
    proxies = [load_model(p, device="cpu") for p in args.proxy]
    sound = {s: style_accuracy(teacher, ttok, task, test, s, args.max_new_tokens) for s in styles}
    print(f"  {'teacher after steps':<22} " + " ".join(f"{sound[s]:>10.3f}" for s in styles))
    rows = {}
    for span in ("response", "answer"):
        for normalize in ("sum", "char"):
            cal = CalibrationReward(teacher, ttok, proxies, normalize=normalize, span=span, task=task)
            rows[span, normalize] = {s: r for s, r in style_r_cal_rows(task, test, cal).items() if s in styles}

    for (span, normalize), by in rows.items():
        means = " ".join(f"{sum(by[s]) / len(by[s]):>10.3f}" for s in styles)
        print(f"  {'r_cal ' + span + '/' + normalize:<22} " + means)
    print(f"the probe student learns {hardest!r} worst; calibrate hardest_style={hardest} at eta < 0 would:")
    for (span, normalize), by in rows.items():
        sign = style_sign(by, hardest, -1.0)
        verdict = (
            f"REFUSE: {sign.problem}"
            if sign.problem
            else f"pass{'' if sign.resolved else ' (close call)'}: {sign.summary}"
        )
        print(f"  span={span} normalize={normalize}: {verdict}")
    return 0


def probe(args: argparse.Namespace, dataset: str, style: str, task, test: list) -> float:
    """Greedy test accuracy of a probe student SFT'd on ``dataset``'s train split (``style``: which reference)."""
    from dg_core.distill import train_stage
    from dg_core.evaluate import evaluate_model
    from dg_core.models import load_model

    cfg = train_stage.Config(model=args.student, dataset=dataset, style=style, steps=args.steps,
                             batch_size=args.batch_size, lr=args.lr, warmup_steps=100)  # fmt: skip
    model, tok = load_model(train_stage.run(cfg)["model"], device="cpu")
    ev = evaluate_model(model, tok, task, test, k=0, max_new_tokens=args.max_new_tokens, progress=False)
    return ev["greedy_accuracy"]


def renderings(args: argparse.Namespace, task, test: list, styles: list[str]) -> int:
    """Probe students on the teacher's samples of each style (see the module doc)."""
    import tempfile
    from pathlib import Path

    from dg_core.base.generate import generate_tokens
    from dg_core.data import load_split
    from dg_core.data.artifact import read_dataset_manifest, write_manifest
    from dg_core.data.example import write_jsonl
    from dg_core.models import load_model

    train = load_split(args.dataset, "train")
    teacher, ttok = load_model(args.teacher, device="cpu")
    prompts = [task.prompt(e, ttok) for e in train]
    roll = generate_tokens(teacher, ttok, prompts, n=args.samples, max_new_tokens=args.max_new_tokens, batch_size=256)
    reps = [e for e in train for _ in range(args.samples)]
    by: dict[str, list[tuple]] = {}  # style -> (example, sample, reward) in prompt order
    for e, t, sc in zip(reps, roll.texts, task.score_batch(reps, roll.texts)):
        by.setdefault(task.trace_style(e, t), []).append((e, t, sc.reward))
    absent = [s for s in styles if s not in by]
    if absent:
        raise SystemExit(f"--styles: the teacher wrote none of {absent} in {len(reps)} samples, only {sorted(by)}")
    wanted = styles or sorted(by)
    n = min(len(by[s]) for s in wanted)
    if len(wanted) < 2 or n < 200:
        raise SystemExit(f"the teacher wrote {sorted(by)}, {n} samples of the rarest of {wanted}: expected 2+ styles "
                         "of 200+ samples each (more --samples)")  # fmt: skip
    spec = read_dataset_manifest(args.dataset)["task"]
    learned = {}
    with tempfile.TemporaryDirectory(prefix="dg-renderings-") as tmp:
        for s in wanted:
            d = Path(tmp) / s
            d.mkdir()
            # as many samples of each style, spread over the prompts it was written for (a prompt may repeat)
            picked = [by[s][round(i * len(by[s]) / n)] for i in range(n)]
            rows = [
                dataclasses.replace(e, id=f"{e.id}-{i}", reference=t, meta={}) for i, (e, t, _) in enumerate(picked)
            ]
            write_jsonl(d / "train.jsonl", rows)
            write_manifest(d, {"task": spec, "splits": {"train": {"file": "train.jsonl"}}})
            learned[s] = probe(args, str(d), "", task, test)
    print(f"probe student {args.student} on the teacher's own samples ({args.samples} per train prompt), {n} of each "
          f"style (the rarest's count); {args.steps} SFT steps; {len(test)} test problems")  # fmt: skip
    print(f"  {'':<22} " + " ".join(f"{s:>10}" for s in wanted))
    print(f"  {'share of samples':<22} " + " ".join(f"{len(by[s]) / len(reps):>10.0%}" for s in wanted))
    acc = {s: sum(r for *_, r in by[s]) / len(by[s]) for s in wanted}
    print(f"  {'teacher accuracy':<22} " + " ".join(f"{acc[s]:>10.3f}" for s in wanted))
    print(f"  {'student accuracy':<22} " + " ".join(f"{learned[s]:>10.3f}" for s in wanted))
    print(f"the probe student learns the teacher's {min(wanted, key=learned.get)!r} worst")
    return 0


if __name__ == "__main__":
    sys.exit(main())
