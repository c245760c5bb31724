"""Stage ``calibrate``: RFT of a teacher with the distillability knob η, guarded and gated.

Flow: load the prepared dataset, the teacher and the frozen proxies → measure the original teacher (held-out
greedy and sampled accuracy, r_cal of its samples) → pre-flight: refuse a teacher that is not sound on the task
→ calibrate (LoRA on π₀, checkpoints with resume, early stopping) → measure again → gate on teacher retention →
publish the adapter and the merged model (only when the gate passed) and the calibration card (always).

Outputs under ``output``: ``adapter/``, ``model/`` (merged, loadable by any stage), ``card/`` (card.json,
card.md), ``checkpoint/`` (resume state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch

from dg_core import store
from dg_core.base.advantages import gated_cal_advantage
from dg_core.base.generate import generate_tokens
from dg_core.calibrate.card import artifact_digest, build_card, model_readme, write_card
from dg_core.calibrate.grpo import (
    CalibrationSettings,
    make_policy,
    run_calibration,
    sample_and_score,
    sampled_accuracy,
    step_advantages,
)
from dg_core.calibrate.guards import gate, preflight, sample_style_sign, style_sign, style_soundness
from dg_core.calibrate.rewards import CalibrationReward
from dg_core.calibrate.trl_engine import require_vllm, run_calibration_trl
from dg_core.checkpoint import Checkpointer, config_hash, resume_option
from dg_core.config import addressed, option
from dg_core.data import load_split, task_of, with_task_budget
from dg_core.distill.trainer import stage_metrics
from dg_core.errors import DGError
from dg_core.models import load_model, merge_lora, save_adapter, save_model
from dg_core.models.limits import (
    check_generation_fits,
    check_models_text,
    check_scoring_fits,
    check_zoo_refs,
    is_real_model,
)
from dg_core.store import output_uri
from dg_core.utils import json_safe, seed_everything, set_threads_from_env

log = logging.getLogger(__name__)
#: Runs on every rank under `accelerate launch`/torchrun (dg_core.launch): data-parallel, rank 0 publishes.
MULTI_PROCESS = True


@dataclass
class Config(CalibrationSettings):
    teacher: str = option("", "The teacher to calibrate: store URI, local dir, zoo:<name> or hub id.")
    proxies: list[str] = option(["zoo:proxy"], "Frozen calibration proxies q (smaller than the students).")
    dataset: str = option("", "Prepared dataset artifact (from `dguard prep`).")
    train_split: str = option("train", "Split whose prompts calibration samples on.")
    eval_split: str = option("validation", "Held-out split for teacher evaluation (before/during/after).")
    output: str = option("", "Output URI (default: <store root>/calibrate/<teacher>-eta<eta>-<config hash>).")
    device: str = option("auto", "auto (CUDA when present), cpu or cuda.")
    dtype: str = option("auto", "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16.")
    sampled_k: int = option(4, "Samples per held-out prompt for sampled accuracy and r_cal measurements.", ge=1)
    preflight_accuracy: float = option(
        0.9,
        "Guard: calibrate only a teacher whose sampled held-out accuracy is at least this (0: skip the check).",
        ge=0,
        le=1,
    )
    min_retention: float = option(
        0.95, "Gate: calibrated/original held-out greedy accuracy below this marks the run failed.", ge=0
    )
    hardest_style: str = option(
        "",
        "Guard: the reference style a probe student learns worst (bench/style_learnability.py measures it). Before "
        "training, calibration refuses when r_cal does not rank it lowest, since eta < 0 would then push the teacher "
        "towards a style students learn better, or when the teacher, made to start its responses with that "
        "style's steps, answers below min_retention of its greedy accuracy ('': off; needs a dataset with "
        "reference styles).",
        late=True,
    )
    allow_zoo: bool = option(
        False, "Allow zoo: proxies with a real (20M+ parameter) teacher; they are random-init toys (plumbing tests)."
    )
    proxy_max_nll_ratio: float = option(
        0.75,
        "Guard: refuse a proxy whose per-character NLL on the task's text exceeds this share of a uniform guess "
        "over its vocabulary (a random-init proxy sits near 1; 0: off). For a toy (zoo-sized) teacher: a warning.",
        ge=0,
    )
    run_id: str = option("", "Run id attached to pushed metrics.")
    progress: bool = option(True, "Show progress: a bar in a terminal, else a log line every log_every steps.")
    log_every: int = option(10, "Steps between progress log lines when not in a terminal (a pipeline pod).", ge=1)
    resume: str = resume_option()

    def check(self) -> None:
        if not self.teacher:
            raise DGError("config field 'teacher' is required: expected a model reference (e.g. zoo:teacher)")
        if not self.dataset:
            raise DGError("config field 'dataset' is required: expected a prepared dataset URI")
        if not self.proxies:
            raise DGError("config field 'proxies': empty, expected at least one proxy model reference")
        if self.engine == "native" and self.use_vllm:
            raise DGError("config field 'use_vllm': vLLM rollouts run on engine trl, expected engine: trl")
        if bool(self.guide_ask.strip()) != (self.guide_samples > 0):
            raise DGError(
                f"config fields 'guide_ask' ({self.guide_ask!r}) and 'guide_samples' ({self.guide_samples}): "
                "expected both set (a request and a count > 0) or neither"
            )
        if self.guide_samples and self.engine == "trl":
            raise DGError("config field 'guide_samples': guided groups run on engine native, expected engine: native")


SETTINGS_FIELDS = tuple(f for f in CalibrationSettings.__dataclass_fields__)


def settings_of(cfg: Config) -> dict[str, Any]:
    """The loop's settings plus the guard/gate fields (what the card records and the output hash covers)."""
    keys = SETTINGS_FIELDS + (
        "proxies",
        "train_split",
        "eval_split",
        "sampled_k",
        "preflight_accuracy",
        "min_retention",
        "hardest_style",
    )
    data = addressed(cfg)
    return {k: data[k] for k in keys if k in data}


