"""Held-out accuracy of every attack method against its undistilled floor, through the `attack` stage.

    .venv/bin/python bench/methods.py [--preset heldout|small] [--teacher-steps N] [--steps N] [--seeds 0,1]

A zoo teacher is fine-tuned on synthetic math (``a*b+c``, single digits, decomposed answers; 256 training
prompts, 64 held out), then the attack suite distils probe students from its samples with each method and
scores them greedily on the held-out prompts: `sft`, `kd` (forward KL on top-20 + tail), `gkd` (on-policy,
reverse KL, λ = 0.5, started from a briefly SFT'd student, since a random student's samples are noise),
`xtok` to the GPT-2/Unigram student (span alignment, and ULD + CE). Prints the attack table (mean ± std over
seeds) and the wall time. One thread; a few minutes on a laptop-class CPU. ``--preset small`` reproduces the
test suite's setting (what the students could copy, scored on the prompts they were distilled on).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset",
        choices=("heldout", "small"),
        default="heldout",
        help="heldout: a*b+c, 256 train / 64 held-out prompts; small: the test suite's setting (the 32-prompt "
        "multiplication table, a student-llama teacher, scored on the distillation prompts)",
    )
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    from dg_core.config import from_dict
    from dg_core.data import get_task
    from dg_core.data.artifact import write_manifest
    from dg_core.data.example import write_jsonl
    from dg_core.distill import stage, suite, train_stage

    seeds = [int(s) for s in args.seeds.split(",")]
    small = args.preset == "small"
    args.teacher_steps = args.teacher_steps or (200 if small else 800)
    args.steps = args.steps or (100 if small else 300)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dg-bench-methods-") as root:
        os.environ["DG_STORE_ROOT"] = f"file://{root}"
        d = Path(root) / "dataset"
        d.mkdir()
        if small:
            task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=0)
            ex = task.generate(36, seed=0)
            write_jsonl(d / "train.jsonl", ex[:32])
            write_jsonl(d / "test.jsonl", ex[32:])
        else:
            task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=1, term_digits=1)
            ex = task.generate(320, seed=0)
            write_jsonl(d / "train.jsonl", ex[:256])
            write_jsonl(d / "test.jsonl", ex[256:])
        write_manifest(
            d, {"task": task.spec(), "splits": {"train": {"file": "train.jsonl"}, "test": {"file": "test.jsonl"}}}
        )
        lr = 5e-3 if small else 3e-3
        common = {"batch_size": 32, "lr": lr, "warmup_steps": 10 if small else 20, "checkpoint_every": 0}
        teacher_model = "zoo:student-llama" if small else "zoo:teacher"
        teacher = train_stage.run(
            from_dict(
                train_stage.Config,
                {"model": teacher_model, "dataset": str(d), "steps": args.teacher_steps, **common},
            )
        )["model"]
        t_teacher = time.perf_counter() - t0
        distill = {**common, "max_new_tokens": 24 if small else 32, "n_samples": 2}
        sft_start = 40 if small else 60
        gkd_steps = 60 if small else args.steps // 2
        start = stage.run(
            from_dict(
                stage.Config,
                {"teacher": teacher, "dataset": str(d), "method": "sft", "reinit": True, "steps": sft_start, **distill},
            )
        )["model"]
        attacks = [
            {"student": "zoo:student-llama", "method": "sft", "steps": args.steps, "seeds": seeds},
            {"student": "zoo:student-llama", "method": "kd", "steps": args.steps, "seeds": seeds},
            {
                "name": f"student-llama(sft{sft_start})/gkd",
                "student": start,
                "method": "gkd",
                "steps": gkd_steps,
                "seeds": seeds,
                "reinit": False,
            },
            {"student": "zoo:student-gpt2", "method": "sft", "steps": args.steps, "seeds": seeds},
            {"student": "zoo:student-gpt2", "method": "xtok", "steps": args.steps, "seeds": seeds},
            {
                "name": "student-gpt2/xtok-uld",
                "student": "zoo:student-gpt2",
                "method": "xtok",
                "xtok_loss": "uld",
                "ce_weight": 1.0,
                "steps": args.steps,
                "seeds": seeds,
            },
        ]
        out = suite.run(
            from_dict(
                suite.Config,
                {
                    "teacher": teacher,
                    "dataset": str(d),
                    "attacks": attacks,
                    "distill": distill,
                    "eval_split": "train" if small else "test",
                    "max_new_tokens": 24 if small else 32,
                },
            )
        )
        scored = "greedy accuracy on the 32 distillation prompts" if small else "held-out greedy accuracy, 64 prompts"
        print(
            f"preset {args.preset}: teacher {teacher_model} SFT {args.teacher_steps} steps ({t_teacher:.0f} s); "
            f"students {args.steps} steps (gkd {gkd_steps} after a {sft_start}-step SFT start), seeds {seeds}; {scored}"
        )
        print(suite.attack_markdown(out))
        print(f"wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
