"""Instruction following: verifiable constraints, and a reward-model scorer for open answers (Dolly, Vicuna)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from dg_core.data.constraints import check_all, validate_constraint
from dg_core.data.example import Example, Score
from dg_core.data.synthetic.instructions import InstructionSpec, generate
from dg_core.data.tasks import RowError, Task, register_task
from dg_core.errors import DGError
from dg_core.models.resolve import resolve_model_dir


class InstructionsTask(Task):
    """Score by the example's verifiable constraints.

    Option ``reward``: ``all`` (default; 1 only when every constraint holds, IFEval's strict prompt-level
    accuracy) or ``fraction`` (share of constraints met: a denser signal for calibration).
    """

    name = "instructions"
    family = "instructions"
    plain_template = "{question}\n"

    def __init__(self, **options: Any):
        super().__init__(**options)
        unknown = sorted(set(options) - {"reward"})
        if unknown:
            raise DGError(f"task instructions: unknown option {unknown[0]!r}, expected: reward")
        self.reward_mode = options.get("reward", "all")
        if self.reward_mode not in ("all", "fraction"):
            raise DGError(f"task instructions option 'reward': got {self.reward_mode!r}, expected 'all' or 'fraction'")

    def validate(self, example: Example) -> None:
        super().validate(example)
        if not example.constraints:
            raise RowError("constraints", "empty, expected at least one verifiable constraint")
        for c in example.constraints:
            try:
                validate_constraint(c)
            except ValueError as e:
                raise RowError("constraints", str(e)) from None

    def score(self, example: Example, response: str) -> Score:
        if not response.strip():
            return Score(0.0, None, "empty response")
        results = check_all(response, example.constraints)
        failed = [f"{t}: {r}" for t, ok, r in results if not ok]
        met = len(results) - len(failed)
        if self.reward_mode == "all":
            reward = 1.0 if not failed else 0.0
        else:
            reward = met / len(results)
        reason = "all constraints met" if not failed else "failed " + "; ".join(failed)
        return Score(reward, f"{met}/{len(results)}", reason)


class SyntheticInstructionsTask(InstructionsTask):
    """Offline prompts with verifiable constraints (see ``dg_core.data.synthetic.instructions``)."""

    name = "synthetic_instructions"

    def __init__(self, **options: Any):

        reward = options.pop("reward", "all")
        super().__init__(reward=reward)
        self.options = {**options, "reward": reward}
        try:
            self.spec_ = InstructionSpec(**options)
        except TypeError as e:
            raise DGError(
                f"task synthetic_instructions: bad option ({e}); see dg_core.data.synthetic.instructions"
            ) from None

    def generate(self, n: int, seed: int) -> list[Example]:

        return generate(self.spec_, n, seed)


class RewardModelScorer:
    """A sequence-classification reward model scoring (prompt, response) pairs in batches.

    Loaded from a store URI, local directory, ``zoo:`` name or hub id the way ``dg_core.models`` resolves them
    (safetensors only; remote code off). The reward is ``sigmoid((logit - center) / scale)``: one logit for a
    single-output head, the positive-minus-negative logit for a two-class head.
    """

    def __init__(
        self,
        model_ref: str,
        *,
        batch_size: int = 16,
        max_length: int = 512,
        device: str = "cpu",
        center: float = 0.0,
        scale: float = 1.0,
    ):
        if batch_size < 1:
            raise DGError(f"reward model batch_size={batch_size}: expected >= 1")
        if scale <= 0:
            raise DGError(f"reward model scale={scale}: expected > 0")
        self.model_ref, self.batch_size, self.max_length = model_ref, batch_size, max_length
        self.device, self.center, self.scale = device, center, scale
        self._model = None
        self._tok = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        d = resolve_model_dir(self.model_ref)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(d, use_safetensors=True, trust_remote_code=False)
            tok = AutoTokenizer.from_pretrained(d, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise DGError(f"reward model {self.model_ref!r}: cannot load a sequence classifier ({e})") from None
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        tok.padding_side = "right"
        tok.truncation_side = "left"
        self._model, self._tok = model.to(self.device).eval(), tok

    def _text(self, prompt: str, response: str) -> str:
        tok = self._tok
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
        return f"{prompt}\n{response}"

    def logits(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Raw reward logits, batched; order follows the inputs."""
        import torch

        self._load()
        out: list[float] = []
        texts = [self._text(p, r) for p, r in zip(prompts, responses)]
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tok(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                lg = self._model(**enc).logits.float()
                vals = lg[:, 0] if lg.shape[-1] == 1 else lg[:, 1] - lg[:, 0]
                out.extend(vals.tolist())
        return out

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [1.0 / (1.0 + math.exp(-(x - self.center) / self.scale)) for x in self.logits(prompts, responses)]


class OpenEndedTask(Task):
    """Open instructions (Dolly, Vicuna, Alpaca) scored by a reward model.

    Options: ``reward_model`` (required to score), ``batch_size``, ``max_length``, ``device``, ``center``,
    ``scale`` (see :class:`RewardModelScorer`). An empty response scores 0 without asking the model.
    """

    name = "open_ended"
    family = "instructions"
    plain_template = "{question}\n"
    _OPTIONS = ("reward_model", "batch_size", "max_length", "device", "center", "scale")

    def __init__(self, **options: Any):
        super().__init__(**options)
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise DGError(f"task open_ended: unknown option {unknown[0]!r}, expected one of {list(self._OPTIONS)}")
        self._scorer: RewardModelScorer | None = None

    @property
    def scorer(self) -> RewardModelScorer:
        if self._scorer is None:
            ref = self.options.get("reward_model")
            if not ref:
                raise DGError("task open_ended: option 'reward_model' is not set, expected a reward model reference")
            kw = {k: self.options[k] for k in self._OPTIONS[1:] if k in self.options}
            self._scorer = RewardModelScorer(str(ref), **kw)
        return self._scorer

    def score(self, example: Example, response: str) -> Score:
        return self.score_batch([example], [response])[0]

    def score_batch(self, examples: Sequence[Example], responses: Sequence[str]) -> list[Score]:
        if len(examples) != len(responses):
            raise DGError(f"score_batch: {len(examples)} examples but {len(responses)} responses")
        todo = [i for i, r in enumerate(responses) if r.strip()]
        out = [Score(0.0, None, "empty response")] * len(responses)
        if todo:
            rewards = self.scorer.rewards([examples[i].prompt for i in todo], [responses[i] for i in todo])
            for i, r in zip(todo, rewards):
                out[i] = Score(min(1.0, max(0.0, r)), None, f"reward model {r:.3f}")
        return out


register_task(InstructionsTask, "ifeval")
register_task(SyntheticInstructionsTask, "synthetic-instructions")
register_task(OpenEndedTask, "dolly", "vicuna", "alpaca", "sharegpt", "reward_model")
