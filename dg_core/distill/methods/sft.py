"""``sft``: sequence-level KD, fine-tuning on the teacher's sampled text (the black-box API attack).

The batch is the teacher's responses re-tokenised by the student (EOS only where the teacher finished); the loss
is the response cross-entropy, computed from the realised tokens' log-probs in chunks (no ``[B, T, V]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dg_core.base.generate import encode_response, pack
from dg_core.config import StageConfig
from dg_core.distill.methods.base import DistillBatch, Method
from dg_core.distill.signals import SignalRow
from dg_core.distill.trainer import LossOut, response_ce


@dataclass
class Config(StageConfig):
    """sft adds no field of its own: the training options are all it needs."""


class SFT(Method):
    name = "sft"

    def batch(self, rows: list[SignalRow], step: int, micro: int) -> DistillBatch:
        prompts = [self.prompt_ids(r.example_id) for r in rows]
        resp = [encode_response(self.tok, r.response, add_eos=r.finished) for r in rows]
        return DistillBatch(pack(prompts, resp, self.pad, max_length=self.ctx.train.max_length))

    def loss(self, model: torch.nn.Module, batch: DistillBatch) -> LossOut:
        out = response_ce(model, batch.tokens)
        return LossOut(out.loss, out.n_tokens, {"ce": float(out.loss.detach())})


METHOD = SFT
