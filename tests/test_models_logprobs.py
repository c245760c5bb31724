"""Chunked per-token log-probabilities: equal to the full log-softmax (values and gradients) without ever
applying the output head to more than one chunk of positions."""

from __future__ import annotations

import copy

import pytest
import torch

from dg_core.base.generate import pack_texts
from dg_core.base.logprobs import enable_checkpointing, token_logprobs
from dg_core.models import attach_lora, load_model

pytestmark = pytest.mark.usefixtures("zoo_root")


def _full(model, batch, temperature=1.0):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1].float()
    lp = torch.log_softmax(logits / temperature, -1)
    tok = lp.gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    ent = -(lp.exp() * lp).sum(-1)
    return tok, ent, lp


@pytest.mark.parametrize("name", ["teacher", "student-gpt2", "proxy"])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_logprobs_match_the_full_softmax_in_value_and_gradient(name, lora):
    torch.manual_seed(0)
    base, tok = load_model(f"zoo:{name}", device="cpu")
    if lora:
        for p in base.parameters():
            p.requires_grad_(False)
        model = attach_lora(base, r=4, alpha=8)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.3)
    else:
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    twin = copy.deepcopy(model)
    batch = pack_texts(tok, ["12*3+4\n", "7*8-9\n", "1+1\n"], ["12*3=36 36+4=40 #40", "#47", "2"])
    mask = batch.targets_mask().float()
    adv = torch.tensor([[1.0], [-0.5], [2.0]])

    out = token_logprobs(
        model, batch.input_ids, batch.attention_mask, temperature=0.7, with_entropy=True, topk=3, chunk_positions=5
    )
    want, want_ent, want_lp = _full(twin, batch, temperature=0.7)
    m = mask.bool()
    assert torch.allclose(out.logprobs[m], want[m], atol=1e-5)
    assert torch.allclose(out.entropy[m], want_ent[m], atol=1e-4)
    top = want_lp.topk(3, dim=-1)
    assert torch.allclose(out.topk_logprobs, top.values, atol=1e-5)
    assert torch.equal(out.topk_ids, top.indices)

    (-(out.logprobs * adv * mask).sum()).backward()
    (-(want * adv * mask).sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    want_grads = {n: p.grad for n, p in twin.named_parameters() if p.requires_grad}
    assert grads and set(grads) == set(want_grads)
    for n in grads:
        assert grads[n] is not None, n
        assert torch.allclose(grads[n], want_grads[n], atol=1e-5, rtol=1e-4), n


def test_the_output_head_only_ever_sees_one_chunk_of_positions():
    """The point of chunking: no [B, T, V] logits (nor their gradient) exist at any time, forward or backward."""
    model, tok = load_model("zoo:teacher", device="cpu")
    for p in model.parameters():
        p.requires_grad_(True)
    enable_checkpointing(model)
    model.train()
    seen: list[int] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[:-1].numel()))
    batch = pack_texts(tok, ["12*3+4\n"] * 4, ["12*3=36 36+4=40 #40"] * 4)
    out = token_logprobs(model, batch.input_ids, batch.attention_mask, chunk_positions=6)
    out.logprobs.sum().backward()
    hook.remove()
    assert seen and max(seen) <= 6  # forward chunks and backward recomputation alike
    assert len(seen) >= 2 * (batch.input_ids.numel() - 4) // 6
    assert model.get_output_embeddings() is head  # the identity swap was undone


def test_calibrate_and_distill_configs_expose_scoring_batches_and_checkpointing():
    from dg_core.calibrate.stage import Config as Calibrate
    from dg_core.distill.stage import Config as Distill

    cal = Calibrate.__dataclass_fields__
    assert "score_batch" in cal and "gradient_checkpointing" in cal
    dist = Distill.__dataclass_fields__
    assert "teacher_batch_size" in dist and "gradient_checkpointing" in dist
