"""What a calibration run has to work with: per solution style, how often a teacher uses it, how accurate it is in
it, and the calibration reward each style's reference gets from the proxies.

The knob can only move a teacher between styles it actually *chooses between* per prompt (GRPO standardises
rewards within a group of samples of one prompt: a teacher that always answers a prompt the same way gives every
sample the same advantage) and only towards styles it is accurate in. This prints both, plus ``r_cal`` per style
under each normalisation, so the sign of η that pushes towards each style can be read off before calibrating.

    .venv/bin/python bench/style_probe.py --dataset URI --teacher URI --proxy URI [--n 100] [--samples 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def style_of(task, example, response: str) -> str:
    """The reference style whose trace (the text before the answer) is closest in length to the response's."""
    refs = example.meta["references"]
    head = task.answer_start(example, response)
    return min(refs, key=lambda s: abs(task.answer_start(example, refs[s]) - head))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--proxy", action="append", required=True)
    ap.add_argument("--split", default="validation")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from dg_core.base.generate import generate
    from dg_core.calibrate.rewards import CalibrationReward
    from dg_core.data import load_split, task_of
    from dg_core.models import load_model

    torch.set_num_threads(int(os.environ.get("DG_THREADS", "1")))
    task = task_of(args.dataset)
    rows = load_split(args.dataset, args.split)[: args.n]
    teacher, ttok = load_model(args.teacher, device="cpu")
    prompts = [task.prompt(ex, ttok) for ex in rows]

    # 1. sampled style mix and per-style accuracy; style entropy per prompt (what GRPO can reshape)
    outs = generate(teacher, ttok, prompts, n=args.samples, max_new_tokens=args.max_new_tokens, seed=0)
    by_style: dict[str, list[float]] = defaultdict(list)
    mixed = 0
    for ex, group in zip(rows, outs):
        styles = Counter()
        for r in group:
            s = style_of(task, ex, r)
            styles[s] += 1
            by_style[s].append(task.score(ex, r).reward)
        mixed += len(styles) > 1
    total = sum(len(v) for v in by_style.values())
    print(f"sampled (T=1, {args.samples}/prompt): {mixed}/{len(rows)} prompts get more than one style")
    for s, v in sorted(by_style.items()):
        print(f"  {s:<11} share {len(v) / total:.2f}  accuracy {sum(v) / len(v):.3f}")

    # 2. forced compressed (synthetic math): the answer alone, greedy after '#'
    if task.name == "synthetic_math":
        forced = generate(teacher, ttok, [p + "#" for p in prompts], n=1, do_sample=False, max_new_tokens=8)
        acc = sum(task.score(ex, "#" + o[0]).reward for ex, o in zip(rows, forced)) / len(rows)
        print(f"forced compressed greedy accuracy: {acc:.3f}")

    # 3. r_cal per style reference (correct by construction), each model with its own tokenizer, per span and
    # normalisation: the sign of eta that pushes towards a style is the sign of its r_cal relative to the others.
    refs: dict[str, list[str]] = defaultdict(list)
    for ex in rows:
        for s, text in ex.meta.get("references", {}).items():
            refs[s].append(text)
    styles = [s for s, v in refs.items() if len(v) == len(rows)]
    proxies = [load_model(p, device="cpu") for p in args.proxy]
    print("r_cal = log q - log pi0 per style reference (mean over prompts; eta < 0 pushes towards the lowest):")
    print(f"  {'span':<9} {'normalize':<9} " + " ".join(f"{s:>11}" for s in styles))
    source = lambda tok: [task.prompt(ex, tok) for ex in rows]  # noqa: E731
    for span in ("response", "answer"):
        for normalize in ("sum", "char"):
            cal = CalibrationReward(teacher, ttok, proxies, normalize=normalize, span=span, task=task)
            means = [cal(source, refs[s], examples=rows).mean().item() for s in styles]
            print(f"  {span:<9} {normalize:<9} " + " ".join(f"{m:>11.3f}" for m in means))
    return 0


if __name__ == "__main__":
    sys.exit(main())
