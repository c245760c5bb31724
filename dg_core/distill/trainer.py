"""The one training loop behind `train` (SFT bootstrap) and every distillation method.

A method supplies two callables: ``make_batch(step, micro)`` returning the micro-batch for an optimizer step
(a pure function of the step and the seed, so a resumed run sees exactly the batches the uninterrupted one
would have), and ``loss_fn(model, batch) -> LossOut``. The loop owns everything else: AdamW, warmup + cosine
schedule, gradient accumulation, clipping, LoRA or full fine-tuning, accelerate (multi-GPU; a no-op on one
device), bf16 autocast on CUDA, checkpoints through :class:`~dg_core.checkpoint.Checkpointer` every N steps
with exact resume (weights, optimizer, schedule, RNG streams), a tqdm bar and Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dg_core.base.generate import TokenBatch
from dg_core.base.logprobs import enable_checkpointing, token_logprobs, wants_checkpointing
from dg_core.checkpoint import Checkpointer, ShardedCheckpointer, first_nonfinite, trainable_state
from dg_core.distill.training import LOG_EVERY, MIN_LR_RATIO, WEIGHT_DECAY, TrainingConfig
from dg_core.errors import DGError
from dg_core.metrics import StageMetrics
from dg_core.models import attach_lora
from dg_core.progress import Progress
from dg_core.utils import seed_everything

log = logging.getLogger(__name__)

# accelerate engines that shard the weights across processes (the model object then holds only a shard)
SHARDING_ENGINES = ("FSDP", "DEEPSPEED")


@dataclass
class LossOut:
    """A micro-batch's loss (already averaged over its tokens) and how many tokens it covered."""

    loss: torch.Tensor
    n_tokens: int
    stats: dict[str, float] = field(default_factory=dict)
    denom: int | None = None  # what ``loss`` is a mean over, when not the tokens (spans, sequences)

    @property
    def count(self) -> int:
        return self.n_tokens if self.denom is None else self.denom


@dataclass
class TrainResult:
    """What a run did: per-step losses (of the steps this process ran), token counts and timing."""

    steps: int
    start_step: int
    losses: list[float]
    tokens: int
    seconds: float
    final_loss: float
    stats: dict[str, float] = field(default_factory=dict)
    full_state: dict[str, torch.Tensor] | None = None  # rank 0's gathered weights when the engine shards them

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def row_indices(
    n_rows: int,
    batch_size: int,
    step: int,
    micro: int,
    *,
    seed: int,
    grad_accum: int = 1,
    rank: int = 0,
    world: int = 1,
) -> list[int]:
    """Rows of micro-batch ``(step, micro)`` on process ``rank``: epochs of seeded permutations, no state.

    Being a pure function of its arguments is what makes a resumed run see the same batches as an
    uninterrupted one, and gives each data-parallel process disjoint rows.
    """
    if n_rows < 1:
        raise DGError("no training rows: expected a non-empty dataset split or signal set")
    first = ((step * grad_accum + micro) * world + rank) * batch_size
    out = []
    perms: dict[int, list[int]] = {}
    for g in range(first, first + batch_size):
        epoch, pos = divmod(g, n_rows)
        if epoch not in perms:
            gen = torch.Generator().manual_seed(seed * 7_919 + epoch)
            perms[epoch] = torch.randperm(n_rows, generator=gen).tolist()
        out.append(perms[epoch][pos])
    return out


def lr_lambda(cfg: TrainingConfig) -> Callable[[int], float]:
    """Linear warmup then cosine decay to ``MIN_LR_RATIO`` of the peak (a multiplier of ``lr``)."""
    warm = max(0, cfg.warmup_steps)
    total = cfg.steps

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def response_ce(model: torch.nn.Module, batch: TokenBatch) -> LossOut:
    """Cross-entropy of the response tokens (EOS included), prompt and padding masked out; chunked over positions
    (:func:`dg_core.base.logprobs.token_logprobs`), so no ``[B, T, V]`` logits tensor is held."""

    lp = token_logprobs(model, batch.input_ids, batch.attention_mask).logprobs
    mask = batch.targets_mask().to(lp.device)
    n = int(mask.sum())
    if n == 0:
        return LossOut(lp.sum() * 0.0, 0)
    return LossOut(-(lp * mask).sum() / n, n)


