"""The two calibration rewards: task utility ``r_task`` and the across-tokenizer ``r_cal``.

``r_cal(x, y) = sg[log q(y|x) − log π_ref(y|x)]``: how much more (or less) likely a small proxy ``q`` finds a
response than the teacher's reference ``π_ref`` (the original teacher π₀, or the current π_θ as an option).
Each model tokenizes the *same text* with its own tokenizer and scores it
(:func:`dg_core.base.align.sequence_logprob`), so proxy and teacher need not share a vocabulary. A response that
small models find likely (r_cal high) is easy to distil; one that surprises them is hard.

Both implement :class:`Reward`: one typed call, ``score(RewardInputs) -> Tensor`` (one reward per sample), which
the native loop and the TRL engine both use. Both are also available with TRL's reward-function signature
``reward(prompts, completions, **kwargs) -> list[float]`` (see :meth:`TaskReward.as_trl` and
:meth:`CalibrationReward.as_trl`), so users can plug them into ``trl.GRPOTrainer``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from dg_core.base.align import sequence_logprob
from dg_core.data.example import Example
from dg_core.data.tasks import Task
from dg_core.errors import DGError
from dg_core.models.lora import adapter_disabled

NORMALIZE = ("sum", "token", "char")
COMBINE = ("mean", "min", "max", "worst")
REFERENCE = ("base", "current")
SPAN = ("response", "answer")

PromptSource = Sequence[str] | Callable[[Any], Sequence[str]]


@dataclass(frozen=True)
class RewardInputs:
    """One batch of samples as every reward sees it (prompt-major: prompt i's j-th sample is row ``i * G + j``).

    ``prompts`` is either the formatted prompts or a function of a tokenizer giving them (each scorer formats the
    prompt for its own tokenizer); ``finished`` says which samples ended with EOS (None: all did); ``correct`` is
    the task verdict per sample once known; ``reference`` an already computed π_ref term for r_cal (the native
    loop's KL-anchor pass), scored on the same text with the same ``finished`` flags.
    """

    examples: Sequence[Example]
    prompts: PromptSource
    completions: Sequence[str]
    finished: Sequence[bool] | None = None
    correct: torch.Tensor | None = None
    reference: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.completions)
        for name in ("finished", "correct", "reference"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise DGError(f"reward inputs: {len(v)} {name} values for {n} completions, expected one per completion")


@runtime_checkable
class Reward(Protocol):
    """A per-sample reward: ``score`` returns a float32 tensor with one value per completion (no gradient)."""

    name: str

    def score(self, inputs: RewardInputs) -> torch.Tensor: ...


def _completion_text(c: Any) -> str:
    """TRL hands completions as text (standard format) or as a list of chat messages (conversational)."""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict) and "content" in c[-1]:
        return str(c[-1]["content"])
    raise DGError(f"reward: completion of type {type(c).__name__}: expected text or a list of chat messages")


class TaskReward:
    """``r_task``: the task's strict scorer, so a reward is earned only for one clearly stated correct answer."""

    name = "r_task"

    def __init__(self, task: Task):
        self.task = task

    def __call__(self, examples: Sequence[Example], responses: Sequence[str]) -> torch.Tensor:
        scores = self.task.score_batch(list(examples), list(responses))
        return torch.tensor([s.reward for s in scores], dtype=torch.float32)

    def score(self, inputs: RewardInputs) -> torch.Tensor:
        if len(inputs.examples) != len(inputs.completions):
            raise DGError(
                f"r_task: {len(inputs.examples)} examples for {len(inputs.completions)} completions, expected one each"
            )
        return self(inputs.examples, inputs.completions)

    def as_trl(self, answer_key: str = "answer") -> Callable[..., list[float]]:
        """TRL signature. The dataset's ``answer`` column (or ``answer_key``) arrives as a keyword list."""

        def r_task(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            answers = kwargs.get(answer_key)
            if answers is None or len(answers) != len(completions):
                raise DGError(f"r_task: the dataset needs a column {answer_key!r} with one gold answer per row")
            examples = [
                Example(id=str(i), prompt=_completion_text(p) if not isinstance(p, str) else p, answer=str(a))
                for i, (p, a) in enumerate(zip(prompts, answers))
            ]
            return self(examples, [_completion_text(c) for c in completions]).tolist()

        return r_task


def _normalizer(normalize: str) -> str:
    if normalize not in NORMALIZE:
        raise DGError(f"r_cal normalize {normalize!r}: expected one of {list(NORMALIZE)}")
    return normalize


def score_text(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    normalize: str = "sum",
    *,
    append_eos: bool | Sequence[bool] = True,
    add_bos: bool | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """log p(response | prompt) of each pair under one model, with its own tokenizer (no gradient).

    ``sum``: the sequence log-probability; ``token``: divided by the model's own token count;
    ``char``: divided by the response's character count (the same divisor for every tokenizer).
    ``append_eos`` also scores the end of the response, so a proxy's view of where an answer stops (and of a
    junk suffix after it) counts; one flag per pair scores the end only where the sample ended. ``add_bos=None`` follows the training layout of :mod:`dg_core.base.generate` (prompt encoded on its own).
    """

    mode = {"sum": "none", "token": "token", "char": "char"}[_normalizer(normalize)]
    with torch.no_grad():
        vals = sequence_logprob(
            model,
            tokenizer,
            list(prompts),
            list(responses),
            normalize=mode,
            batch_size=batch_size,
            append_eos=append_eos,
            add_bos=add_bos,
        )
    return torch.as_tensor(vals, dtype=torch.float32).detach().cpu().reshape(-1)


class CalibrationReward:
    """``r_cal`` against one or several frozen proxies.

    Args:
        teacher: the policy π_θ (a PEFT model: its adapter is switched off to get π₀) or π₀ itself.
        teacher_tokenizer: the teacher's tokenizer.
        proxies: ``(model, tokenizer)`` pairs of the frozen calibration proxies.
        normalize: ``sum`` (sequence log-prob), ``token`` (per own token) or ``char`` (per character).
        combine: how several proxies' rewards combine: ``mean``, ``min``, ``max``, or ``worst`` — the proxy
            least favourable to the knob's direction (``max`` for η < 0, where low r_cal is wanted; ``min`` for
            η > 0), so calibration must satisfy every proxy, not their average.
        reference: ``base`` scores with π₀ (adapter off, the paper's term) or ``current`` with π_θ.
        eta_sign: the sign of η, needed only by ``combine='worst'``.
        span: ``response`` scores the whole response; ``answer`` only the stated answer (from
            :meth:`Task.answer_start <dg_core.data.tasks.Task.answer_start>` on), after the prompt *and the response
            before it*: how hard the answer is for a small model once it has read the trace. A trace made of spans
            copied from the prompt (a QA fact chain) is unlikely to a proxy per character, yet a student copies it
            easily and then reads the answer off it; the whole-response ratio calls such a trace hard to distil.
        task: the task (needed by ``span='answer'`` to find the answer).
        append_eos: score the end of each response too (see :func:`score_text`); only of responses that ended
            when the caller passes ``finished`` (a sample cut off at its token budget has no end to score, on
            either side of the log-ratio).
        add_bos: passed to :func:`dg_core.base.align.sequence_logprob` (None: the training layout).
        batch_size: sequences per scoring forward pass.
    """

    name = "r_cal"

    def __init__(
        self,
        teacher: torch.nn.Module,
        teacher_tokenizer: Any,
        proxies: Sequence[tuple[torch.nn.Module, Any]],
        *,
        normalize: str = "sum",
        combine: str = "mean",
        reference: str = "base",
        eta_sign: float = -1.0,
        span: str = "response",
        task: Task | None = None,
        append_eos: bool = True,
        add_bos: bool | None = None,
        batch_size: int = 64,
    ):
        if not proxies:
            raise DGError("r_cal: no proxy models given, expected at least one (model, tokenizer)")
        if combine not in COMBINE:
            raise DGError(f"r_cal combine {combine!r}: expected one of {list(COMBINE)}")
        if reference not in REFERENCE:
            raise DGError(f"r_cal reference {reference!r}: expected one of {list(REFERENCE)}")
        self.teacher = teacher
        self.teacher_tokenizer = teacher_tokenizer
        if span not in SPAN:
            raise DGError(f"r_cal span {span!r}: expected one of {list(SPAN)}")
        if span == "answer" and task is None:
            raise DGError("r_cal span 'answer': no task given, expected the task that finds each response's answer")
        self.proxies = list(proxies)
        self.span = span
        self.task = task
        self.normalize = _normalizer(normalize)
        self.combine = combine
        self.reference = reference
        self.eta_sign = eta_sign
        self.batch_size = batch_size
        self.append_eos = append_eos
        self.add_bos = add_bos

    def _eos(self, n: int, finished: Sequence[bool] | None) -> bool | list[bool]:
        """Which responses get their end scored: every one (``append_eos``), or only those that ended."""
        if finished is None or not self.append_eos:
            return self.append_eos
        if len(finished) != n:
            raise DGError(f"r_cal: {len(finished)} finished flags for {n} responses, expected one per response")
        return [bool(f) for f in finished]

    def _score(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        prompts: PromptSource,
        responses: Sequence[str],
        finished: Sequence[bool] | None = None,
    ):
        return score_text(
            model,
            tokenizer,
            self._prompts_for(prompts, tokenizer),
            responses,
            self.normalize,
            append_eos=self._eos(len(responses), finished),
            add_bos=self.add_bos,
            batch_size=self.batch_size,
        )

    @staticmethod
    def _prompts_for(prompts: PromptSource, tokenizer: Any) -> list[str]:
        return list(prompts(tokenizer) if callable(prompts) else prompts)

    def view(
        self, prompts: PromptSource, responses: Sequence[str], examples: Sequence[Example] | None = None
    ) -> tuple[PromptSource, list[str]]:
        """The (prompt, scored text) pairs of ``span``: the whole responses, or each stated answer after its prompt
        and the response before it."""
        if self.span == "response":
            return prompts, list(responses)
        if examples is None or len(examples) != len(responses):
            got = "no" if examples is None else len(examples)
            raise DGError(f"r_cal span 'answer': {got} examples for {len(responses)} responses, expected one each")
        starts = [self.task.answer_start(e, r) for e, r in zip(examples, responses)]
        heads = [r[:s] for r, s in zip(responses, starts)]

        def source(tokenizer: Any) -> list[str]:
            return [p + h for p, h in zip(self._prompts_for(prompts, tokenizer), heads)]

        return source, [r[s:] for r, s in zip(responses, starts)]

    def reference_logprob(
        self,
        prompts: PromptSource,
        responses: Sequence[str],
        finished: Sequence[bool] | None = None,
        examples: Sequence[Example] | None = None,
    ) -> torch.Tensor:
        """log π_ref(y|x) per response (π₀ with the adapter off, or the current π_θ), over ``span``."""

        prompts, responses = self.view(prompts, responses, examples)
        ctx = adapter_disabled(self.teacher) if self.reference == "base" else contextlib.nullcontext()
        with ctx:
            return self._score(self.teacher, self.teacher_tokenizer, prompts, responses, finished)

    def normalize_reference(
        self, logprob_sums: torch.Tensor, n_tokens: torch.Tensor, responses: Sequence[str]
    ) -> torch.Tensor:
        """π_ref's per-response term from token log-probs the caller already has (the RFT loop computes π₀ on the
        sampled tokens for its KL anchor anyway), normalised like :func:`score_text`."""
        sums = logprob_sums.detach().float().cpu()
        if self.normalize == "token":
            return sums / n_tokens.float().cpu().clamp(min=1)
        if self.normalize == "char":
            return sums / torch.tensor([max(1, len(r)) for r in responses], dtype=torch.float32)
        return sums

    def per_proxy(
        self,
        prompts: PromptSource,
        responses: Sequence[str],
        reference: torch.Tensor | None = None,
        finished: Sequence[bool] | None = None,
        examples: Sequence[Example] | None = None,
    ) -> torch.Tensor:
        """``[n_proxies, n]`` matrix of r_cal, one row per proxy (``reference``: a precomputed π_ref term, scored
        on the same text and span with the same ``finished`` flags; ``examples``: needed by ``span='answer'``)."""
        if len(responses) == 0:
            return torch.zeros(len(self.proxies), 0)
        if reference is None:
            ref = self.reference_logprob(prompts, responses, finished, examples)
        else:
            ref = reference.float().cpu()
        prompts, responses = self.view(prompts, responses, examples)
        rows = []
        for model, tok in self.proxies:
            rows.append(self._score(model, tok, prompts, responses, finished) - ref)
        return torch.stack(rows)

    def reduce(self, per_proxy: torch.Tensor) -> torch.Tensor:
        """Combine the rows of :meth:`per_proxy` into one reward per response."""
        how = self.combine
        if how == "worst":
            how = "max" if self.eta_sign < 0 else "min"
        if how == "mean":
            return per_proxy.mean(0)
        if how == "min":
            return per_proxy.min(0).values
        return per_proxy.max(0).values

    def __call__(
        self,
        prompts: PromptSource,
        responses: Sequence[str],
        reference: torch.Tensor | None = None,
        finished: Sequence[bool] | None = None,
        examples: Sequence[Example] | None = None,
    ) -> torch.Tensor:
        """r_cal per response (a detached tensor: the stop-gradient of the definition). ``finished``: whether each
        response ended (EOS) or was cut off at its budget; both sides then score the same (un)terminated text."""
        return self.reduce(self.per_proxy(prompts, responses, reference, finished, examples)).detach()

    def score(self, inputs: RewardInputs) -> torch.Tensor:
        return self(inputs.prompts, inputs.completions, inputs.reference, inputs.finished, inputs.examples)

    def reference_matches_anchor(self, tokenizer: Any) -> bool:
        """Whether π_ref's term can be summed from the KL anchor's pass of a policy sampled with ``tokenizer`` (at
        temperature 1, adapter off): the reference is π₀, scored with that very tokenizer, EOS included where the
        sample ended, in the training layout."""
        return (
            self.reference == "base"
            and self.span == "response"
            and self.teacher_tokenizer is tokenizer
            and self.append_eos
            and self.add_bos is None
        )

    def as_trl(self) -> Callable[..., list[float]]:
        """TRL signature; prompts arrive already formatted (TRL applies the chat template itself)."""

        if self.span != "response":
            raise DGError(
                f"r_cal span {self.span!r}: TRL's reward signature carries no examples to find answers in; "
                "expected span='response' (or call score(RewardInputs) with the examples)"
            )

        def r_cal(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            ps = [p if isinstance(p, str) else _completion_text(p) for p in prompts]
            return self(ps, [_completion_text(c) for c in completions]).tolist()

        return r_cal
