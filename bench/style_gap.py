"""Style gap of the synthetic math family: how much harder a small student finds each solution style.

Trains a fresh zoo student (``student-llama`` by default) by SFT on ONE reference style of
``synthetic_math`` and reports its greedy held-out accuracy per style; optionally trains the zoo teacher on a
uniform mix of all styles and reports its held-out accuracy (greedy and sampled at T=1) and which styles it
writes. The gap (decomposed minus compressed) bounds what calibration can do to students (DESIGN.md §2).

    .venv/bin/python bench/style_gap.py                         # defaults: ~10 min on 1 CPU thread
    .venv/bin/python bench/style_gap.py --teacher-steps 0       # students only
    .venv/bin/python bench/style_gap.py --task '{"a_digits": 2, "terms": 2}' --styles decomposed,compressed

Prints one line per model and a JSON summary at the end. Not part of the test run.

Measured (task ``{"a_digits": 2, "b_digits": 1, "terms": 1}``, e.g. ``37*4+15``; 6000 train problems, 300
held-out; batch 64; greedy held-out accuracy; student-llama 0.17M params, teacher 0.87M):

| run                                   | students: decomposed        | compressed            | gap   |
|---------------------------------------|-----------------------------|-----------------------|-------|
| CPU, defaults, 1 thread, seed 0       | 0.960                       | 0.050                 | 0.910 |
| H200, 1000 steps, 3 seeds             | 0.960 / 0.873 / 0.933 (0.922) | 0.040 / 0.033 / 0.040 (0.038) | 0.884 |
| H200, 2000 steps, 3 seeds             | 0.993 / 0.993 / 0.990 (0.992) | 0.143 / 0.063 / 0.067 (0.091) | 0.901 |

Teacher trained on a uniform mix of the four styles: 800 steps (CPU defaults) greedy 0.983 (mostly decomposed),
sampled at T=1 0.643; 6000 steps (H200) greedy 0.837, sampled 0.820, writing every style (greedy outputs by
exact match: checked 81, compact 60, compressed 15, decomposed 94, all correct; 50 others, 1 correct).
The CPU default run took 7.4 min of CPU time on 1 thread (15 min wall on the shared, loaded 2-core machine).
Other knobs gave gaps of 0.91-0.97 at 2000 student steps (terms=2 with +-: 0.973 vs 0.063; a_digits=3:
0.967 vs 0.007; term_digits=3: 0.995 vs 0.028).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
from dataclasses import replace

import torch

from dg_core.base.generate import generate, pack_texts
from dg_core.data import get_task
from dg_core.data.synthetic.math import STYLES
from dg_core.models.zoo import ZOO, build_model, build_tokenizer


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_sft(model, tok, prompts, responses, *, steps, batch, lr, seed, device, log_every=0):
    """Plain SFT on response tokens: AdamW, linear warmup then cosine decay to 10%."""
    rng = random.Random(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )
    idx = list(range(len(prompts)))
    order: list[int] = []
    t0 = time.time()
    for step in range(steps):
        if len(order) < batch:
            rng.shuffle(idx)
            order += idx
        rows, order = order[:batch], order[batch:]
        b = pack_texts(tok, [prompts[i] for i in rows], [responses[i] for i in rows]).to(device)
        logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        mask = b.targets_mask()
        loss = torch.nn.functional.cross_entropy(logits[mask], b.input_ids[:, 1:][mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"    step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    return time.time() - t0


def _shape(text: str) -> str:
    return re.sub(r"\d+", "N", text.strip())


def style_of(text: str, refs: dict[str, str]) -> str:
    """The style whose shape (numbers masked) the output has, right or wrong; "other" when none fits."""
    for s, r in refs.items():
        if _shape(text) == _shape(r):
            return s
    return "other"


def evaluate(model, tok, task, examples, *, sample: bool, seed: int, max_new: int) -> tuple[float, dict[str, str]]:
    """Held-out accuracy, and per style of the outputs: how many and how many of those correct.

    A response counts as a style when it has that style's shape (numbers masked: the same steps, right or
    wrong); "other" is anything else (a missing or extra step, text that fits no style).
    """
    prompts = [task.prompt(e) for e in examples]
    outs = generate(
        model, tok, prompts, n=1, max_new_tokens=max_new, do_sample=sample, temperature=1.0, batch_size=256, seed=seed
    )
    rewards = [task.score(e, o[0]).reward for e, o in zip(examples, outs)]
    counts: dict[str, list[float]] = {}
    for e, o, r in zip(examples, outs, rewards):
        counts.setdefault(style_of(o[0], e.meta["references"]), []).append(r)
    styles = {s: f"{int(sum(v))}/{len(v)} correct" for s, v in sorted(counts.items())}
    return sum(rewards) / len(rewards), styles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default='{"a_digits": 2, "b_digits": 1, "terms": 1}', help="synthetic_math options")
    ap.add_argument("--styles", default="decomposed,compressed", help="styles to train one student each on")
    ap.add_argument("--student", default="student-llama")
    ap.add_argument("--teacher", default="teacher")
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--teacher-steps", type=int, default=800)
    ap.add_argument("--student-seeds", type=int, default=1)
    ap.add_argument("--n-train", type=int, default=6000)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log-every", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task_opts = json.loads(args.task)
    task = get_task("synthetic_math", **task_opts)
    data = task.generate(args.n_train + args.n_test, seed=0)
    train, test = data[: args.n_train], data[args.n_train :]
    max_new = max(len(r) for e in test for r in e.meta["references"].values()) + 8
    tok = build_tokenizer("char")
    print(f"task synthetic_math {task_opts}: train {len(train)}, held-out {len(test)}; e.g. {test[0].prompt!r}")
    for s in STYLES:
        print(f"  {s:>10}: {test[0].meta['references'][s]}")
    summary: dict = {"task": task_opts, "students": {}, "teacher": None}

    for style in [s for s in args.styles.split(",") if s]:
        accs = []
        for seed in range(args.student_seeds):
            spec = replace(ZOO[args.student], seed=100 + seed)
            model = build_model(spec, build_tokenizer(spec.tokenizer))
            stok = build_tokenizer(spec.tokenizer)
            secs = train_sft(
                model,
                stok,
                [task.prompt(e) for e in train],
                [e.meta["references"][style] for e in train],
                steps=args.student_steps,
                batch=args.batch,
                lr=args.lr,
                seed=seed,
                device=args.device,
                log_every=args.log_every,
            )
            acc, _ = evaluate(model, stok, task, test, sample=False, seed=0, max_new=max_new)
            accs.append(acc)
            print(
                f"student {args.student} ({n_params(model) / 1e6:.2f}M) style={style:<10} seed={seed} "
                f"held-out greedy acc {acc:.3f}  (train {secs:.0f}s)",
                flush=True,
            )
        summary["students"][style] = {"acc": accs, "mean": sum(accs) / len(accs)}

    if args.teacher_steps > 0:
        spec = ZOO[args.teacher]
        model = build_model(spec, tok)
        rng = random.Random(7)
        mix = [e.meta["references"][STYLES[rng.randrange(len(STYLES))]] for e in train]
        secs = train_sft(
            model,
            tok,
            [task.prompt(e) for e in train],
            mix,
            steps=args.teacher_steps,
            batch=args.batch,
            lr=args.teacher_lr,
            seed=1,
            device=args.device,
            log_every=args.log_every,
        )
        g_acc, g_styles = evaluate(model, tok, task, test, sample=False, seed=0, max_new=max_new)
        s_acc, s_styles = evaluate(model, tok, task, test, sample=True, seed=1, max_new=max_new)
        print(
            f"teacher {args.teacher} ({n_params(model) / 1e6:.2f}M) all styles: held-out greedy acc {g_acc:.3f} "
            f"{g_styles}, sampled(T=1) acc {s_acc:.3f} {s_styles}  (train {secs:.0f}s)",
            flush=True,
        )
        summary["teacher"] = {"greedy": g_acc, "sampled": s_acc, "greedy_styles": g_styles, "sampled_styles": s_styles}

    st = summary["students"]
    if "decomposed" in st and "compressed" in st:
        summary["style_gap"] = st["decomposed"]["mean"] - st["compressed"]["mean"]
        print(f"style gap (decomposed - compressed): {summary['style_gap']:.3f}")
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
