"""`make demo` (``python -m pipelines.demo``): the knob turning both ways, on one screen.

The same KFP components as the ``calibrate`` pipeline (prep, train, evaluate, calibrate, distill, report, gate,
publish) run under ``kfp.local`` on the embedded file store with the offline zoo. ``kfp.local`` runs one task at
a time, so the demo schedules the graph itself: each independent task goes to one of ``--workers`` processes
(one torch thread each), e.g. the proxy's bootstrap next to the teacher's, both calibrations side by side, the
students of the original teacher while the teacher is being calibrated.

1. bootstrap: SFT the zoo teacher on a mix of answer styles (so it keeps a per-prompt choice of style for
   calibration to reshape) and the zoo proxy (another architecture and tokenizer) on every style;
2. calibrate the teacher once with eta < 0 (undistillable) and once with eta > 0 (distillable);
3. attack the original and each calibrated teacher with every attack (a student of the teacher's tokenizer,
   and one of another architecture and tokenizer than the proxy): distill, then evaluate greedily;
4. per eta: the report (trade-off table and plot) and the release gate; the undistillable teacher that passes
   is published as the hardened model.

The runner's logs go to ``.dg/demo/demo.log``; the terminal gets one line per task and the table. Every step is
published to the store and reused by the next run (the bootstrap included), so a second run is faster.
Settings (:data:`DEMO`) and why they are sized so: docs/results/demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dg_core.errors import DGError

#: The demo's settings. The task: one-digit factors, two-digit addend, three answer styles (a bare ``#90``, the
#: work written out ``7*8=56 56+34=90 #90``, the same with a reverse check); a small student learns the written-out
#: styles far better than the bare answer. The teacher is trained on every style of every problem, so it keeps a
#: per-prompt choice of style for calibration to reshape.
DEMO: dict[str, Any] = {
    "task_options": {
        "a_digits": 1,
        "b_digits": 1,
        "terms": 1,
        "term_digits": 2,
        "style_mix": {"compressed": 1.0, "decomposed": 1.0, "checked": 1.0},
    },
    "n": 3200,
    "splits": {"train": 0.875, "validation": 0.047, "test": 0.078},
    "teacher": "zoo:teacher",
    "teacher_sft": {
        "steps": 1500,
        "batch_size": 64,
        "lr": 2e-3,
        "options": {"style": "all", "warmup_steps": 50},
    },
    "proxy": "zoo:proxy",
    "proxy_sft": {"steps": 800, "batch_size": 32, "lr": 3e-3, "options": {"style": "all", "warmup_steps": 50}},
    "etas": [-0.5, 0.5],
    "beta": 0.05,
    "calibrate_steps": 30,
    "group_size": 8,
    "calibrate_lr": 5e-4,
    "calibrate_seed": 0,
    "calibrate_options": {
        "prompts_per_step": 16,
        "lora_r": 16,
        "normalize": "char",
        "cal_gate": "correct",
        "max_new_tokens": 40,
        "eval_every": 10,
        "eval_n": 100,
        "min_retention": 0.0,  # the release gate judges retention; keep the model for the table
        "preflight_accuracy": 0.5,
    },
    "eval_split": "test",
    "eval_limit": 250,
    "eval_options": {"k": 0, "max_new_tokens": 40},
    "attacks": [["student-llama", "kd"], ["student-gpt2", "sft"]],
    "attack_seeds": [0],
    "attack_steps": 500,
    "attack_samples": 2,
    "attack_max_new_tokens": 40,
    "attack_batch_size": 64,
    "attack_lr": 3e-3,
    "attack_limit": 1000,
    "attack_options": {"checkpoint_every": 0},
    "gate": {"min_retention": 0.9, "max_transfer": 0.6, "min_transfer": 1.1, "aggregate": "worst", "min_seeds": 1},
}

#: Reduced sizes for the test: the same graph in a few minutes of CPU, with no claim about the knob. The teacher
#: memorises a tiny training split and everything is scored on it, so accuracies (and retention) are defined.
SMALL: dict[str, Any] = {
    "n": 64,
    "splits": {"train": 0.8, "validation": 0.1, "test": 0.1},
    "teacher_sft": {"steps": 100, "batch_size": 32, "lr": 2e-3, "options": {"style": "all", "warmup_steps": 10}},
    "proxy_sft": {"steps": 10, "batch_size": 16, "lr": 3e-3, "options": {"style": "all", "warmup_steps": 2}},
    "calibrate_steps": 2,
    "group_size": 4,
    "calibrate_options": {
        "prompts_per_step": 4,
        "lora_r": 4,
        "normalize": "char",
        "cal_gate": "correct",
        "max_new_tokens": 40,
        "eval_every": 0,
        "eval_n": 16,
        "eval_split": "train",
        "sampled_k": 1,
        "min_retention": 0.0,
        "preflight_accuracy": 0.0,
    },
    "eval_split": "train",
    "eval_limit": 16,
    "eval_options": {"k": 0, "max_new_tokens": 40},
    "attack_steps": 20,
    "attack_limit": 16,
    "attack_batch_size": 8,
    "attack_max_new_tokens": 40,
}


# --------------------------------------------------------------------------------------------- worker side
# Each worker process runs components under kfp.local, its output appended to the log file.


def _init_worker(log_path: str, store_root: str, outputs_dir: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(
        {
            "DG_STORE_ROOT": store_root,
            "DG_THREADS": os.environ.get("DG_THREADS", "1"),
            "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        }
    )
    import logging
    import warnings

    from kfp import local

    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.INFO)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=outputs_dir)


def _component(name: str) -> Any:
    import importlib

    module, attr = {
        "prep": ("prep", "prep"),
        "train": ("train", "train"),
        "evaluate": ("evaluate", "evaluate"),
        "calibrate": ("calibrate", "calibrate"),
        "distill": ("distill", "distill"),
        "report": ("report", "report"),
        "gate": ("gate", "gate"),
        "publish": ("publish", "publish"),
    }[name]
    return getattr(importlib.import_module(f"components.{module}.component"), attr)


def _run(name: str, **kwargs: Any) -> Any:
    """Run one component under kfp.local; a failed task becomes a one-line DGError (the component's own)."""
    return _run_pipeline(_component(name), **kwargs)


def _run_pipeline(fn: Any, **kwargs: Any) -> Any:
    """Run a component or pipeline under kfp.local; a failure becomes a one-line DGError (the component's own)."""
    import re

    from pipelines.local import _Tee

    name = getattr(fn, "name", "task")
    tee = _Tee(sys.stdout)
    old, sys.stdout = sys.stdout, tee
    try:
        return fn(**kwargs)
    except RuntimeError as e:
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0]
        raise DGError(f"{name}: {tee.failures[-1] if tee.failures else plain}") from None
    finally:
        sys.stdout = old
        sys.stdout.flush()


