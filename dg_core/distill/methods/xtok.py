"""``xtok``: cross-tokenizer KD for a student with another vocabulary.

Teacher and student tokens of each teacher sample are aligned on character offsets
(:func:`dg_core.base.align.align_tokens`); either the span likelihoods are matched (``align``: ALM-style
binarised divergence, :func:`dg_core.distill.losses.span_likelihood_divergence`) or the sorted distributions at
the start of each aligned span (``uld``, :func:`dg_core.distill.losses.uld_distance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dg_core.base.align import align_tokens
from dg_core.base.generate import pack
from dg_core.config import option
from dg_core.distill.losses import span_likelihood_divergence, uld_distance
from dg_core.distill.methods import kd
from dg_core.distill.methods.base import DistillBatch, Method
from dg_core.distill.signals import SignalRow
from dg_core.distill.trainer import LossOut
from dg_core.errors import DGError

XTOK_LOSSES = ("align", "uld")


@dataclass
class Config(kd.Config):
    xtok_loss: str = option(
        "align", "xtok loss: char-offset span alignment or ULD sorted distributions.", choices=XTOK_LOSSES
    )


class XTok(Method):
    name = "xtok"
    default_kind = "forward"
    needs_topk = True

    def batch(self, rows: list[SignalRow], step: int, micro: int) -> DistillBatch:
        tok = self.tok
        prompts = [self.prompt_ids(r.example_id) for r in rows]
        resp, offs = [], []
        for r in rows:
            enc = tok(r.response, add_special_tokens=False, return_offsets_mapping=True) if r.response else None
            ids = list(enc["input_ids"]) if enc else []
            o = [tuple(x) for x in enc["offset_mapping"]] if enc else []
            if r.finished:
                ids.append(int(tok.eos_token_id))
                o.append((len(r.response), len(r.response)))
            resp.append(ids)
            offs.append(o)
        tb = pack(prompts, resp, self.pad, max_length=self.ctx.train.max_length)
        width = tb.input_ids.shape[1] - 1  # logits[:, :-1] positions per row
        s_pos, s_tok, s_span, t_lp, first_pos, t_first = [], [], [], [], [], []
        n_span = 0
        for b, (r, p, ids, o) in enumerate(zip(rows, prompts, resp, offs)):
            keep = self.kept(p, ids)
            t_keep = len(r.token_ids)
            spans = align_tokens(r.offsets, o, text_len=len(r.response))
            pairs = [(list(sp.a), list(sp.b)) for sp in spans]
            if r.finished and keep == len(ids):  # EOS on both sides: zero width, paired by hand
                pairs.append(([t_keep - 1], [len(ids) - 1]))
            for ta, sb in pairs:
                if max(sb) >= keep:
                    break  # truncated student response: later spans are incomplete
                for j in sb:
                    s_pos.append(b * width + len(p) - 1 + j)
                    s_tok.append(ids[j])
                    s_span.append(n_span)
                t_lp.append(float(r.token_logprobs[ta].sum()))
                first_pos.append(b * width + len(p) - 1 + sb[0])
                t_first.append(r.topk_logprobs[ta[0]])
                n_span += 1
        if n_span == 0:
            raise DGError("xtok: no aligned spans in this batch; expected teacher samples with response text")
        tensors = {
            "s_pos": torch.tensor(s_pos, dtype=torch.long),
            "s_tok": torch.tensor(s_tok, dtype=torch.long),
            "s_span": torch.tensor(s_span, dtype=torch.long),
            "t_span_lp": torch.tensor(t_lp, dtype=torch.float32),
            "first_pos": torch.tensor(first_pos, dtype=torch.long),
            "t_first_topk": torch.stack(t_first).float(),
        }
        return DistillBatch(tb, tensors)

    def loss(self, model: torch.nn.Module, batch: DistillBatch) -> LossOut:
        tb, c, t = batch.tokens, self.cfg, batch.tensors
        logits = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask).logits[:, :-1]
        flat = logits.reshape(-1, logits.shape[-1])
        if c.xtok_loss == "align":
            lp = torch.log_softmax(flat.index_select(0, t["s_pos"]).float(), -1)
            tok_lp = lp.gather(-1, t["s_tok"].unsqueeze(-1)).squeeze(-1)
            n_span = t["t_span_lp"].shape[0]
            s_span_lp = tok_lp.new_zeros(n_span).index_add(0, t["s_span"], tok_lp)
            d = span_likelihood_divergence(
                t["t_span_lp"], s_span_lp, self.kind, temperature=c.temperature, beta=c.beta, alpha=c.alpha
            )
        else:
            d = uld_distance(flat.index_select(0, t["first_pos"]), t["t_first_topk"], temperature=c.temperature)
        return self.with_ce(d.mean() * c.temperature**2, logits, batch, int(d.shape[0]))


METHOD = XTok
