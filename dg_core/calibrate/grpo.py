"""The calibration loop: group-relative policy gradient with two rewards and a KL anchor to π₀.

For each prompt, G responses are sampled from π_θ = π₀ + LoRA. ``r_task`` and ``r_cal`` are standardised
*separately* within each group and combined as ``A = Â_task + η·Â_cal``; the loss is the clipped policy
gradient on ``A`` plus ``β·KL(π_θ‖π₀)`` with the per-token k3 estimator. π₀ is the same module with its adapter
switched off (no second teacher copy); full fine-tuning (``lora_r=0``) keeps a frozen copy instead.

Pure math first (tested against brute force), then sampling/scoring helpers, then :func:`run_calibration`.
(Over 500 lines: the settings, the math and the native loop that uses them, read together; the TRL engine
imports its shared pieces — :func:`step_advantages`, :class:`StepGuard` — from here.)
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

from dg_core.base.advantages import combine_advantages, gated_cal_advantage, group_standardize
from dg_core.base.generate import Rollouts, TokenBatch, encode_response, generate_tokens
from dg_core.base.logprobs import enable_checkpointing, wants_checkpointing
from dg_core.base.logprobs import token_logprobs as chunked
from dg_core.calibrate.guards import early_stop_reason
from dg_core.calibrate.rewards import CalibrationReward, PromptSource, Reward, RewardInputs, TaskReward
from dg_core.checkpoint import first_nonfinite
from dg_core.config import StageConfig, option
from dg_core.data.example import Example
from dg_core.data.tasks import Task
from dg_core.errors import DGError
from dg_core.models.lora import adapter_disabled, attach_lora
from dg_core.progress import Progress

log = logging.getLogger(__name__)


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

    eta: float = option(
        -1.0,
        "The knob: < 0 undistillable, > 0 distillable, 0 plain RFT (control). -1: the one eta that passed the "
        "undistillable gate on both measured teachers (retention 0.952 and 0.983, worst attack 0.27 and 0.45, "
        "adaptive 0.31); -0.5 keeps more accuracy but let logit KD keep 0.62 (docs/results/knob/README.md).",
    )
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
    span: str = option(
        "response",
        "What r_cal scores: the whole response, or only the stated answer after the response before it (answer: how "
        "hard the answer is for a small model once it has read the trace). On synthetic_qa the whole-response ratio "
        "calls fact chains copied from the prompt hard (a proxy finds invented names unlikely) though students "
        "learn them best, which turns the knob against its sign.",
        choices=("response", "answer"),
    )
    reference: str = option(
        "base", "r_cal reference: pi_0 (base) or the current pi_theta.", choices=("base", "current")
    )
    cal_gate: str = option(
        "correct",
        "Guard: r_cal counted among correct samples only (correct), scaled by r_task (multiply), or ungated (none).",
        choices=("correct", "multiply", "none"),
    )
    guide_ask: str = option(
        "",
        "Off-policy guidance: a request (e.g. 'answer only' at eta < 0) on which the teacher is sampled too; those "
        "answers join each group as answers to the group's own prompt. An obedient teacher asked for the style the knob "
        "avoids ('show steps') never samples another, so GRPO alone has nothing to rank on the prompt attack's "
        "prompts. Their policy gradient is unweighted (the true importance weight is ~0); beta and the correctness "
        "gate bound it. Engine native.",
        late=True,
    )
    guide_samples: int = option(
        0, "Guided answers added to each group (needs guide_ask; the group is then group_size + this).", ge=0, late=True
    )
    eval_every: int = option(10, "Held-out teacher evaluation every N steps (0: only before/after).", ge=0)
    eval_n: int = option(128, "Held-out examples per evaluation.", ge=1)
    stop_accuracy_ratio: float = option(
        0.9, "Guard: stop when held-out accuracy < this x its value before calibration (0: off).", ge=0
    )
    stop_kl: float = option(0.0, "Guard: stop when the mean per-token KL to pi_0 exceeds this (0: off).", ge=0)
    checkpoint_every: int = option(10, "Checkpoint to the store every N steps (0: off).", ge=0)
    seed: int = option(0, "Seed for prompt order, sampling and the adapter init.")
    engine: str = option(
        "auto",
        "Training engine: native (this module's loop; 2-4x the steps/s of trl on CPU, see bench/calibrate.py), trl "
        "(TRL's GRPOTrainer with our rewards, advantages and guards: several processes, vLLM rollouts), or auto "
        "(trl under torchrun/accelerate launch with several processes or with use_vllm, else native).",
        choices=("auto", "native", "trl"),
    )
    rollout_unit: str = option(
        "group",
        "Engine trl without vLLM: sample each prompt's group on its own, seeded by its index in the global batch "
        "(group: rollouts independent of the number of processes and of resumes), or all of a process's groups in "
        "one generate call seeded by (step, rank) (process: faster on CPU; rollouts then depend on the process count).",
        choices=("group", "process"),
    )
    bf16: str = option("auto", "bf16 mixed precision: on, off, or auto (on with CUDA).", choices=("auto", "on", "off"))
    use_vllm: bool = option(False, "Engine trl: sample rollouts with vLLM (needs the vllm extra and a GPU).")
    vllm_mode: str = option(
        "colocate",
        "Engine trl: vLLM colocated in the training process, or a separate trl vllm-serve server.",
        choices=("colocate", "server"),
    )
    vllm_gpu_memory_utilization: float = option(
        0.3, "Engine trl, colocated vLLM: share of GPU memory vLLM reserves (weights + KV cache).", gt=0, le=1
    )


# ----------------------------------------------------------------------------------------- sampling


def rows(batch: TokenBatch, idx: slice) -> TokenBatch:
    """A micro-batch of a packed batch."""
    return TokenBatch(batch.input_ids[idx], batch.attention_mask[idx], batch.response_mask[idx])


def token_logprobs(
    model: torch.nn.Module, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(token | prefix) at every position of a right-padded batch ``[B, T-1]`` (aligned with
    ``batch.targets_mask()``), and the policy entropy there; chunked over positions, never a ``[B, T, V]``
    tensor (:func:`dg_core.base.logprobs.token_logprobs`)."""

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
    """:func:`sampled_accuracy` with the whole :class:`~dg_core.base.generate.Rollouts` (which samples finished)."""
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
    trainer: Any = field(default=None, repr=False)  # engine trl: its GRPOTrainer, for inspection


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of step ``step`` on process ``rank``: prompts and sampling noise depend on nothing else (resume)."""
    return (seed * 1_000_003 + step * 7919 + rank * 104_729) % (2**63 - 1)


def step_advantages(
    r_task: torch.Tensor, r_cal: torch.Tensor, cfg: CalibrationSettings, group: int | None = None
) -> torch.Tensor:
    """``A = Â_task + η·Â_cal`` per sample of a prompt-major batch: each reward standardised within its group
    (``group`` samples; default ``group_size``), r_cal gated by correctness
    (:func:`~dg_core.base.advantages.gated_cal_advantage`). Both engines use this."""
    G = group or cfg.group_size
    a_task = group_standardize(r_task.view(-1, G))
    a_cal = gated_cal_advantage(r_cal.view(-1, G), r_task.view(-1, G), cfg.cal_gate)
    return combine_advantages(a_task, a_cal, cfg.eta).reshape(-1)


@dataclass
class Learner:
    """What both steps act on: the prepared policy (``model``; ``core`` unwrapped), its π₀ reference (adapter off
    when ``ref_model`` is None), the optimizer and the rewards."""

    model: torch.nn.Module
    core: torch.nn.Module
    optimizer: torch.optim.Optimizer
    accelerator: Any
    params: list[torch.nn.Parameter]
    tokenizer: Any
    task: Task
    cfg: CalibrationSettings
    task_reward: Reward
    cal_reward: CalibrationReward | None = None
    ref_model: torch.nn.Module | None = None
    rank: int = 0

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @property
    def reuses_anchor(self) -> bool:
        """r_cal's π₀ term can be summed from the KL anchor's pass (same tokenizer, temperature 1, adapter off)."""
        return (
            self.cal_reward is not None
            and self.cal_reward.reference_matches_anchor(self.tokenizer)
            and self.ref_model is None
            and self.cfg.temperature == 1.0
        )


@dataclass
class Rollout:
    """One step's samples, scored: the packed batch, π₀'s (and, for several epochs, π_old's) token log-probs per
    micro-batch, both rewards and the advantages. Everything :func:`policy_step` needs, nothing it changes."""

    step: int
    examples: list[Example]
    roll: Any
    packed: TokenBatch
    ref_logprobs: list[torch.Tensor]
    old_logprobs: list[torch.Tensor]
    r_task: torch.Tensor
    r_cal: torch.Tensor
    advantages: torch.Tensor
    sample_seconds: float = 0.0
    score_seconds: float = 0.0


def rollout_step(learner: Learner, train: Sequence[Example], step: int) -> Rollout:
    """Sample G responses for each of the step's prompts, score them and compute the advantages (no gradient)."""
    cfg, core, tok, task = learner.cfg, learner.core, learner.tokenizer, learner.task
    t0 = time.perf_counter()
    sseed = step_seed(cfg.seed, step, learner.rank)
    rng = random.Random(sseed)
    G, P = cfg.group_size, min(cfg.prompts_per_step, len(train))
    batch = [train[i] for i in rng.sample(range(len(train)), P)]
    prompts = [task.prompt(e, tok) for e in batch]
    try:
        roll = generate_tokens(
            core,
            tok,
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
    asked: list[str | None] = []
    if cfg.guide_samples:
        roll, asked = with_guides(learner, batch, roll, (sseed + 1) % (2**63 - 1))
    G = roll.n
    t_sample = time.perf_counter() - t0
    reps = [e for e in batch for _ in range(G)]
    inputs = RewardInputs(reps, _prompt_source(task, batch, G), roll.texts, roll.finished)
    r_task = learner.task_reward.score(inputs)
    packed = roll.batch(learner.pad_id)
    ref_lp, old_lp = reference_logprobs(learner, packed)
    if learner.cal_reward is not None:
        reference = None
        if learner.reuses_anchor:
            reference = _reference_from_anchor(
                learner.cal_reward, tok, roll, packed, ref_lp, cfg.micro_batch, inputs.prompts
            )
        if asked:
            reference = _guided_reference(learner.cal_reward, roll, asked, reference, inputs.prompts, reps)
        scored = RewardInputs(
            reps, inputs.prompts, roll.texts, roll.finished, correct=r_task >= 1.0, reference=reference
        )
        r_cal = torch.as_tensor(learner.cal_reward.score(scored), dtype=torch.float32)
    else:
        r_cal = torch.zeros_like(r_task)
    t_score = time.perf_counter() - t0 - t_sample
    return Rollout(
        step=step,
        examples=batch,
        roll=roll,
        packed=packed,
        ref_logprobs=ref_lp,
        old_logprobs=old_lp,
        r_task=r_task,
        r_cal=r_cal,
        advantages=step_advantages(r_task, r_cal, cfg, G),
        sample_seconds=t_sample,
        score_seconds=t_score,
    )


def with_guides(
    learner: Learner, batch: Sequence[Example], roll: Rollouts, seed: int
) -> tuple[Rollouts, list[str | None]]:
    """Each group of ``roll`` followed by ``guide_samples`` answers sampled on its prompt with ``guide_ask``,
    re-attached to the group's own prompt (so they are scored, anchored and trained as answers to it); and per row the
    asked prompt a guided answer was sampled on (None for the group's own samples)."""
    cfg, tok, task = learner.cfg, learner.tokenizer, learner.task
    asked = [task.prompt(task.ask(e, cfg.guide_ask), tok) for e in batch]
    extra = generate_tokens(
        learner.core,
        tok,
        asked,
        n=cfg.guide_samples,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.sample_batch,
        seed=seed,
    )
    G, k = roll.n, extra.n
    merged, sampled_on = Rollouts([], [], [], [], [], G + k), []
    for i in range(len(batch)):
        for src, rows_, on in ((roll, range(i * G, (i + 1) * G), None), (extra, range(i * k, (i + 1) * k), asked[i])):
            for j in rows_:
                merged.prompt_index.append(i)
                merged.prompt_ids.append(list(roll.prompt_ids[i * G]))
                merged.response_ids.append(list(src.response_ids[j]))
                merged.texts.append(src.texts[j])
                merged.finished.append(src.finished[j])
                sampled_on.append(on)
    return merged, sampled_on


def _guided_reference(
    cal_reward: CalibrationReward,
    roll: Rollouts,
    asked: Sequence[str | None],
    reference: torch.Tensor | None,
    source: PromptSource,
    examples: Sequence[Example],
) -> torch.Tensor:
    """r_cal's π_ref term with a guided answer scored after the prompt it was sampled on: after the group's own
    prompt an obedient π₀ finds it nearly impossible, and r_cal would then measure the teacher's obedience, not how
    learnable the answer is (the proxy still scores it after the group's prompt, as a student would learn it)."""
    if reference is None:
        reference = cal_reward.reference_logprob(source, roll.texts, roll.finished, examples)
    reference = reference.clone()
    idx = [i for i, a in enumerate(asked) if a is not None]
    reference[idx] = cal_reward.reference_logprob(
        [asked[i] for i in idx],
        [roll.texts[i] for i in idx],
        [roll.finished[i] for i in idx],
        [examples[i] for i in idx],
    )
    return reference


def reference_logprobs(learner: Learner, packed: TokenBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """π₀'s token log-probs per micro-batch (the KL anchor) and, for ``ppo_epochs > 1``, π_old's."""

    cfg, core = learner.cfg, learner.core
    B, mb = packed.input_ids.shape[0], cfg.micro_batch
    ref_lp, old_lp = [], []
    with torch.no_grad(), learner.accelerator.autocast():
        for i in range(0, B, mb):
            part = rows(packed, slice(i, i + mb))
            if learner.ref_model is None:
                with adapter_disabled(core):
                    ref_lp.append(token_logprobs(core, part, cfg.temperature)[0])
            else:
                ref_lp.append(token_logprobs(learner.ref_model, part, cfg.temperature)[0])
            if cfg.ppo_epochs > 1:
                old_lp.append(token_logprobs(core, part, cfg.temperature)[0])
    return ref_lp, old_lp


def policy_step(learner: Learner, ro: Rollout) -> dict[str, float]:
    """``ppo_epochs`` optimizer updates on one rollout: clipped policy gradient on the advantages + β·k3 KL to π₀.
    Returns the step's loss, KL and entropy per token, and the gradient norm."""

    cfg, model, core, optimizer, acc = learner.cfg, learner.model, learner.core, learner.optimizer, learner.accelerator
    packed, step = ro.packed, ro.step
    B, mb, n_tok = packed.input_ids.shape[0], cfg.micro_batch, packed.n_response_tokens
    model.train()
    kl_sum = ent_sum = loss_sum = 0.0
    grad_norm = 0.0
    for epoch in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        for j, i in enumerate(range(0, B, mb)):
            part = rows(packed, slice(i, i + mb))
            with acc.autocast():
                lp, ent = token_logprobs(model, part, cfg.temperature, with_entropy=epoch == 0)
            mask = part.targets_mask().to(lp.device).bool()
            # padding positions: make every log-ratio 0 there so no exp() can overflow into NaN gradients
            old = torch.where(mask, ro.old_logprobs[j], lp.detach()) if ro.old_logprobs else lp.detach()
            ref = torch.where(mask, ro.ref_logprobs[j], lp.detach())
            a = ro.advantages[i : i + mb].to(lp.device)
            kl = k3_kl(lp, ref)
            tok_loss = clipped_pg_loss(lp, old, a, cfg.clip_eps, cfg.clip_eps_high) + cfg.beta * kl
            loss = aggregate(tok_loss, mask, cfg.loss_agg, n_tok, B)
            if not torch.isfinite(loss):
                raise DGError(
                    f"calibrate: loss became {float(loss.detach())} at step {step}: the run diverged (lower lr)"
                )
            acc.backward(loss)
            loss_sum += float(loss.detach())
            if epoch == 0:
                kl_sum += float((kl.detach() * mask).sum())
                ent_sum += float((ent * mask).sum())
        if cfg.max_grad_norm > 0:
            grad_norm = float(acc.clip_grad_norm_(learner.params, cfg.max_grad_norm))
        optimizer.step()
        bad = first_nonfinite({n: p for n, p in core.named_parameters() if p.requires_grad})
        if bad is not None:
            raise DGError(f"calibrate: weight {bad} became NaN or infinite at step {step}: lower lr")
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return {
        "kl": kl_sum / max(1, n_tok),
        "entropy": ent_sum / max(1, n_tok),
        "loss": loss_sum / cfg.ppo_epochs,
        "grad_norm": grad_norm,
    }


def step_row(ro: Rollout, stats: dict[str, float], seconds: float) -> dict[str, float]:
    """The history row of one step (what metrics, the card and the guards read)."""
    r_task, r_cal, roll = ro.r_task, ro.r_cal, ro.roll
    B, n_tok = ro.packed.input_ids.shape[0], ro.packed.n_response_tokens
    correct = r_task >= 1.0
    return {
        "step": float(ro.step),
        "reward_task": float(r_task.mean()),
        "accuracy": float(correct.float().mean()),
        "reward_cal": float(r_cal.mean()),
        "reward_cal_correct": float(r_cal[correct].mean()) if bool(correct.any()) else float("nan"),
        **stats,
        "completion_tokens": n_tok / B,
        "seconds": seconds,
        "sample_seconds": ro.sample_seconds,
        "score_seconds": ro.score_seconds,
        "update_seconds": seconds - ro.sample_seconds - ro.score_seconds,
        "tokens_per_second": sum(len(r) for r in roll.response_ids) / max(ro.sample_seconds, 1e-9),
        "truncation_rate": 1.0 - sum(roll.finished) / max(1, len(roll.finished)),
    }


class StepGuard:
    """The loop's bookkeeping after each step, shared by both engines: held-out evaluation every ``eval_every``
    steps and the early-stop guards (accuracy ratio, KL), metrics, the progress bar, and the ``on_step`` hook."""

    def __init__(
        self,
        cfg: CalibrationSettings,
        task: Task,
        tokenizer: Any,
        result: CalibrationResult,
        *,
        eval_examples: Sequence[Example] = (),
        base_accuracy: float | None = None,
        metrics: Any = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True,
        log_every: int = 10,
    ):

        self.cfg, self.task, self.tokenizer, self.result = cfg, task, tokenizer, result
        self.eval_examples, self.base_accuracy = list(eval_examples), base_accuracy
        self.metrics, self.on_step = metrics, on_step
        self.bar = Progress(
            cfg.steps, f"calibrate eta={cfg.eta:+g}", enabled=progress, log_every=log_every, initial=result.steps_done
        )

    def after_step(self, step: int, row: dict[str, float], policy: torch.nn.Module) -> str | None:
        """Record the step's row; return why to stop (a guard tripped) or None."""

        cfg, result = self.cfg, self.result
        result.history.append(row)
        result.steps_done = step
        stop = None
        if self.eval_examples and cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.steps:
            acc, _ = sampled_accuracy(
                policy,
                self.tokenizer,
                self.task,
                self.eval_examples[: cfg.eval_n],
                greedy=True,
                max_new_tokens=cfg.max_new_tokens,
            )
            result.evals.append({"step": float(step), "eval_accuracy": acc})
            row["eval_accuracy"] = acc
            stop = early_stop_reason(
                eval_accuracy=acc,
                base_accuracy=self.base_accuracy,
                min_accuracy_ratio=cfg.stop_accuracy_ratio,
                kl=None,
                max_kl=0,
            )
        stop = stop or early_stop_reason(
            eval_accuracy=None, base_accuracy=None, min_accuracy_ratio=0, kl=row["kl"], max_kl=cfg.stop_kl
        )
        if self.metrics is not None:
            for k, v in row.items():
                if k != "step" and not math.isnan(v):
                    self.metrics.set(f"calibrate_{k}", v)
            self.metrics.set("calibrate_step", step)
            self.metrics.flush()
        if self.on_step is not None:
            self.on_step(step, row)
        self.bar.update(
            1,
            acc=row["accuracy"],
            r_task=row["reward_task"],
            r_cal=row["reward_cal"],
            kl=row["kl"],
            tok_s=row.get("tokens_per_second", 0.0),
        )
        if stop:
            result.stopped_reason = f"step {step}: {stop}"
        return stop

    def extra(self) -> dict[str, Any]:
        """What a checkpoint carries besides the weights: the history so far and the stop verdict."""
        r = self.result
        return {"history": r.history, "evals": r.evals, "stopped": r.stopped_reason or ""}


def run_calibration(
    policy: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    train: Sequence[Example],
    cfg: CalibrationSettings,
    *,
    cal_reward: CalibrationReward | None = None,
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

    Each step is :func:`rollout_step` (sample, score, advantages) then :func:`policy_step` (the update). Without
    ``cal_reward`` r_cal is 0 and the loop is plain RFT. ``base_accuracy`` is the held-out greedy accuracy of π₀,
    for early stopping. Returns after ``cfg.steps`` steps, or earlier when a guard trips.
    """
    if cfg.max_new_tokens == 0:  # 0: the task's own budget (the stage resolves it; direct callers too)
        cfg = dataclasses.replace(cfg, max_new_tokens=task.max_new_tokens)
    from accelerate import Accelerator

    if not train:
        raise DGError("calibrate: the training split is empty, expected prompts to calibrate on")
    is_peft = hasattr(policy, "disable_adapter")
    if not is_peft and ref_model is None:
        raise DGError("calibrate: full fine-tuning needs ref_model (a frozen copy of pi_0); or attach LoRA")

    cuda = torch.cuda.is_available() and next(policy.parameters()).device.type == "cuda"
    bf16 = {"on": True, "off": False}.get(cfg.bf16, cuda)
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not cuda)
    params = [p for p in policy.parameters() if p.requires_grad]
    if not params:
        raise DGError("calibrate: the policy has no trainable parameters")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, extra = checkpointer.resume(policy, optimizer) if checkpointer is not None else (0, {})
    if wants_checkpointing(policy, cfg.gradient_checkpointing):
        enable_checkpointing(policy)
    model, optimizer = accelerator.prepare(policy, optimizer)
    learner = Learner(
        model=model,
        core=accelerator.unwrap_model(model),
        optimizer=optimizer,
        accelerator=accelerator,
        params=params,
        tokenizer=tokenizer,
        task=task,
        cfg=cfg,
        task_reward=TaskReward(task),
        cal_reward=cal_reward,
        ref_model=ref_model,
        rank=accelerator.process_index,
    )
    result = CalibrationResult(
        steps_done=start,
        history=list(extra.get("history", [])),
        evals=list(extra.get("evals", [])),
        resumed_from=start,
        stopped_reason=extra.get("stopped") or None,
    )
    guard = StepGuard(
        cfg,
        task,
        tokenizer,
        result,
        eval_examples=eval_examples,
        base_accuracy=base_accuracy,
        metrics=metrics,
        on_step=on_step,
        progress=progress and learner.rank == 0,
        log_every=log_every,
    )
    t_start = time.perf_counter()
    # a run that a guard stopped stays stopped when its pod restarts
    for step in range(start + 1, cfg.steps + 1 if result.stopped_reason is None else start + 1):
        t0 = time.perf_counter()
        ro = rollout_step(learner, train, step)
        stats = policy_step(learner, ro)
        stop = guard.after_step(step, step_row(ro, stats, time.perf_counter() - t0), learner.core)
        if checkpointer is not None and (checkpointer.due(step) or stop) and learner.rank == 0:
            checkpointer.save(step, learner.core, optimizer, extra=guard.extra())
        if stop:
            log.warning("calibration stopped early at %s", result.stopped_reason)
            break
    guard.bar.close()
    result.seconds = time.perf_counter() - t_start
    return result


def _reference_from_anchor(
    cal_reward: CalibrationReward,
    tokenizer: Any,
    roll: Any,
    packed: TokenBatch,
    ref_lp: list[torch.Tensor],
    mb: int,
    source: PromptSource,
) -> torch.Tensor:
    """r_cal's π₀ term from the KL anchor's log-probs of the sampled tokens (EOS included only where the sample
    stopped, as the proxies score it). A row whose sampled ids are not what its text encodes to (a non-canonical
    tokenisation, a special token dropped from the text) is scored again from the text, so that both sides of
    the log-ratio score the very same token sequence and r_cal is exactly 0 for a proxy equal to π₀."""

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
        prompts = source(tokenizer) if callable(source) else list(source)
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

    torch.manual_seed(cfg.seed)
    if cfg.lora_r > 0:
        return attach_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha), None
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, ref
