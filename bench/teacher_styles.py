"""How sound a synthetic-math teacher is at each answer style: as a bootstrap trains, or a published model.

Calibration at η < 0 moves a teacher towards the bare answer (``#90``); it can only do so without losing accuracy
if the teacher is right when it answers bare. Sampled accuracy mixes the styles, so this forces the style: greedy
decoding after a leading ``#`` (the bare answer), next to free greedy decoding and the share of sampled answers that
are bare (docs/results/demo.md, session 6). Plain RFT (η = 0) acts on the sampled accuracy of each style: it moves
the teacher towards the style whose samples are more often right, so that is printed per style (a teacher RFT
leaves alone has the two equal). ``asked`` is the prompt attack's view: the share of plain test problems the
teacher answers with its work written out when the question ends in ``show steps``.

    .venv/bin/python bench/teacher_styles.py --style compressed,decomposed --steps 1500 [--seed 0] [--lr 0.002]
    .venv/bin/python bench/teacher_styles.py --model <store URI> --dataset <prepared dataset URI>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def styles_line(model, tok, task, rows, samples: int) -> str:
    """One line of figures for ``model`` on ``rows`` (test problems)."""
    import torch

    from dg_core.base.generate import generate

    plain = [ex for ex in rows if not ex.meta.get("instruction")]
    model.eval()
    prompts = [task.prompt(ex, tok) for ex in rows]
    with torch.no_grad():
        free = [o[0] for o in generate(model, tok, prompts, n=1, do_sample=False, max_new_tokens=40)]
        bare = generate(model, tok, [p + "#" for p in prompts], n=1, do_sample=False, max_new_tokens=8)
        sampled = generate(model, tok, prompts, n=samples, max_new_tokens=40, seed=1)
        asked = [task.prompt(task.ask(ex, "show steps"), tok) for ex in plain]
        shown = [o[0] for o in generate(model, tok, asked, n=1, do_sample=False, max_new_tokens=40)]

    def acc(responses: list[str]) -> float:
        return sum(task.score(ex, r).correct for ex, r in zip(rows, responses)) / len(rows)

    right = {True: [0, 0], False: [0, 0]}  # bare? -> [correct, samples]
    for ex, outs in zip(rows, sampled):
        for r in outs:
            tally = right[r.strip().startswith("#")]
            tally[0] += task.score(ex, r).correct
            tally[1] += 1

    def rate(k: bool) -> str:
        return f"{right[k][0] / right[k][1]:.3f}" if right[k][1] else "  -  "

    free_rows = [outs for ex, outs in zip(rows, sampled) if not ex.meta.get("instruction")]
    free_bare = sum(r.strip().startswith("#") for outs in free_rows for r in outs) / max(samples * len(free_rows), 1)
    written = sum(not r.strip().startswith("#") for r in shown) / max(len(shown), 1)
    return (
        f"greedy {acc(free):.3f}  forced bare {acc(['#' + o[0] for o in bare]):.3f}"
        f"  sampled bare share {right[True][1] / (samples * len(rows)):.2f} (uninstructed {free_bare:.2f})"
        f"  sampled acc bare {rate(True)} written {rate(False)}  asked 'show steps': written {written:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--style", default="compressed,decomposed", help="the train stage's `style` (a weighted list)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="shifts the data and the bootstrap, as `make demo --seed`")
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--n", type=int, default=200, help="test problems scored at each point")
    ap.add_argument("--samples", type=int, default=4, help="samples per problem at temperature 1 (RFT's view)")
    ap.add_argument("--model", help="score this published model once instead of training one (needs --dataset)")
    ap.add_argument("--dataset", help="the prepared dataset --model is scored on")
    args = ap.parse_args()

    import yaml

    from dg_core import store
    from dg_core.config import from_dict
    from dg_core.data import load_split, task_of
    from dg_core.data.prep import Config as PrepConfig
    from dg_core.data.prep import run as prep
    from dg_core.distill import train_stage
    from dg_core.utils import set_threads_from_env

    set_threads_from_env()
    if args.model:
        from dg_core.models import load_model

        if not args.dataset:
            ap.error("--model needs --dataset")
        task, rows = task_of(args.dataset), load_split(args.dataset, "test")[: args.n]
        model, tok = load_model(args.model, device="cpu")
        print(f"{args.model}: {styles_line(model, tok, task, rows, args.samples)}", flush=True)
        return

    demo = yaml.safe_load((Path(__file__).parents[1] / "pipelines/experiments/demo.yaml").read_text())["prep"]
    root = Path(tempfile.mkdtemp(prefix="teacher-styles-")).as_uri()
    fields = {"source": demo["source"], "task": demo["task"], **demo["options"], "seed": demo["seed"] + args.seed}
    ds = prep(from_dict(PrepConfig, {**fields, "output": store.join(root, "data")}))["uri"]
    task, rows = task_of(ds), load_split(ds, "test")[: args.n]

    grabbed: dict = {}
    load = train_stage.load_trainable

    def keep(*a, **kw):  # the stage builds its own model: keep a handle to score it while it trains
        grabbed["model"], grabbed["tok"] = load(*a, **kw)
        return grabbed["model"], grabbed["tok"]

    train_stage.load_trainable = keep
    t0 = time.perf_counter()

    def score(step: int, loss: float) -> None:
        if step % args.every:
            return
        line = styles_line(grabbed["model"], grabbed["tok"], task, rows, args.samples)
        grabbed["model"].train()
        print(f"step {step:5d}  loss {loss:.3f}  {line}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    cfg = {
        "model": "zoo:teacher",
        "dataset": ds,
        "steps": args.steps,
        "batch_size": args.batch,
        "lr": args.lr,
        "style": args.style,
        "warmup_steps": 50,
        "seed": args.seed,
        "checkpoint_every": 0,
        "output": store.join(root, "teacher"),
    }
    train_stage.run(from_dict(train_stage.Config, cfg), on_step=score)


if __name__ == "__main__":
    main()
