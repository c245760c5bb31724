"""Stage `attack`: the attack suite — probe students distilled from a teacher, and the knob's effect.

A config lists attacks, each a student, a method, a budget (steps) and seeds, plus any `distill` field to
override. Run against one teacher it gives each attack's student accuracy next to the undistilled student
(the floor). Given a calibrated teacher too, every attack is repeated against it and the table adds

- **student transfer** = mean acc(student ← calibrated) / mean acc(student ← original), per attack;
- **teacher retention** = acc(calibrated) / acc(original).

Every evaluation is also emitted as a gate record (see :mod:`dg_core.gate`), so the pipeline can pass
``records`` straight to the release gate. Outputs: ``attack.json`` and ``attack.md`` in one artifact.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dg_core import store
from dg_core.config import StageConfig, from_dict, option
from dg_core.data import with_task_budget
from dg_core.distill import stage as distill_stage
from dg_core.distill.common import load_trainable, output_uris
from dg_core.distill.methods import METHODS
from dg_core.distill.stage import Config as DistillConfig
from dg_core.distill.training import TrainingConfig
from dg_core.errors import DGError
from dg_core.evaluate import Config as EvalConfig
from dg_core.evaluate import evaluate_ref

log = logging.getLogger(__name__)
ATTACK_FILE = "attack.json"
_ENTRY_ONLY = {"name", "seeds"}
_FIXED = {"teacher", "dataset", "split", "seed", "output", "device"}


def _distill_fields() -> set[str]:

    return {f.name for f in dataclasses.fields(DistillConfig)}


@dataclass
class Config(StageConfig):
    teacher: str = option("", "Original teacher (model reference).")
    calibrated: str = option("", "Calibrated teacher; when set, transfer and retention are reported.")
    dataset: str = option("", "Prepared dataset URI.")
    train_split: str = option("train", "Split whose prompts the teacher answers for distillation.")
    eval_split: str = option("test", "Held-out split the students and teachers are scored on.")
    attacks: list[dict] = option(
        [
            {"student": "zoo:student-llama", "method": "sft", "steps": 300, "seeds": [0, 1, 2]},
            {"student": "zoo:student-gpt2", "method": "xtok", "steps": 300, "seeds": [0, 1, 2]},
        ],
        "Attacks: {student, method, steps, seeds, [name], [any distill field]}.",
    )
    distill: dict = option({}, "Distill fields applied to every attack (an attack's own fields win).")
    eval_k: int = option(0, "Samples per prompt for sampled accuracy (0: greedy only).", ge=0)
    eval_limit: int = option(0, "Score only the first N eval examples (0 = all).", ge=0)
    max_new_tokens: int = option(
        0,
        "Response token budget when evaluating (0: the task's own budget, e.g. 512 for math, 64 for the zoo's arithmetic).",
        ge=0,
    )
    output: str = option("", "Where to publish attack.json (default: <store root>/attacks/<config hash>).")
    device: str = option("auto", "auto, cpu or cuda.")

    def check(self) -> None:
        if not self.teacher:
            raise DGError("config field 'teacher' is required: expected a model reference")
        if not self.dataset:
            raise DGError("config field 'dataset' is required: expected a prepared dataset URI")
        plan_attacks(self.attacks, self.distill)


@dataclass(frozen=True)
class AttackJob:
    """One probe student to distil from each teacher: the unit the attack stage, the KFP attack loop and the
    experiment runner (demo, bench/knob.py) all iterate over, so they cannot disagree on what an attack is."""

    attack: str  # display name: <student>/<method>, or the entry's own name
    student: str
    method: str
    seed: int
    settings: dict  # distill fields for this job (no teacher/dataset/split/seed/device); the rest are defaults


def plan_attacks(attacks: list[dict], distill: dict | None = None) -> list[AttackJob]:
    """Expand attack entries ``{student, method, [steps], [seeds], [name], [any distill field]}`` (with the
    shared ``distill`` fields; an entry's own win) into one job per seed. Zoo students are re-initialised from
    the seed unless told otherwise, so seeds give independent students."""
    distill = dict(distill or {})
    known = _distill_fields()
    bad = sorted(set(distill) - known) or sorted(set(distill) & _FIXED)
    if bad:
        raise DGError(f"config field 'distill.{bad[0]}': expected a distill field other than {sorted(_FIXED)}")
    if not attacks:
        raise DGError("config field 'attacks' is empty: expected at least one {student, method, steps, seeds}")

    jobs = []
    for i, a in enumerate(attacks):
        if not isinstance(a, dict) or "method" not in a:
            raise DGError(f"config field 'attacks[{i}]': got {a!r}, expected a mapping with at least 'method'")
        bad = sorted(set(a) - known - _ENTRY_ONLY)
        if bad or set(a) & _FIXED:
            name = (bad or sorted(set(a) & _FIXED))[0]
            raise DGError(
                f"config field 'attacks[{i}].{name}': not an attack setting; expected name, seeds or a "
                "distill field other than teacher/dataset/split/seed/output/device"
            )
        if a["method"] not in METHODS:
            raise DGError(
                f"config field 'attacks[{i}].method': got {a['method']!r}, expected one of {', '.join(METHODS)}"
            )
        seeds = a.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise DGError(f"config field 'attacks[{i}].seeds': got {seeds!r}, expected a non-empty list of ints")
        settings = {"student": "zoo:student-llama", **distill, **{k: v for k, v in a.items() if k not in _ENTRY_ONLY}}
        settings.setdefault("reinit", str(settings["student"]).startswith("zoo:"))
        for seed in seeds:
            jobs.append(AttackJob(attack_name(a), str(settings["student"]), a["method"], seed, settings))
    return jobs


def attack_name(a: dict[str, Any]) -> str:
    student = str(a.get("student", "zoo:student-llama"))
    return a.get("name") or f"{student.removeprefix('zoo:').rstrip('/').rsplit('/', 1)[-1]}/{a['method']}"


def _eval(cfg: Config, model: Any, loaded: Any = None) -> dict[str, Any]:

    ec = from_dict(
        EvalConfig,
        {
            "model": model if isinstance(model, str) else "in-memory",
            "dataset": cfg.dataset,
            "split": cfg.eval_split,
            "limit": cfg.eval_limit,
            "k": cfg.eval_k,
            "max_new_tokens": cfg.max_new_tokens,
            "device": cfg.device,
        },
    )
    res = evaluate_ref(ec, loaded=loaded)
    res.pop("_rows", None)
    return res


def _floor(cfg: Config, job: AttackJob) -> dict[str, Any]:
    """The undistilled student: the start model, re-initialised by the job's seed when the attack does so."""

    reinit = bool(job.settings["reinit"])
    model, tok = load_trainable(job.student, seed=job.seed, reinit=reinit, settings=TrainingConfig(), device=cfg.device)
    return _eval(cfg, job.student, loaded=(model.eval(), tok))


def _stats(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def run(cfg: Config) -> dict:
    """Distil and score every attack against each teacher; publish and return the table and gate records."""

    cfg = with_task_budget(cfg)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("output", "device")}
    out, _ = output_uris("attacks", cfg.output, params)
    teachers = {"original": cfg.teacher}
    if cfg.calibrated:
        teachers["calibrated"] = cfg.calibrated
    records: list[dict[str, Any]] = []
    teacher_acc: dict[str, dict[str, Any]] = {}
    for role, ref in teachers.items():
        res = _eval(cfg, ref)
        teacher_acc[role] = {k: res[k] for k in res if k in ("accuracy", "n") or k.endswith(("_accuracy", "_ci95"))}
        records.append({"model": "teacher", "teacher": role, "accuracy": res["accuracy"], "n": res["n"], "uri": ref})
    rows = []
    jobs = plan_attacks(cfg.attacks, cfg.distill)
    for name in dict.fromkeys(j.attack for j in jobs):
        mine = [j for j in jobs if j.attack == name]
        first = mine[0]
        floor = _floor(cfg, first)
        row: dict[str, Any] = {
            "attack": name,
            "method": first.method,
            "steps": first.settings.get("steps"),
            "floor": floor["accuracy"],
        }
        for role, ref in teachers.items():
            accs = []
            for job in mine:
                fixed = {"teacher": ref, "dataset": cfg.dataset, "split": cfg.train_split, "device": cfg.device}
                dcfg = from_dict(distill_stage.Config, {**job.settings, **fixed, "seed": job.seed})
                d = distill_stage.run(dcfg)
                res = _eval(cfg, d["model"])
                accs.append(res["accuracy"])
                records.append(
                    {
                        "model": "student",
                        "teacher": role,
                        "attack": name,
                        "student": name.split("/")[0],
                        "method": job.method,
                        "seed": job.seed,
                        "accuracy": res["accuracy"],
                        "n": res["n"],
                        "uri": d["model"],
                    }
                )
                log.info("attack %s <- %s teacher, seed %d: accuracy %.3f", name, role, job.seed, res["accuracy"])
            row[role] = _stats(accs)
        if "calibrated" in row and row["original"]["mean"] > 0:
            row["transfer"] = row["calibrated"]["mean"] / row["original"]["mean"]
        rows.append(row)
    summary: dict[str, Any] = {"teachers": teacher_acc, "attacks": rows, "records": records}
    if "calibrated" in teacher_acc and teacher_acc["original"]["accuracy"] > 0:
        summary["retention"] = teacher_acc["calibrated"]["accuracy"] / teacher_acc["original"]["accuracy"]
    md = attack_markdown(summary)
    with tempfile.TemporaryDirectory(prefix="dg-attack-") as tmp:
        (Path(tmp) / ATTACK_FILE).write_text(json.dumps({**summary, "config": params}, indent=2, sort_keys=True))
        (Path(tmp) / "attack.md").write_text(md)
        store.publish(tmp, out, metadata={"kind": "attack", "teacher": cfg.teacher, "calibrated": cfg.calibrated})
    return {**summary, "attack": out}


def attack_markdown(summary: dict[str, Any]) -> str:
    """The attack table: floor, accuracy from each teacher (mean ± std over seeds), transfer."""
    t = summary["teachers"]
    cal = "calibrated" in t
    lines = [f"Teacher accuracy: original {t['original']['accuracy']:.3f}"]
    if cal:
        lines[0] += f", calibrated {t['calibrated']['accuracy']:.3f} (retention {summary.get('retention', 0):.3f})"
    lines += ["", "| attack | steps | floor | ← original | " + ("← calibrated | transfer |" if cal else "")]
    lines.append("|---|---|---|---|" + ("---|---|" if cal else ""))
    for r in summary["attacks"]:
        o = r["original"]
        cells = [
            r["attack"],
            str(r.get("steps")),
            f"{r['floor']:.3f}",
            f"{o['mean']:.3f} ± {o['std']:.3f} (n={o['n']})",
        ]
        if cal:
            c = r["calibrated"]
            cells += [f"{c['mean']:.3f} ± {c['std']:.3f} (n={c['n']})", f"{r.get('transfer', float('nan')):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def read_attack(uri: str) -> dict[str, Any]:
    d = store.fetch(uri)
    p = d / ATTACK_FILE
    if not p.is_file():
        raise DGError(f"{uri}: no {ATTACK_FILE}, expected an artifact written by `dguard attack`")
    return json.loads(p.read_text())
