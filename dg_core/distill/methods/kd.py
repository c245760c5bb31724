"""``kd``: token-level KD on the teacher's stored top-k log-probs over its own samples.

Forward/reverse KL, JSD(β), skew KL or TVD (:func:`dg_core.distill.losses.topk_kd`: the k teacher tokens plus
a tail bucket), with temperature. Needs the teacher's tokenizer; the teacher itself is not loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dg_core.base.generate import pack
from dg_core.config import option
from dg_core.distill.losses import topk_kd
from dg_core.distill.methods.base import DistillBatch, DivergenceConfig, Method
from dg_core.distill.signals import SignalRow
from dg_core.distill.trainer import LossOut


@dataclass
class Config(DivergenceConfig):
    topk: int = option(20, "Teacher log-probs kept per position for kd/xtok (top-k + tail bucket).", ge=1)


class KD(Method):
    name = "kd"
    default_kind = "forward"
    needs_topk = True
    same_vocab = True

    def batch(self, rows: list[SignalRow], step: int, micro: int) -> DistillBatch:
        prompts = [self.prompt_ids(r.example_id) for r in rows]
        resp = [list(r.token_ids) for r in rows]
        tb = pack(prompts, resp, self.pad, max_length=self.ctx.train.max_length)
        keep = [self.kept(p, x) for p, x in zip(prompts, resp)]
        ids = torch.cat([r.topk_ids[:k] for r, k in zip(rows, keep)])
        lps = torch.cat([r.topk_logprobs[:k] for r, k in zip(rows, keep)])
        return DistillBatch(tb, {"topk_ids": ids, "topk_logprobs": lps})

    def loss(self, model: torch.nn.Module, batch: DistillBatch) -> LossOut:
        tb, c = batch.tokens, self.cfg
        logits = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits[:, :-1]
        d = topk_kd(
            logits[tb.targets_mask()],
            batch.tensors["topk_ids"],
            batch.tensors["topk_logprobs"],
            self.kind,
            temperature=c.temperature,
            beta=c.beta,
            alpha=c.alpha,
        )
        return self.with_ce(d.mean() * c.temperature**2, logits, batch)


METHOD = KD