def job_prep(cfg: dict[str, Any], root: str) -> dict[str, Any]:
    opts = {"n": cfg["n"], "splits": cfg["splits"], "task_options": cfg["task_options"]}
    t = _run(
        "prep", task="synthetic_math", source="synthetic", seed=cfg.get("data_seed", 0), options=opts, store_root=root
    )
    return {"dataset": t.outputs["Output"]}


def job_train(cfg: dict[str, Any], root: str, model: str, sft: dict[str, Any], dataset: str) -> dict[str, Any]:
    t = _run(
        "train",
        model=model,
        dataset=dataset,
        steps=sft["steps"],
        batch_size=sft["batch_size"],
        lr=sft["lr"],
        options=sft["options"],
        store_root=root,
    )
    return {"model": t.outputs["Output"]}


def _evaluate(cfg: dict[str, Any], root: str, model: str, dataset: str, **label: Any) -> dict[str, Any]:
    full = {"role": "teacher", "teacher": "original", "student": "", "method": "", "seed": 0, **label}
    t = _run(
        "evaluate",
        model=model,
        dataset=dataset,
        split=cfg["eval_split"],
        limit=cfg["eval_limit"],
        options=cfg["eval_options"],
        store_root=root,
        **full,
    )
    return t.outputs["Output"]


