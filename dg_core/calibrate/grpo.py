"""The calibration loop: group-relative policy gradient with two rewards and a KL anchor to π₀.

For each prompt, G responses are sampled from π_θ = π₀ + LoRA. ``r_task`` and ``r_cal`` are standardised
*separately* within each group and combined as ``A = Â_task + η·Â_cal``; the loss is the clipped policy
gradient on ``A`` plus ``β·KL(π_θ‖π₀)`` with the per-token k3 estimator. π₀ is the same module with its adapter
switched off (no second teacher copy); full fine-tuning (``lora_r=0``) keeps a frozen copy instead.

Pure math first (tested against brute force), then sampling/scoring helpers, then :func:`run_calibration`.
Each step draws its prompts and sampling noise from ``(seed, step)``, so a run resumed from a checkpoint
(adapter, optimizer, step, history) takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dg_core.config import StageConfig, option
from dg_core.data.example import Example
from dg_core.data.tasks import Task
from dg_core.errors import DGError
from dg_core.generate import TokenBatch, generate_tokens

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- math


def group_standardize(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``(r − mean_group) / (std_group + eps)`` per row of a ``[groups, G]`` tensor.

    With ``mask``, statistics use the masked-in entries only and masked-out entries get 0; a group with fewer
    than two entries (or no spread) carries no signal and gets 0. Population std (ddof=0).
    """
    r = rewards.float()
    m = torch.ones_like(r, dtype=torch.bool) if mask is None else mask.bool()
    mf = m.float()
    n = mf.sum(-1, keepdim=True)
    mean = (r * mf).sum(-1, keepdim=True) / n.clamp(min=1)
    var = (((r - mean) ** 2) * mf).sum(-1, keepdim=True) / n.clamp(min=1)
    std = var.sqrt()
    out = (r - mean) / (std + eps) * mf
    return torch.where((n >= 2) & (std > 0), out, torch.zeros_like(out))


