"""Across-tokenizer scoring and alignment, with two tiny tokenizers trained in code and tiny random models."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dg_core.errors import DGError
from dg_core.traps import align

CORPUS = ["the cat sat on the mat", "12+34=46", "Q: what is 7*6? A: 42", "a dog and a cat"] * 20
SPECIAL = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def char_tokenizer() -> PreTrainedTokenizerFast:
    chars = sorted(set("".join(CORPUS)) | set("abcdefghijklmnopqrstuvwxyz0123456789 +-*=?:.#"))
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def tiny_llama(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab: int, seed: int = 1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=16, n_layer=1, n_head=2, n_positions=64)).eval()


@pytest.fixture(scope="module")
def pair():
    ta, tb = char_tokenizer(), bpe_tokenizer()
    return (tiny_llama(len(ta)), ta), (tiny_gpt2(len(tb)), tb)


PROMPTS = ["Q: what is 7*6? A:", "the ca", "", "12+34="]
RESPONSES = [" 42", "t sat on the mat", "a dog", "46"]


def _brute(model, tok, prompt, response):
    """Sum of log p over tokens overlapping the response, one sequence at a time, no padding."""
    enc = tok(prompt + response, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if not offs or offs[0][1] > offs[0][0]:
        ids, offs = [tok.bos_token_id] + ids, [(0, 0)] + offs
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)) if offs[i][1] > len(prompt))


@pytest.mark.parametrize("side", [0, 1])
def test_sequence_logprob_matches_unpadded_brute_force(pair, side):
    model, tok = pair[side]
    got = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, batch_size=3)
    assert got.shape == (4,)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert got[i].item() == pytest.approx(_brute(model, tok, p, r), rel=1e-4, abs=1e-4)
    single = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, batch_size=1)
    torch.testing.assert_close(single, got, rtol=1e-4, atol=1e-4)


def test_chain_rule_with_char_tokenizer(pair):
    model, tok = pair[0]
    whole = align.sequence_logprob(model, tok, [""], ["12+34=46"])
    parts = align.sequence_logprob(model, tok, ["", "12+34="], ["12+34=", "46"])
    assert whole.item() == pytest.approx(parts.sum().item(), rel=1e-5)


def test_normalisation_and_eos(pair):
    model, tok = pair[1]
    total = align.sequence_logprob(model, tok, PROMPTS, RESPONSES)
    per_char = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, normalize="char")
    per_tok = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, normalize=True)
    n_chars = torch.tensor([float(len(r)) for r in RESPONSES])
    torch.testing.assert_close(per_char, total / n_chars)
    n_tok = []
    for p, r in zip(PROMPTS, RESPONSES):
        offs = tok(p + r, return_offsets_mapping=True)["offset_mapping"]
        n_tok.append(float(sum(align.response_token_mask(offs, len(p)))))
    torch.testing.assert_close(per_tok, total / torch.tensor(n_tok))
    with_eos = align.sequence_logprob(model, tok, PROMPTS[:1], RESPONSES[:1], append_eos=True)
    ids = [tok.bos_token_id] + tok(PROMPTS[0] + RESPONSES[0])["input_ids"]  # this tokenizer adds no BOS itself
    with torch.no_grad():
        last = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1)[tok.eos_token_id]
    assert with_eos.item() == pytest.approx(total[0].item() + last.item(), rel=1e-4)


def test_token_straddling_the_boundary_counts_as_response(pair):
    _, tok = pair[1]
    enc = tok("the cat", return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(enc["input_ids"])
    assert "Ġcat" in toks  # the BPE merged " cat"; split prompt "the ca" / response "t"
    mask = align.response_token_mask(enc["offset_mapping"], len("the ca"))
    assert [t for t, m in zip(toks, mask) if m] == ["Ġcat"]


def test_requires_grad_flows_to_parameters(pair):
    model, tok = pair[0]
    lp = align.sequence_logprob(model, tok, ["12+"], ["34"], requires_grad=True)
    lp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


def test_align_tokens_hand_example():
    # text "ab cd": A = [a][b][ ][c][d], B = [ab][ cd]
    a = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    b = [(0, 2), (2, 5)]
    spans = align.align_tokens(a, b)
    assert [(s.start, s.end, s.a, s.b) for s in spans] == [(0, 2, (0, 1), (0,)), (2, 5, (2, 3, 4), (1,))]
    # crossing tokenizations merge until boundaries coincide: A=[abc][d], B=[a][bcd]
    spans = align.align_tokens([(0, 3), (3, 4)], [(0, 1), (1, 4)])
    assert [(s.start, s.end, s.a, s.b) for s in spans] == [(0, 4, (0, 1), (0, 1))]
    # B leaves the space out of its offsets (whitespace pre-tokenizer); special tokens are zero-width
    spans = align.align_tokens([(0, 0), (0, 2), (2, 5)], [(0, 2), (3, 5)])
    assert [(s.start, s.end, s.a, s.b) for s in spans] == [(0, 2, (1,), (0,)), (2, 5, (2,), (1,))]
    assert align.align_tokens([], [(0, 1)]) == []


def test_char_vs_bpe_alignment_recovers_the_bpe_tokens(pair):
    (_, ta), (_, tb) = pair
    text = "Q: what is 7*6? A: 42 the cat sat"
    oa = ta(text, return_offsets_mapping=True)["offset_mapping"]
    ob = tb(text, return_offsets_mapping=True)["offset_mapping"]
    spans = align.align_tokens(oa, ob)
    # every character token cuts everywhere, so the finest shared spans are exactly the BPE tokens
    assert [(s.start, s.end) for s in spans] == [tuple(o) for o in ob if o[1] > o[0]]
    assert sorted(i for s in spans for i in s.a) == [i for i, o in enumerate(oa) if o[1] > o[0]]
    assert "".join(text[s.start : s.end] for s in spans) == text


def test_aligned_span_logprobs_sum_to_sequence_logprob(pair):
    (ma, ta), (mb, tb) = pair
    comps = align.aligned_span_logprobs(ma, ta, mb, tb, PROMPTS, RESPONSES, batch_size=2)
    lp_a = align.sequence_logprob(ma, ta, PROMPTS, RESPONSES)
    lp_b = align.sequence_logprob(mb, tb, PROMPTS, RESPONSES)
    for i, c in enumerate(comps):
        assert len(c.spans) >= 1 and len(c.texts) == len(c.spans)
        assert c.lp_a.sum().item() == pytest.approx(lp_a[i].item(), rel=1e-4)
        assert c.lp_b.sum().item() == pytest.approx(lp_b[i].item(), rel=1e-4)
    same = align.aligned_span_logprobs(ma, ta, ma, ta, PROMPTS, RESPONSES)
    assert all(c.log_ratio.abs().max() < 1e-5 for c in same)


def test_bad_input(pair):
    model, tok = pair[0]
    with pytest.raises(DGError, match="2 prompts and 1 responses"):
        align.sequence_logprob(model, tok, ["a", "b"], ["c"])
    with pytest.raises(DGError, match="normalize"):
        align.sequence_logprob(model, tok, ["a"], ["b"], normalize="byte")
    with pytest.raises(DGError, match="max positions"):
        align.sequence_logprob(model, tok, ["a" * 100], ["b"])
    with pytest.raises(DGError, match="expected str"):
        align.sequence_logprob(model, tok, ["a"], [None])