def default_output(cfg: Config) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.teacher.split("/")[-1]) or "teacher"
    params = {"teacher": cfg.teacher, "dataset": cfg.dataset, **settings_of(cfg)}
    return output_uri("calibrate", params, label=f"{name}-eta{cfg.eta:+g}")


def measure_teacher(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    examples: list,
    cal: CalibrationReward,
    cfg: CalibrationSettings,
    k: int,
    seed: int,
    style_rows: dict[str, list[float]] | None = None,
    sample_rows: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Held-out greedy accuracy, sampled accuracy at the calibration temperature, and r_cal of the samples
    (``style_rows``: the references' r_cal when the caller has scored them already). Where the examples carry
    reference styles, also r_cal of the correct samples by the style their trace follows (``own``: steps of the
    teacher's making), into ``sample_rows`` when given: what calibration ranks is these, not the references."""
    t0 = time.perf_counter()
    greedy, _ = sampled_accuracy(model, tokenizer, task, examples, greedy=True, max_new_tokens=cfg.max_new_tokens)
    t1 = time.perf_counter()
    sampled, roll = sample_and_score(
        model,
        tokenizer,
        task,
        examples,
        n=k,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        seed=seed,
    )
    t_gen = time.perf_counter() - t1
    reps = [e for e in examples for _ in range(k)]
    prompts = lambda tok: [task.prompt(e, tok) for e in reps]  # noqa: E731
    texts = roll.texts
    r_cal = cal(prompts, texts, None, roll.finished, reps)
    correct = torch.tensor([s.correct for s in task.score_batch(reps, texts)])
    by_style, styled = style_push(task, reps, texts, correct, r_cal, k, cfg)
    if sample_rows is not None:
        sample_rows.update(by_style)
    return {
        "greedy_accuracy": greedy,
        "sampled_accuracy": sampled,
        "r_cal_mean": float(r_cal.mean()),
        "r_cal_correct_mean": float(r_cal[correct].mean()) if bool(correct.any()) else float("nan"),
        "response_chars": sum(len(t) for t in texts) / max(1, len(texts)),
        "truncation_rate": 1.0 - sum(roll.finished) / max(1, len(roll.finished)),
        "tokens_per_second": sum(len(r) for r in roll.response_ids) / max(t_gen, 1e-9),
        "seconds": time.perf_counter() - t0,
        "n": float(len(examples)),
        **{
            f"r_cal_style_{k}": sum(v) / len(v)
            for k, v in (style_rows or style_r_cal_rows(task, examples, cal)).items()
        },
        **styled,
    }


def style_push(
    task: Any,
    reps: list,
    texts: list[str],
    correct: torch.Tensor,
    r_cal: torch.Tensor,
    k: int,
    cfg: CalibrationSettings,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The teacher's samples (``k`` per prompt, prompt-major) by the style their trace follows
    (``Task.trace_style``). Over the correct ones: each style's share, mean r_cal and summed calibration advantage
    (``cal_push_*``, standardised among each prompt's correct samples; sums to 0 over the styles). Over all of them:
    each style's accuracy and the first step's whole advantage ``Â_task + η·Â_cal`` summed by style per sample
    (``step_push_*``: > 0, the step makes the style more likely). The correctness term is in the latter, so a trap
    the teacher answers worse in than its other styles shows losing share at η = 0, and at any η the calibration
    term does not outweigh (session 15: bare answers lost share at η = 0 and −1 alike). Returns
    the correct samples' r_cal by style (the sample guard's rows) and the card's fields."""
    ok = correct.view(-1, k).float()
    a_cal = gated_cal_advantage(r_cal.view(-1, k), ok, "correct").view(-1).tolist()
    a_step = step_advantages(correct.float(), r_cal, cfg, k).tolist()
    n_ok, n = max(1, int(correct.sum())), max(1, len(texts))
    rows: dict[str, list[float]] = {}
    cal: dict[str, float] = {}
    seen: dict[str, list[float]] = {}
    step: dict[str, float] = {}
    for e, t, r, a, s, c in zip(reps, texts, r_cal.tolist(), a_cal, a_step, correct.tolist()):
        if not (style := task.trace_style(e, t)):
            continue
        seen.setdefault(style, []).append(float(c))
        step[style] = step.get(style, 0.0) + s / n
        if c:
            rows.setdefault(style, []).append(r)
            cal[style] = cal.get(style, 0.0) + a / n_ok
    fields = {
        **{f"sampled_share_{s}": len(v) / n_ok for s, v in sorted(rows.items())},
        **{f"r_cal_sampled_{s}": sum(v) / len(v) for s, v in sorted(rows.items())},
        **{f"cal_push_{s}": v for s, v in sorted(cal.items())},
        **{f"sampled_accuracy_{s}": sum(v) / len(v) for s, v in sorted(seen.items())},
        **{f"step_push_{s}": v for s, v in sorted(step.items())},
    }
    return rows, fields


def style_r_cal_rows(task: Any, examples: list, cal: CalibrationReward) -> dict[str, list[float]]:
    """r_cal of each example's reference in each style all examples carry ({} below two styles): which style the
    knob pushes towards, read before training (eta < 0 towards the lowest), so a sign the proxy gets wrong shows on
    the card and stops the ``hardest_style`` guard."""
    styles = set.intersection(*(set(ex.meta.get("references") or {}) for ex in examples)) if examples else set()
    if len(styles) < 2:
        return {}
    prompts = lambda tok: [task.prompt(e, tok) for e in examples]  # noqa: E731
    return {
        s: cal(prompts, [e.meta["references"][s] for e in examples], examples=examples).tolist() for s in sorted(styles)
    }


def style_accuracy(model: Any, tokenizer: Any, task: Any, examples: list, style: str, max_new_tokens: int) -> float:
    """Greedy accuracy of ``model`` when its response starts with each reference's steps in ``style`` (everything
    before the stated answer): how sound a teacher is at the style calibration would move it to."""
    steps = [e.meta["references"][style] for e in examples]
    steps = [r[: task.answer_start(e, r)] for e, r in zip(examples, steps)]
    prompts = [task.prompt(e, tokenizer) + s for e, s in zip(examples, steps)]
    # the steps spend the response's budget: what is left keeps prompt + response within what was checked to fit
    longest = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in steps)
    left = max(1, max_new_tokens - longest)
    roll = generate_tokens(model, tokenizer, prompts, n=1, max_new_tokens=left, do_sample=False)
    scores = task.score_batch(examples, [s + t for s, t in zip(steps, roll.texts)])
    return sum(x.reward for x in scores) / len(scores)


def check_proxies(cfg: Config, teacher: Any, tok: Any, proxies: list, task: Any, examples: list) -> None:
    """Before any rollout: no zoo proxy stands in for a real teacher's (unless asked), the teacher's budget fits
    its context, each proxy can score the teacher's longest responses after its own prompt, and each proxy
    models the task's text (else r_cal is noise). One line naming the model otherwise."""

    check_zoo_refs(teacher, cfg.teacher, {"proxy": list(cfg.proxies)}, allow_zoo=cfg.allow_zoo)
    asked = [task.ask(e, cfg.guide_ask) for e in examples] if cfg.guide_samples else []
    check_generation_fits(
        teacher,
        tok,
        [task.prompt(e, tok) for e in [*examples, *asked]],
        cfg.max_new_tokens,
        name=cfg.teacher,
        role="teacher",
    )
    texts = [t for e in examples[:8] for t in (e.prompt, e.reference or e.answer) if t]
    real = is_real_model(teacher)
    for ref, (m, t) in zip(cfg.proxies, proxies):
        p_prompts = [task.prompt(e, t) for e in examples]
        check_scoring_fits(
            m, t, p_prompts, tok, cfg.max_new_tokens, texts, name=ref, source=f"teacher {cfg.teacher}", role="proxy"
        )
        try:
            ratio = check_models_text(m, t, texts, max_ratio=cfg.proxy_max_nll_ratio, name=ref)
            log.info("proxy %s: NLL/char %.2f of a uniform guess on the task's text", ref, ratio)
        except DGError as e:
            if real:
                raise
            log.warning("%s (teacher %s is zoo-sized: going on)", e, cfg.teacher)


def resolve_engine(cfg: Config, world: int) -> str:
    """``auto`` is trl where only trl runs (several processes, vLLM rollouts), else native (faster on CPU)."""
    engine = cfg.engine
    if engine == "auto":
        engine = "trl" if world > 1 or cfg.use_vllm else "native"
    if world > 1 and engine != "trl":
        raise DGError(f"calibrate: {world} processes need engine trl (the native loop runs in one process)")
    if engine == "trl" and cfg.guide_samples:
        raise DGError("config field 'guide_samples': guided groups run on engine native (one process)")
    if engine == "trl" and cfg.lora_r == 0:
        raise DGError("config field 'lora_r': 0 (full fine-tuning) runs on engine native, expected lora_r > 0")
    if cfg.use_vllm:
        require_vllm()
    return engine


def process_layout() -> tuple[int, int]:
    """(WORLD_SIZE, RANK) of a stage started by ``accelerate launch``/torchrun; (1, 0) for a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def run(cfg: Config) -> dict:

    cfg = with_task_budget(cfg)
    set_threads_from_env()
    t_all = time.perf_counter()
    out = cfg.output or default_output(cfg)
    world, rank = process_layout()
    cfg = dataclasses.replace(cfg, engine=resolve_engine(cfg, world))  # the card and checkpoints name the real one
    engine = cfg.engine
    if cfg.resume != "never" and (done := published_summary(cfg, out)) is not None:
        log.info("calibration already published at %s (same settings, same teacher): reusing", out)
        return done
    task = task_of(cfg.dataset)
    train = load_split(cfg.dataset, cfg.train_split)
    held = load_split(cfg.dataset, cfg.eval_split)[: cfg.eval_n]
    if not held:
        raise DGError(f"{cfg.dataset}: split {cfg.eval_split!r} is empty, expected held-out examples")
    seed_everything(cfg.seed)
    device = cfg.device
    if world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():  # one GPU per local rank
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    teacher, tok = load_model(cfg.teacher, device=device, dtype=cfg.dtype)
    device = next(teacher.parameters()).device
    proxies = []
    for ref in cfg.proxies:
        m, t = load_model(ref, device=str(device), dtype=cfg.dtype)
        for p in m.parameters():
            p.requires_grad_(False)
        proxies.append((m, t))
    for p in teacher.parameters():
        p.requires_grad_(False)
    check_proxies(cfg, teacher, tok, proxies, task, list(train) + list(held))
    cal_kw = dict(
        normalize=cfg.normalize,
        combine=cfg.combine,
        span=cfg.span,
        task=task,
        reference=cfg.reference,
        eta_sign=cfg.eta,  # only combine='worst' reads it; at eta = 0 r_cal has no weight
        batch_size=cfg.score_batch,
    )

    t0 = time.perf_counter()
    cal0 = CalibrationReward(teacher, tok, proxies, **cal_kw)
    style_rows = style_r_cal_rows(task, held, cal0)  # scoring the references only: before any rollout
    if cfg.hardest_style:
        sign = style_sign(style_rows, cfg.hardest_style, cfg.eta)
        if sign.problem:
            raise DGError(f"pre-flight: {sign.problem}")
        (log.info if sign.resolved else log.warning)(
            "hardest_style %r: %s%s",
            cfg.hardest_style,
            sign.summary,
            "" if sign.resolved else " (not below 0 at the 95% bound: a close call, more references would tell)",
        )
    sample_rows: dict[str, list[float]] = {}
    before = measure_teacher(teacher, tok, task, held, cal0, cfg, cfg.sampled_k, cfg.seed, style_rows, sample_rows)
    log.info("teacher before calibration: %s", before)
    if sample_rows:
        log.info(
            "the teacher's correct samples by style (share, mean r_cal, calibration advantage per correct sample;"
            " eta > 0 pushes along it, eta < 0 against): %s",
            ", ".join(
                f"{k} {before[f'sampled_share_{k}']:.0%} {before[f'r_cal_sampled_{k}']:.3f}"
                f" {before[f'cal_push_{k}']:+.3f}"
                for k in sample_rows
            ),
        )
        log.info(
            "the teacher's samples by style (accuracy, the first step's push at eta %+g: > 0 grows it): %s",
            cfg.eta,
            ", ".join(
                f"{k} {before[f'sampled_accuracy_{k}']:.2f} {before[f'step_push_{k}']:+.3f}"
                for k in sorted(x.removeprefix("step_push_") for x in before if x.startswith("step_push_"))
            ),
        )
    if cfg.hardest_style:
        sign = sample_style_sign(sample_rows, cfg.hardest_style, cfg.eta)
        if sign.problem:
            raise DGError(f"pre-flight: {sign.problem}")
        if sign.summary:
            (log.info if sign.resolved else log.warning)(
                "hardest_style %r on the teacher's samples: %s%s",
                cfg.hardest_style,
                sign.summary,
                "" if sign.resolved else " (not below 0 at the 95% bound: a close call)",
            )
    if by_style := {k[len("r_cal_style_") :]: v for k, v in before.items() if k.startswith("r_cal_style_")}:
        low, high = min(by_style, key=by_style.get), max(by_style, key=by_style.get)
        log.info(
            "r_cal per reference style: %s; eta < 0 pushes towards %r, eta > 0 towards %r",
            ", ".join(f"{k} {v:.3f}" for k, v in by_style.items()),
            low,
            high,
        )
    if cfg.hardest_style:
        acc = style_accuracy(teacher, tok, task, held, cfg.hardest_style, cfg.max_new_tokens)
        before[f"accuracy_style_{cfg.hardest_style}"] = acc
        problem = style_soundness(acc, before["greedy_accuracy"], cfg.hardest_style, cfg.min_retention, cfg.eta)
        if problem:
            raise DGError(f"pre-flight: {problem}")
        log.info(
            "hardest_style %r: the teacher answers %.3f after its steps (greedy accuracy %.3f)",
            cfg.hardest_style,
            acc,
            before["greedy_accuracy"],
        )
    pf = preflight(before["sampled_accuracy"], len(held) * cfg.sampled_k, cfg.preflight_accuracy)
    if cfg.preflight_accuracy > 0 and not pf.ok:
        raise DGError(
            f"pre-flight: {pf.reason}; calibrating an unsound teacher invites reward hacking "
            "(train it further, or set preflight_accuracy=0 to skip this guard)"
        )
    t_measure = time.perf_counter() - t0
    if before["greedy_accuracy"] <= 0:  # retention is undefined whatever training does: stop before training
        verdict = gate(before["greedy_accuracy"], 0.0, cfg.min_retention)
        log.warning("calibration stopped after the 'before' measurement: %s", verdict.reason)
        return _publish_card(cfg, out, before, None, None, pf, verdict, t_all, t_measure, writer=rank == 0)

    policy, ref_model = make_policy(teacher, cfg)
    cal = CalibrationReward(policy, tok, proxies, **cal_kw)
    metrics = stage_metrics("calibrate", cfg.run_id or None) if rank == 0 else None
    ckpt = Checkpointer(
        store.join(out, "checkpoint"), cfg.checkpoint_every, config_hash=config_hash(cfg), resume=cfg.resume
    )
    loop = run_calibration_trl if engine == "trl" else run_calibration
    result = loop(
        policy,
        tok,
        task,
        train,
        cfg,
        cal_reward=cal,
        eval_examples=held,
        base_accuracy=before["greedy_accuracy"],
        checkpointer=ckpt,
        metrics=metrics,
        ref_model=ref_model,
        progress=cfg.progress,
        log_every=cfg.log_every,
    )
    t1 = time.perf_counter()
    after = measure_teacher(policy, tok, task, held, cal, cfg, cfg.sampled_k, cfg.seed)
    t_measure += time.perf_counter() - t1
    log.info("teacher after calibration: %s", after)
    verdict = gate(before["greedy_accuracy"], after["greedy_accuracy"], cfg.min_retention, result.stopped_reason)
    if metrics is not None:
        metrics.set("calibrate_retention", verdict.retention or 0.0)
        metrics.set("calibrate_passed", 1.0 if verdict.passed else 0.0)
        metrics.flush()

    outputs: dict[str, str | None] = {"adapter": None, "model": None}

    meta = {
        "stage": "calibrate",
        "eta": cfg.eta,
        "teacher": cfg.teacher,
        "teacher_sha256": artifact_digest(cfg.teacher),
    }
    if verdict.passed and rank > 0:  # only rank 0 writes to the store
        outputs = {"adapter": store.join(out, "adapter") if cfg.lora_r > 0 else None, "model": store.join(out, "model")}
    elif verdict.passed:
        planned = {"adapter": store.join(out, "adapter") if cfg.lora_r > 0 else None, "model": store.join(out, "model")}
        card = _card(cfg, before, after, result, pf, verdict, t_all, t_measure, planned)
        if cfg.lora_r > 0:
            outputs["adapter"] = save_adapter(policy, store.join(out, "adapter"), metadata=meta, base=cfg.teacher)
            merged = merge_lora(policy)
        else:
            merged = policy
        outputs["model"] = save_model(
            merged, tok, store.join(out, "model"), metadata=meta, files={"README.md": model_readme(card)}
        )
    else:
        log.warning("calibration failed the gate, nothing published but the card: %s", verdict.reason)
    return _publish_card(cfg, out, before, after, result, pf, verdict, t_all, t_measure, outputs, writer=rank == 0)


def published_summary(cfg: Config, out: str) -> dict | None:
    """The summary of a finished calibration at ``out`` with these settings on this teacher's content, or None.

    A rerun (a pipeline retried, an experiment resumed) then returns the published model as it is: without this
    it measured, resumed at the final checkpoint and republished, and the model's content address changed with the
    timings in its README while its weights did not."""
    card = store.join(out, "card")
    if not store.is_published(card):
        return None
    meta = store.read_manifest(card).get("metadata", {})
    summary = meta.get("summary")
    if not summary or meta.get("config_hash") != config_hash(cfg):
        return None
    if meta.get("teacher_sha256") != artifact_digest(cfg.teacher):
        return None
    if any(summary.get(k) and not store.is_published(summary[k]) for k in ("model", "adapter")):
        return None
    return {**summary, "reused": True}


def _publish_card(
    cfg: Config,
    out: str,
    before: dict,
    after: dict | None,
    result: Any,
    pf: Any,
    verdict: Any,
    t_all: float,
    t_measure: float,
    outputs: dict | None = None,
    *,
    writer: bool = True,
) -> dict:
    """Write the calibration card (always, by the ``writer``: rank 0) and return the stage summary; ``result``
    None: nothing was trained."""
    outputs = outputs or {"adapter": None, "model": None}
    card = _card(cfg, before, after, result, pf, verdict, t_all, t_measure, outputs)
    training = card["training"]
    summary = {
        "status": card["status"],
        "reason": verdict.reason,
        "retention": verdict.retention,
        "output": out,
        "card": store.join(out, "card"),
        "model": outputs["model"],
        "adapter": outputs["adapter"],
        "before": before,
        "after": after,
        "steps": training["steps_done"],
        "stopped_early": training["stopped_early"],
        "seconds": time.perf_counter() - t_all,
    }
    if writer:  # the card goes last: its summary is what a rerun with the same settings returns
        meta = {
            "kind": "calibration-card",
            "status": card["status"],
            "config_hash": config_hash(cfg),
            "teacher_sha256": artifact_digest(cfg.teacher),
            "summary": json_safe(summary),
        }
        with tempfile.TemporaryDirectory(prefix="dg-card-") as tmp:
            write_card(card, tmp)
            store.publish(tmp, store.join(out, "card"), metadata=meta)
    return summary


def _card(
    cfg: Config,
    before: dict,
    after: dict | None,
    result: Any,
    pf: Any,
    verdict: Any,
    t_all: float,
    t_measure: float,
    outputs: dict,
) -> dict:
    """The calibration card's body (see :func:`dg_core.calibrate.card.build_card`)."""
    hist = result.history if result is not None else []
    training = {
        "steps_done": result.steps_done if result is not None else 0,
        "resumed_from": result.resumed_from if result is not None else 0,
        "stopped_early": result.stopped_reason if result is not None else "before training: " + verdict.reason,
        "train_seconds": result.seconds if result is not None else 0.0,
        "measure_seconds": t_measure,
        "total_seconds": time.perf_counter() - t_all,
        "final_kl": hist[-1]["kl"] if hist else None,
        "final_reward_cal": hist[-1]["reward_cal"] if hist else None,
        "final_sampled_accuracy": hist[-1]["accuracy"] if hist else None,
        "tokens_per_second": sum(h.get("tokens_per_second", 0.0) for h in hist) / len(hist) if hist else None,
        "truncation_rate": sum(h.get("truncation_rate", 0.0) for h in hist) / len(hist) if hist else None,
        "retention": verdict.retention,
        "preflight": pf.reason,
        "history": hist,
        "evals": result.evals if result is not None else [],
    }
    return build_card(
        settings=settings_of(cfg),
        teacher=cfg.teacher,
        proxies=list(cfg.proxies),
        dataset=cfg.dataset,
        before=before,
        after=after,
        training=training,
        status="passed" if verdict.passed else "failed",
        reason=verdict.reason,
        outputs=outputs,
    )