def stage_metrics(stage: str, run_id: str | None = None) -> Any:
    """Prometheus metrics of a stage run (pushed or written as a textfile; see ``dg_core.metrics``)."""

    return StageMetrics(stage, run_id=run_id)


def prepare_model(model: torch.nn.Module, settings: TrainingConfig) -> torch.nn.Module:
    """Attach a LoRA adapter (LoRA mode) or make every weight trainable (full fine-tuning); turn on gradient
    checkpointing when the settings (or, for ``auto``, the model's size) ask for it."""

    if wants_checkpointing(model, settings.gradient_checkpointing):
        enable_checkpointing(model)
    if settings.lora:
        return attach_lora(model, r=settings.lora_r, alpha=settings.lora_alpha)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def make_accelerator(device: torch.device | str | None = None) -> Any:
    """accelerate's Accelerator: bf16 autocast on CUDA, plain fp32 on CPU; under ``accelerate launch`` it
    runs data-parallel (stages give each process its rows via ``process_index``/``num_processes``)."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    return Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda)


def device_of(accelerator: Any) -> str:
    """The accelerator's device as a model-loading argument ("cpu", "cuda:N"; multi-CPU runs say "cpu:0")."""
    d = torch.device(accelerator.device)
    return "cpu" if d.type == "cpu" else str(d)


def _all_sum(accelerator: Any, values: list[float], stage: str, step: int) -> list[float]:
    """Sum ``values`` over the processes; a peer that died (killed, out of memory) becomes one clear line."""
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    try:
        return accelerator.reduce(t, reduction="sum").tolist()
    except RuntimeError as e:  # gloo/NCCL: "Connection closed by peer", DistBackendError, ...
        raise DGError(
            f"{stage}: rank {accelerator.process_index} of {accelerator.num_processes} lost a peer process at step "
            f"{step} (another rank died: the launcher's report names it); rerun to resume from the last checkpoint "
            f"[{str(e).splitlines()[0][:120]}]"
        ) from None