def combine_advantages(a_task: torch.Tensor, a_cal: torch.Tensor, eta: float) -> torch.Tensor:
    """``A = Â_task + η·Â_cal`` — η is the knob: > 0 distillable, < 0 undistillable, 0 plain RFT."""
    return a_task + eta * a_cal


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ‖π_ref) on tokens sampled from π_θ: ``e^{Δ} − Δ − 1``, ``Δ = log π_ref − log π_θ``.

    Unbiased (its expectation under π_θ is the exact KL), always ≥ 0, and differentiable in ``logp``.
    """
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1.0


def clipped_pg_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> torch.Tensor:
    """Per-token PPO-clip surrogate ``−min(ρA, clip(ρ, 1−ε, 1+ε_high)A)``; ``advantages`` broadcast over tokens."""
    a = advantages if advantages.dim() == logp.dim() else advantages.unsqueeze(-1)
    ratio = torch.exp(logp - old_logp)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    return -torch.minimum(ratio * a, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high) * a)


def aggregate(token_loss: torch.Tensor, mask: torch.Tensor, how: str, total_tokens: int, total_seqs: int):
    """Sum of a micro-batch's share of the step loss: ``token-mean`` over all completion tokens of the step, or
    ``seq-mean`` (mean over each sequence's tokens, then over sequences, as in the original GRPO)."""
    m = mask.float()
    if how == "token-mean":
        return (token_loss * m).sum() / max(1, total_tokens)
    per_seq = (token_loss * m).sum(-1) / m.sum(-1).clamp(min=1)
    return per_seq.sum() / max(1, total_seqs)


# ------------------------------------------------------------------------------------------ settings


@dataclass
class CalibrationSettings(StageConfig):
    """Knobs of the RFT loop (the ``calibrate`` stage adds its inputs and outputs to these)."""

    eta: float = option(-1.0, "The knob: < 0 undistillable, > 0 distillable, 0 plain RFT (control).")
    beta: float = option(0.05, "Weight of the KL(pi_theta||pi_0) anchor (per-token k3).", ge=0)
    group_size: int = option(8, "Responses sampled per prompt (G).", ge=2)
    prompts_per_step: int = option(16, "Prompts per optimizer step (per process).", ge=1)
    steps: int = option(30, "Optimizer steps.", ge=1)
    lr: float = option(
        5e-4,
        "AdamW learning rate. Measured on the knob bench: 2e-3 cost an eta=0 teacher 11 points of accuracy in 40 "
        "steps (Adam scales the small, mostly-zero policy gradients up to full steps); 5e-4 kept it at 1.000.",
        gt=0,
    )
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping (<= 0: off).")
    temperature: float = option(1.0, "Sampling temperature for the groups.", gt=0)
    max_new_tokens: int = option(
        0,
        "Longest sampled response, in teacher tokens (0: the task's own budget, e.g. 512 for math, 64 for the zoo's arithmetic).",
        ge=0,
    )
    clip_eps: float = option(0.2, "PPO clip range (lower).", gt=0)
    clip_eps_high: float = option(0.2, "PPO clip range (upper; DAPO raises it).", gt=0)
    ppo_epochs: int = option(1, "Passes over each sampled batch (> 1 makes the clip bite).", ge=1)
    micro_batch: int = option(64, "Sequences per forward/backward (gradient accumulation over the step).", ge=1)
    score_batch: int = option(16, "Sequences per r_cal scoring forward pass (teacher and each proxy).", ge=1)
    gradient_checkpointing: str = option(
        "auto",
        "Recompute activations in backward: on, off, or auto (on for models of 20M+ parameters, i.e. real ones).",
        choices=("auto", "on", "off"),
    )
    sample_batch: int = option(256, "Sequences per generate() call.", ge=1)
    loss_agg: str = option("token-mean", "Loss aggregation.", choices=("token-mean", "seq-mean"))
    lora_r: int = option(16, "LoRA rank; 0 means full fine-tuning (then a frozen copy of pi_0 is kept).", ge=0)
    lora_alpha: int = option(32, "LoRA alpha.", ge=1)
    normalize: str = option(
        "char",
        "r_cal length normalisation: sum (the sequence log-ratio), token (per own token) or char (per character). "
        "Measured on synthetic math: the sum is dominated by response length (eta < 0 then buys long answers), "
        "per-character r_cal ranks styles by how hard a small model finds them.",
        choices=("sum", "token", "char"),
    )
    combine: str = option("mean", "How several proxies combine.", choices=("mean", "min", "max", "worst"))
    reference: str = option(
        "base", "r_cal reference: pi_0 (base) or the current pi_theta.", choices=("base", "current")
    )
    cal_gate: str = option(
        "correct",
        "Guard: r_cal counted among correct samples only (correct), scaled by r_task (multiply), or ungated (none).",
        choices=("correct", "multiply", "none"),
    )
    eval_every: int = option(10, "Held-out teacher evaluation every N steps (0: only before/after).", ge=0)
    eval_n: int = option(128, "Held-out examples per evaluation.", ge=1)
    stop_accuracy_ratio: float = option(
        0.9, "Guard: stop when held-out accuracy < this x its value before calibration (0: off).", ge=0
    )
    stop_kl: float = option(0.0, "Guard: stop when the mean per-token KL to pi_0 exceeds this (0: off).", ge=0)
    checkpoint_every: int = option(10, "Checkpoint to the store every N steps (0: off).", ge=0)
    seed: int = option(0, "Seed for prompt order, sampling and the adapter init.")


# ----------------------------------------------------------------------------------------- sampling


def rows(batch: TokenBatch, idx: slice) -> TokenBatch:
    """A micro-batch of a packed batch."""
    return TokenBatch(batch.input_ids[idx], batch.attention_mask[idx], batch.response_mask[idx])


def token_logprobs(
    model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token | prefix) at every position of a right-padded batch ``[B, T-1]`` (aligned with
    ``batch.targets_mask()``), and the policy entropy there; chunked over positions, never a ``[B, T, V]``
    tensor (:func:`dg_core.models.logprobs.token_logprobs`)."""
    from dg_core.models.logprobs import token_logprobs as chunked

    out = chunked(model, batch.input_ids, batch.attention_mask, temperature=temperature, with_entropy=with_entropy)
    return out.logprobs, out.entropy


def sampled_accuracy(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    greedy: bool = False,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[float, list[str]]:
    """Mean task reward over ``n`` samples per example (greedy: one deterministic answer each), and the texts."""
    acc, roll = sample_and_score(
        model,
        tokenizer,
        task,
        examples,
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        batch_size=batch_size,
        seed=seed,
    )
    return acc, roll.texts


def sample_and_score(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    greedy: bool = False,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[float, Any]:
    """:func:`sampled_accuracy` with the whole :class:`~dg_core.generate.Rollouts` (which samples finished)."""
    if not examples:
        raise DGError("sampled_accuracy: no examples to evaluate")
    prompts = [task.prompt(e, tokenizer) for e in examples]
    k = 1 if greedy else n
    roll = generate_tokens(
        model,
        tokenizer,
        prompts,
        n=k,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        batch_size=batch_size,
        seed=seed,
    )
    reps = [e for e in examples for _ in range(k)]
    scores = task.score_batch(reps, roll.texts)
    return sum(s.reward for s in scores) / len(scores), roll


# ------------------------------------------------------------------------------------------- loop


@dataclass
class CalibrationResult:
    """What the loop did: per-step history, evaluations, and why it stopped early (if it did)."""

    steps_done: int
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    stopped_reason: str | None = None
    resumed_from: int = 0
    seconds: float = 0.0


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def run_calibration(
    policy: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    train: Sequence[Example],
    cfg: CalibrationSettings,
    *,
    cal_reward: Any = None,
    eval_examples: Sequence[Example] = (),
    base_accuracy: float | None = None,
    checkpointer: Any = None,
    metrics: Any = None,
    ref_model: torch.nn.Module | None = None,
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 10,
) -> CalibrationResult:
    """Calibrate ``policy`` in place (a PEFT model, or a plain model for full fine-tuning with ``ref_model``).

    ``cal_reward(prompts, responses) -> Tensor`` is r_cal (a :class:`~dg_core.calibrate.rewards.CalibrationReward`);
    without it r_cal is 0 and the loop is plain RFT. ``base_accuracy`` is the held-out greedy accuracy of π₀, for
    early stopping. Returns after ``cfg.steps`` steps, or earlier when a guard trips.
    """
    if cfg.max_new_tokens == 0:  # 0: the task's own budget (the stage resolves it; direct callers too)
        cfg = dataclasses.replace(cfg, max_new_tokens=task.max_new_tokens)
    from accelerate import Accelerator

    from dg_core.calibrate.guards import early_stop_reason, gated_cal_advantage
    from dg_core.calibrate.rewards import TaskReward
    from dg_core.checkpoint import first_nonfinite
    from dg_core.models.logprobs import enable_checkpointing, wants_checkpointing
    from dg_core.models.lora import adapter_disabled

    if not train:
        raise DGError("calibrate: the training split is empty, expected prompts to calibrate on")
    is_peft = hasattr(policy, "disable_adapter")
    if not is_peft and ref_model is None:
        raise DGError("calibrate: full fine-tuning needs ref_model (a frozen copy of pi_0); or attach LoRA")

    cuda = torch.cuda.is_available() and next(policy.parameters()).device.type == "cuda"
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise DGError("calibrate: the policy has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, extra = checkpointer.resume(policy, optimizer) if checkpointer is not None else (0, {})
    if wants_checkpointing(policy, cfg.gradient_checkpointing):
        enable_checkpointing(policy)
    model, optimizer = accelerator.prepare(policy, optimizer)
    core = accelerator.unwrap_model(model)
    rank = accelerator.process_index
    result = CalibrationResult(
        steps_done=start,
        history=list(extra.get("history", [])),
        evals=list(extra.get("evals", [])),
        resumed_from=start,
        stopped_reason=extra.get("stopped") or None,
    )
    task_reward = TaskReward(task)
    G, P = cfg.group_size, min(cfg.prompts_per_step, len(train))
    t_start = time.perf_counter()
    from dg_core.progress import Progress

    bar = Progress(
        cfg.steps, f"calibrate eta={cfg.eta:+g}", enabled=progress and rank == 0, log_every=log_every, initial=start
    )

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # r_cal's pi_0 term can reuse the KL anchor's reference pass when it scores pi_0 with the policy's tokenizer
    # at temperature 1 (the anchor's log-probs are tempered), on rows whose sampled ids are what the text encodes to
    reuse_reference = (
        cal_reward is not None
        and getattr(cal_reward, "reference", None) == "base"
        and getattr(cal_reward, "teacher_tokenizer", None) is tokenizer
        and getattr(cal_reward, "append_eos", False)
        and getattr(cal_reward, "add_bos", None) is None
        and hasattr(cal_reward, "normalize_reference")
        and ref_model is None
        and cfg.temperature == 1.0
    )
    # a run that a guard stopped stays stopped when its pod restarts
    for step in range(start + 1, cfg.steps + 1 if result.stopped_reason is None else start + 1):
        t0 = time.perf_counter()
        sseed = _step_seed(cfg.seed, step, rank)
        rng = random.Random(sseed)
        batch = [train[i] for i in rng.sample(range(len(train)), P)]
        prompts = [task.prompt(e, tokenizer) for e in batch]
        try:
            roll = generate_tokens(
                core,
                tokenizer,
                prompts,
                n=G,
                temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens,
                batch_size=cfg.sample_batch,
                seed=sseed,
            )
        except RuntimeError as e:
            if "probability tensor contains" not in str(e):
                raise
            raise DGError(f"calibrate: the policy's probabilities became NaN at step {step}: lower lr") from None
        t_sample = time.perf_counter() - t0
        gen_tokens = sum(len(r) for r in roll.response_ids)
        reps = [e for e in batch for _ in range(G)]
        r_task = task_reward(reps, roll.texts)
        packed = roll.batch(pad_id)
        B = packed.input_ids.shape[0]
        mb = cfg.micro_batch
        n_tok = packed.n_response_tokens
        # reference (pi_0) and, for several epochs, old-policy log-probs: no gradients
        ref_lp, old_lp = [], []
        with torch.no_grad(), accelerator.autocast():
            for i in range(0, B, mb):
                part = rows(packed, slice(i, i + mb))
                if ref_model is None:
                    with adapter_disabled(core):
                        ref_lp.append(token_logprobs(core, part, cfg.temperature)[0])
                else:
                    ref_lp.append(token_logprobs(ref_model, part, cfg.temperature)[0])
                if cfg.ppo_epochs > 1:
                    old_lp.append(token_logprobs(core, part, cfg.temperature)[0])
        if cal_reward is not None:
            reference = None
            source = _prompt_source(task, batch, G)
            if reuse_reference:
                reference = _reference_from_anchor(cal_reward, tokenizer, roll, packed, ref_lp, mb, source)
            r_cal = cal_reward(source, roll.texts, reference, roll.finished)
            r_cal = torch.as_tensor(r_cal, dtype=torch.float32)
        else:
            r_cal = torch.zeros_like(r_task)
        t_score = time.perf_counter() - t0 - t_sample
        a_task = group_standardize(r_task.view(P, G))
        a_cal = gated_cal_advantage(r_cal.view(P, G), r_task.view(P, G), cfg.cal_gate)
        adv = combine_advantages(a_task, a_cal, cfg.eta).reshape(-1)
        model.train()
        kl_sum = ent_sum = loss_sum = 0.0
        grad_norm = 0.0
        for epoch in range(cfg.ppo_epochs):
            optimizer.zero_grad(set_to_none=True)
            for j, i in enumerate(range(0, B, mb)):
                part = rows(packed, slice(i, i + mb))
                with accelerator.autocast():
                    lp, ent = token_logprobs(model, part, cfg.temperature, with_entropy=epoch == 0)
                mask = part.targets_mask().to(lp.device).bool()
                # padding positions: make every log-ratio 0 there so no exp() can overflow into NaN gradients
                old = torch.where(mask, old_lp[j], lp.detach()) if old_lp else lp.detach()
                ref = torch.where(mask, ref_lp[j], lp.detach())
                a = adv[i : i + mb].to(lp.device)
                kl = k3_kl(lp, ref)
                tok_loss = clipped_pg_loss(lp, old, a, cfg.clip_eps, cfg.clip_eps_high) + cfg.beta * kl
                loss = aggregate(tok_loss, mask, cfg.loss_agg, n_tok, B)
                if not torch.isfinite(loss):
                    raise DGError(
                        f"calibrate: loss became {float(loss.detach())} at step {step}: the run diverged (lower lr)"
                    )
                accelerator.backward(loss)
                loss_sum += float(loss.detach())
                if epoch == 0:
                    kl_sum += float((kl.detach() * mask).sum())
                    ent_sum += float((ent * mask).sum())
            if cfg.max_grad_norm > 0:
                grad_norm = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            bad = first_nonfinite({n: p for n, p in core.named_parameters() if p.requires_grad})
            if bad is not None:
                raise DGError(f"calibrate: weight {bad} became NaN or infinite at step {step}: lower lr")
        optimizer.zero_grad(set_to_none=True)
        model.eval()

        correct = r_task >= 1.0
        row = {
            "step": float(step),
            "reward_task": float(r_task.mean()),
            "accuracy": float(correct.float().mean()),
            "reward_cal": float(r_cal.mean()),
            "reward_cal_correct": float(r_cal[correct].mean()) if bool(correct.any()) else float("nan"),
            "kl": kl_sum / max(1, n_tok),
            "entropy": ent_sum / max(1, n_tok),
            "loss": loss_sum / cfg.ppo_epochs,
            "grad_norm": grad_norm,
            "completion_tokens": n_tok / B,
            "seconds": time.perf_counter() - t0,
            "sample_seconds": t_sample,
            "score_seconds": t_score,
            "update_seconds": time.perf_counter() - t0 - t_sample - t_score,
            "tokens_per_second": gen_tokens / max(t_sample, 1e-9),
            "truncation_rate": 1.0 - sum(roll.finished) / max(1, len(roll.finished)),
        }
        result.history.append(row)
        result.steps_done = step
        stop = None
        if eval_examples and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.steps:
            acc, _ = sampled_accuracy(
                core,
                tokenizer,
                task,
                list(eval_examples)[: cfg.eval_n],
                greedy=True,
                max_new_tokens=cfg.max_new_tokens,
            )
            result.evals.append({"step": float(step), "eval_accuracy": acc})
            row["eval_accuracy"] = acc
            stop = early_stop_reason(
                eval_accuracy=acc,
                base_accuracy=base_accuracy,
                min_accuracy_ratio=cfg.stop_accuracy_ratio,
                kl=None,
                max_kl=0,
            )
        stop = stop or early_stop_reason(
            eval_accuracy=None, base_accuracy=None, min_accuracy_ratio=0, kl=row["kl"], max_kl=cfg.stop_kl
        )
        if metrics is not None:
            for k, v in row.items():
                if k != "step" and not math.isnan(v):
                    metrics.set(f"calibrate_{k}", v)
            metrics.set("calibrate_step", step)
            metrics.flush()
        if on_step is not None:
            on_step(step, row)
        bar.update(
            1,
            acc=row["accuracy"],
            r_task=row["reward_task"],
            r_cal=row["reward_cal"],
            kl=row["kl"],
            tok_s=row["tokens_per_second"],
        )
        if stop:
            result.stopped_reason = f"step {step}: {stop}"
        if checkpointer is not None and (checkpointer.due(step) or stop) and rank == 0:
            extra = {"history": result.history, "evals": result.evals, "stopped": result.stopped_reason or ""}
            checkpointer.save(step, core, optimizer, extra=extra)
        if stop:
            log.warning("calibration stopped early at %s", result.stopped_reason)
            break
    bar.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _reference_from_anchor(
    cal_reward: Any,
    tokenizer: Any,
    roll: Any,
    packed: TokenBatch,
    ref_lp: list[torch.Tensor],
    mb: int,
    source: Callable[[Any], list[str]],
) -> torch.Tensor:
    """r_cal's π₀ term from the KL anchor's log-probs of the sampled tokens (EOS included only where the sample
    stopped, as the proxies score it). A row whose sampled ids are not what its text encodes to (a non-canonical
    tokenisation, a special token dropped from the text) is scored again from the text, so that both sides of
    the log-ratio score the very same token sequence and r_cal is exactly 0 for a proxy equal to π₀."""
    from dg_core.generate import encode_response

    B = packed.input_ids.shape[0]
    tmask = packed.targets_mask().float()
    sums = torch.cat([(lp.float().cpu() * tmask[i : i + mb]).sum(-1) for i, lp in zip(range(0, B, mb), ref_lp)])
    reference = cal_reward.normalize_reference(sums, tmask.sum(-1), roll.texts)
    redo = [
        i
        for i in range(B)
        if encode_response(tokenizer, roll.texts[i], add_eos=roll.finished[i]) != list(roll.response_ids[i])
    ]
    if redo:
        prompts = source(tokenizer)
        reference[redo] = cal_reward.reference_logprob(
            [prompts[i] for i in redo], [roll.texts[i] for i in redo], [roll.finished[i] for i in redo]
        )
    return reference


def _prompt_source(task: Task, batch: Sequence[Example], G: int) -> Callable[[Any], list[str]]:
    """Each scorer formats the prompt for its own tokenizer (chat template or plain text), repeated G times."""

    def prompts_for(tokenizer: Any) -> list[str]:
        return [task.prompt(e, tokenizer) for e in batch for _ in range(G)]

    return prompts_for


def make_policy(model: torch.nn.Module, cfg: CalibrationSettings) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """π_θ from π₀: a fresh LoRA adapter (reference = adapter off), or, for ``lora_r=0``, the model itself
    with a frozen deep copy as reference."""
    from dg_core.models.lora import attach_lora

    torch.manual_seed(cfg.seed)
    if cfg.lora_r > 0:
        return attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha), None
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, ref