def job_eval_teacher(cfg: dict[str, Any], root: str, model: str, dataset: str) -> dict[str, Any]:
    return {"record": _evaluate(cfg, root, model, dataset)}


def job_calibrate(cfg: dict[str, Any], root: str, teacher: str, proxy: str, dataset: str, eta: float) -> dict:
    t = _run(
        "calibrate",
        teacher=teacher,
        proxies=[proxy],
        dataset=dataset,
        eta=eta,
        beta=cfg["beta"],
        steps=cfg["calibrate_steps"],
        group_size=cfg["group_size"],
        lr=cfg["calibrate_lr"],
        seed=cfg["calibrate_seed"],
        options=cfg["calibrate_options"],
        store_root=root,
    )
    model, calibration = t.outputs["Output"], t.outputs["calibration"]
    if not model:
        raise DGError(f"calibration eta={eta:+g} refused the teacher; see its card {calibration}")
    record = _evaluate(cfg, root, model, dataset, teacher="calibrated")
    return {"model": model, "calibration": calibration, "record": record}


def job_attack(cfg: dict[str, Any], root: str, teacher: str, side: str, attack: list, seed: int, dataset: str) -> dict:
    student, method = attack
    t = _run(
        "distill",
        teacher=teacher,
        student=f"zoo:{student}",
        dataset=dataset,
        method=method,
        seed=seed,
        reinit=True,
        steps=cfg["attack_steps"],
        n_samples=cfg["attack_samples"],
        max_new_tokens=cfg["attack_max_new_tokens"],
        batch_size=cfg["attack_batch_size"],
        lr=cfg["attack_lr"],
        limit=cfg["attack_limit"],
        options=cfg["attack_options"],
        store_root=root,
    )
    record = _evaluate(
        cfg,
        root,
        t.outputs["Output"],
        dataset,
        role="student",
        teacher=side,
        student=f"zoo:{student}",
        method=method,
        seed=seed,
    )
    return {"record": record}


def job_judge(
    cfg: dict[str, Any],
    root: str,
    eta: float,
    teachers: list[dict],
    students: list[list[dict]],
    model: str,
    calibration: str,
    release: str,
    publish: bool,
) -> dict[str, Any]:
    """Gate, report and (when the gate passed and ``publish``) publish one calibrated teacher.

    They run as one small pipeline under kfp.local, as in the calibrate pipeline: the report and publish take
    the gate's decision as an input artifact, which kfp.local passes only between tasks of a pipeline."""
    from kfp import dsl

    from dg_core import store

    gate_c, report_c, publish_c = _component("gate"), _component("report"), _component("publish")
    g = cfg["gate"]
    dest = store.join(root, "hardened", f"demo-eta{eta:+g}")

    def judge(teacher_original: dict, teacher_calibrated: dict, students_original: list, students_calibrated: list,
              model: str, eta: float, calibration: str, release: str, publish_model: bool, dest: str,
              store_root: str) -> str:  # fmt: skip
        gt = gate_c(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
                    students_original=students_original, students_calibrated=students_calibrated, model=model,
                    eta=eta, min_retention=g["min_retention"], max_transfer=g["max_transfer"],
                    min_transfer=g["min_transfer"], aggregate=g["aggregate"], min_seeds=g["min_seeds"],
                    store_root=store_root)  # fmt: skip
        r = report_c(teacher_original=teacher_original, teacher_calibrated=teacher_calibrated,
                     students_original=students_original, students_calibrated=students_calibrated, floors=[],
                     attack_steps=cfg["attack_steps"], eta=eta, decision=gt.outputs["decision"],
                     store_root=store_root)  # fmt: skip
        with dsl.If(gt.outputs["Output"] == True):  # noqa: E712 - a KFP condition
            with dsl.If(publish_model == True):  # noqa: E712
                publish_c(model=model, decision=gt.outputs["decision"], calibration=calibration, release=release,
                          releases_prefix="", hardened_prefix="", dest=dest, store_root=store_root)  # fmt: skip
        return r.outputs["Output"]

    # kfp reads real annotations (this module's are strings under `from __future__ import annotations`)
    judge.__annotations__ = {"teacher_original": dict, "teacher_calibrated": dict, "students_original": list,
                             "students_calibrated": list, "model": str, "eta": float, "calibration": str,
                             "release": str, "publish_model": bool, "dest": str, "store_root": str,
                             "return": str}  # fmt: skip
    judge = dsl.pipeline(name="demo-judge")(judge)
    t = _run_pipeline(judge, teacher_original=teachers[0], teacher_calibrated=teachers[1],
                      students_original=students[0], students_calibrated=students[1], model=model, eta=eta,
                      calibration=calibration, release=release, publish_model=publish, dest=dest,
                      store_root=root)  # fmt: skip
    report_dir = store.fetch(t.output)
    from dg_core.gate import read_result

    verdict = read_result(json.loads((report_dir / "report.json").read_text())["gate"]["uri"])
    hardened = dest if verdict["passed"] and publish and store.is_published(dest) else ""
    return {"html": str(report_dir / "report.html"), "report": t.output, "gate": verdict, "hardened": hardened}