def train(
    model: torch.nn.Module,
    make_batch: Callable[[int, int], Any],
    loss_fn: Callable[[torch.nn.Module, Any], LossOut],
    cfg: TrainingConfig,
    *,
    stage: str = "train",
    checkpoint_uri: str | None = None,
    config_hash: str = "",
    progress: bool = True,
    metrics: Any = None,
    on_step: Callable[[int, float], None] | None = None,
    accelerator: Any = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimizer steps on ``model`` (already LoRA-wrapped if wanted), resuming if a checkpoint
    exists. ``on_step(step, loss)`` runs after every step (tests use it to inject failures).

    Under several processes (``accelerate launch``/torchrun) the model is data-parallel (DDP, or FSDP/DeepSpeed
    from the launch config); each micro-batch loss is weighted by its share of the global token count, so the
    gradient is the one a single process computes on the union of the ranks' rows, and the reported loss is
    that global mean. Checkpoints then go through :class:`~dg_core.checkpoint.ShardedCheckpointer`.
    """
    if accelerator is None:
        accelerator = make_accelerator(next(model.parameters()).device)
    metrics = metrics or stage_metrics(stage)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DGError("model has no trainable parameters: expected LoRA or full fine-tuning to enable some")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    model, opt = accelerator.prepare(model, opt)
    params = [p for p in model.parameters() if p.requires_grad]  # FSDP flattens them
    raw = accelerator.unwrap_model(model)
    world = accelerator.num_processes
    # Seed here, not earlier: loading a model may build a zoo member (which reseeds), and the RNG streams
    # (dropout) must depend on the seed alone. A checkpoint then replaces them with its own.
    seed_everything(cfg.seed)
    if world > 1:
        accelerator.register_for_checkpointing(sched)
        ckpt: Any = ShardedCheckpointer(
            accelerator, checkpoint_uri, cfg.checkpoint_every, config_hash=config_hash, resume=cfg.resume
        )
        start, extra = ckpt.resume()
    else:
        ShardedCheckpointer(accelerator, checkpoint_uri, cfg.checkpoint_every, resume=cfg.resume).refuse_other_world()
        ckpt = Checkpointer(checkpoint_uri, cfg.checkpoint_every, config_hash=config_hash, resume=cfg.resume)
        start, extra = ckpt.resume(raw, opt, sched)
    if start >= cfg.steps:
        log.info("checkpoint already at step %d of %d: nothing to train", start, cfg.steps)
    losses: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    model.train()
    bar = Progress(
        cfg.steps,
        stage,
        enabled=progress and accelerator.is_main_process,
        log_every=LOG_EVERY,
        logger=log,
        initial=start,
    )
    last = float(extra.get("last_loss", float("nan")))
    stats_sum: dict[str, float] = {}
    for step in range(start, cfg.steps):
        step_loss, step_tokens, ts = 0.0, 0, time.perf_counter()
        for micro in range(cfg.grad_accum):
            batch = make_batch(step, micro)
            if hasattr(batch, "to"):
                batch = batch.to(accelerator.device)
            sync = micro == cfg.grad_accum - 1 or world == 1
            with accelerator.autocast(), contextlib.nullcontext() if sync else accelerator.no_sync(model):
                out = loss_fn(model, batch)
                loss, value = out.loss, float(out.loss.detach())
                n_tok = out.n_tokens
                if world > 1:  # the local mean's share of the global one (DDP then averages over ranks)
                    local = [value * out.count, float(out.count), float(n_tok)]
                    total, n_all, n_tok = _all_sum(accelerator, local, stage, step)
                    loss = loss * (out.count * world / max(n_all, 1.0))
                    value = total / max(n_all, 1.0)
            if not math.isfinite(value):
                raise DGError(f"{stage}: loss became {value} at step {step}: lower lr or check the data")
            accelerator.backward(loss / cfg.grad_accum)
            step_loss += value / cfg.grad_accum
            step_tokens += int(n_tok)
            for k, v in out.stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - ts
        losses.append(step_loss)
        tokens += step_tokens
        last = step_loss
        metrics.set("loss", step_loss)
        metrics.inc("tokens", step_tokens)
        metrics.set("tokens_per_second", step_tokens / dt if dt > 0 else 0.0)
        metrics.set("step", step + 1)
        bar.update(1, loss=step_loss, tok_s=step_tokens / dt if dt > 0 else 0.0)
        metrics.maybe_flush()
        if ckpt.due(step + 1):
            if world > 1:
                ckpt.save(step + 1, extra={"last_loss": step_loss})
            elif accelerator.is_main_process:
                ckpt.save(step + 1, raw, opt, sched, extra={"last_loss": step_loss})
        if on_step is not None:
            on_step(step + 1, step_loss)
    bar.close()
    metrics.flush()
    model.eval()
    if world > 1 and stats_sum:  # the statistics of the whole run, not of rank 0's rows
        keys = sorted(stats_sum)
        sums = _all_sum(accelerator, [stats_sum[k] for k in keys], stage, cfg.steps)
        stats_sum = {k: v / world for k, v in zip(keys, sums)}
    bad = first_nonfinite(trainable_state(raw))
    if bad is not None:
        raise DGError(f"{stage}: weight {bad} became NaN or infinite by step {cfg.steps}: lower lr")
    n_run = max(1, cfg.steps - start)
    full_state = None
    if accelerator.distributed_type in SHARDING_ENGINES:  # a collective: every rank joins, rank 0 gets it
        full_state = accelerator.get_state_dict(model)
    return TrainResult(
        full_state=full_state,
        steps=cfg.steps,
        start_step=start,
        losses=losses,
        tokens=tokens,
        seconds=time.perf_counter() - t0,
        final_loss=last,
        stats={k: v / n_run for k, v in stats_sum.items()},
    )