# --------------------------------------------------------------------------------------------- scheduler


@dataclass
class Task:
    """One line on the terminal: a job (one or a few components) and the tasks it waits for."""

    key: str
    label: str
    fn: Callable[..., dict[str, Any]]
    args: Callable[[dict[str, dict[str, Any]]], tuple]  # results so far -> job arguments
    deps: list[str] = field(default_factory=list)


def _fmt_secs(s: float) -> str:
    return f"{s:.0f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def plan(cfg: dict[str, Any], root: str) -> list[Task]:
    """The demo's graph, in the order tasks should start when several are ready (longest chains first)."""
    etas = cfg["etas"]
    tasks = [
        Task("prep", "prep dataset", job_prep, lambda r: (cfg, root)),
        Task(
            "teacher",
            "bootstrap teacher (train)",
            job_train,
            lambda r: (cfg, root, cfg["teacher"], cfg["teacher_sft"], r["prep"]["dataset"]),
            ["prep"],
        ),
        Task(
            "proxy",
            "bootstrap proxy (train)",
            job_train,
            lambda r: (cfg, root, cfg["proxy"], cfg["proxy_sft"], r["prep"]["dataset"]),
            ["prep"],
        ),
    ]
    for eta in etas:
        tasks.append(
            Task(
                f"cal{eta:+g}",
                f"calibrate eta={eta:+g}, evaluate",
                job_calibrate,
                lambda r, eta=eta: (cfg, root, r["teacher"]["model"], r["proxy"]["model"], r["prep"]["dataset"], eta),
                ["teacher", "proxy", "prep"],
            )
        )
    tasks.append(
        Task(
            "eval-original",
            "evaluate original teacher",
            job_eval_teacher,
            lambda r: (cfg, root, r["teacher"]["model"], r["prep"]["dataset"]),
            ["teacher"],
        )
    )
    for side in ["original", *(f"cal{e:+g}" for e in etas)]:
        for attack in cfg["attacks"]:
            for seed in cfg["attack_seeds"]:
                name = "/".join(attack)
                src = "original" if side == "original" else f"eta={side[3:]}"
                model_of = (
                    (lambda r: r["teacher"]["model"]) if side == "original" else (lambda r, s=side: r[s]["model"])
                )
                tasks.append(
                    Task(
                        f"{side}|{name}|{seed}",
                        f"distill {name} (seed {seed}) from {src}, evaluate",
                        job_attack,
                        lambda r, m=model_of, s=side, a=attack, sd=seed: (
                            cfg,
                            root,
                            m(r),
                            "original" if s == "original" else "calibrated",
                            a,
                            sd,
                            r["prep"]["dataset"],
                        ),
                        ["teacher", "prep"] + ([] if side == "original" else [side]),
                    )
                )
    for eta in etas:
        side = f"cal{eta:+g}"
        keys = {
            s: [f"{s}|{'/'.join(a)}|{sd}" for a in cfg["attacks"] for sd in cfg["attack_seeds"]]
            for s in ("original", side)
        }
        tasks.append(
            Task(
                f"judge{eta:+g}",
                f"report, gate{', publish' if eta < 0 else ''} eta={eta:+g}",
                job_judge,
                lambda r, eta=eta, side=side, keys=keys: (
                    cfg,
                    root,
                    eta,
                    [r["eval-original"]["record"], r[side]["record"]],
                    [[r[k]["record"] for k in keys["original"]], [r[k]["record"] for k in keys[side]]],
                    r[side]["model"],
                    r[side]["calibration"],
                    r["teacher"]["model"],
                    eta < 0,
                ),
                ["eval-original", side, *keys["original"], *keys[side]],
            )
        )

    # Start the long chain (teacher -> calibrate -> students of calibrated) before the side branches.
    def rank(t: Task) -> int:
        fixed = {"prep": 0, "teacher": 1, "proxy": 2}
        if t.key in fixed:
            return fixed[t.key]
        if "|" in t.key:  # attacks: those of calibrated teachers first (they end the longest chain)
            return 4 if t.key.startswith("cal") else 5
        return 6 if t.key.startswith("judge") else 3

    return sorted(tasks, key=rank)


def run_graph(tasks: list[Task], workers: int, init: tuple, echo: Callable[[str], None]) -> dict[str, dict]:
    """Run tasks on ``workers`` processes as their dependencies finish; stop at the first failure."""
    import multiprocessing as mp

    results: dict[str, dict[str, Any]] = {}
    pending = list(tasks)
    running: dict[Future, tuple[Task, float]] = {}
    t_all = time.monotonic()
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=init
    ) as pool:
        while pending or running:
            for t in [t for t in pending if all(d in results for d in t.deps)]:
                if len(running) >= workers:
                    break
                pending.remove(t)
                running[pool.submit(t.fn, *t.args(results))] = (t, time.monotonic())
                echo(f"[{_fmt_secs(time.monotonic() - t_all):>6}] start {t.label}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for f in done:
                t, t0 = running.pop(f)
                try:
                    results[t.key] = f.result()
                except Exception as e:  # noqa: BLE001 - reported as one line; the log has the rest
                    for other in running:
                        other.cancel()
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise DGError(f"task '{t.label}' failed: {reason}") from None
                echo(f"[{_fmt_secs(time.monotonic() - t_all):>6}] done  {t.label} ({_fmt_secs(time.monotonic() - t0)})")
    return results


# --------------------------------------------------------------------------------------------- summary


def summary(cfg: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the demo showed: teacher accuracy/retention per eta, per attack accuracies and transfer, gates."""
    acc0 = results["eval-original"]["record"]["accuracy"]
    teachers = [{"teacher": "original", "eta": None, "accuracy": acc0, "retention": 1.0}]
    attacks: dict[str, dict[str, Any]] = {}
    gates = []
    for eta in cfg["etas"]:
        side, judge = f"cal{eta:+g}", results[f"judge{eta:+g}"]
        g = judge["gate"]
        teachers.append(
            {
                "teacher": f"eta={eta:+g}",
                "eta": eta,
                "accuracy": results[side]["record"]["accuracy"],
                "retention": g["retention"],
            }
        )
        for name, a in g["attacks"].items():
            row = attacks.setdefault(name, {"attack": name, "original": a["acc_original"]})
            row[f"eta={eta:+g}"] = {"accuracy": a["acc_calibrated"], "transfer": a.get("transfer")}
        gates.append(
            {
                "eta": eta,
                "direction": g["direction"],
                "passed": bool(g["passed"]),
                "reasons": g["reasons"],
                "report": judge["html"],
                "hardened": judge["hardened"],
            }
        )
    return {"teachers": teachers, "attacks": list(attacks.values()), "gates": gates}


def table(s: dict[str, Any]) -> list[str]:
    """The summary as terminal lines (fits one screen)."""
    etas = [t["teacher"] for t in s["teachers"][1:]]
    lines = ["", f"{'teacher':<22}{'accuracy':>10}{'retention':>11}"]
    lines += [f"{t['teacher']:<22}{t['accuracy']:>10.3f}{t['retention']:>11.3f}" for t in s["teachers"]]
    head = f"{'attack: student accuracy':<26}{'<- original':>12}" + "".join(
        f"{'<- ' + e + ' (transfer)':>26}" for e in etas
    )
    lines += ["", head]
    for a in s["attacks"]:
        cells = "".join(
            f"{a[e]['accuracy']:>17.3f} ({a[e]['transfer']:.2f})"
            if a[e]["transfer"] is not None
            else f"{a[e]['accuracy']:>17.3f} (  - )"
            for e in etas
        )
        lines.append(f"{a['attack']:<26}{a['original']:>12.3f}{cells}")
    lines.append("")
    for g in s["gates"]:
        verdict = "PASSED" if g["passed"] else "FAILED"
        lines.append(f"gate eta={g['eta']:+g} ({g['direction']}): {verdict}: {'; '.join(g['reasons'])}")
    for g in s["gates"]:
        lines.append(f"report eta={g['eta']:+g}: {g['report']}")
    hardened = [g["hardened"] for g in s["gates"] if g["hardened"]]
    lines.append(f"hardened model: {hardened[0]}" if hardened else "hardened model: none published (gate failed)")
    return lines


def settings(small: bool, overrides: list[str]) -> dict[str, Any]:
    """DEMO, reduced by SMALL for tests, then key=value overrides (JSON values)."""
    cfg = json.loads(json.dumps(DEMO))
    if small:
        cfg.update(json.loads(json.dumps(SMALL)))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in cfg:
            raise DGError(f"demo setting {item!r}: expected key=value with key one of {', '.join(cfg)}")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", default=None, help="store root (default $DG_STORE_ROOT or ./.dg/store)")
    ap.add_argument("--dir", default=".dg/demo", help="log file, kfp.local outputs and summary.json go here")
    ap.add_argument("--workers", type=int, default=2, help="processes running tasks side by side")
    ap.add_argument("--small", action="store_true", help="reduced sizes (tests): the graph, not the knob")
    ap.add_argument("overrides", nargs="*", help="demo settings as key=JSON (see pipelines/demo.py DEMO)")
    args = ap.parse_args(argv)
    from dg_core import store

    out = Path(args.dir).resolve()
    log = out / "demo.log"
    try:
        cfg = settings(args.small, args.overrides)
        backend, key = store.open_store(args.store or store.default_root())
        root = backend.uri(key)
        (out / "kfp").mkdir(parents=True, exist_ok=True)
        log.write_text("")
        print(f"demo: {len(cfg['etas'])} calibrations x {len(cfg['attacks'])} attacks; store {root}; log {log}")
        t0 = time.monotonic()
        results = run_graph(
            plan(cfg, root), args.workers, (str(log), root, str(out / "kfp")), lambda s: print(s, flush=True)
        )
        s = summary(cfg, results)
        s["seconds"] = time.monotonic() - t0
        (out / "summary.json").write_text(json.dumps(s, indent=2, default=str))
    except DGError as e:
        print(f"demo failed: {e}\nlog: {log}", file=sys.stderr)
        return 2
    for line in table(s):
        print(line)
    print(f"demo: {_fmt_secs(s['seconds'])} wall; summary {out / 'summary.json'}; log {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
