"""Across-tokenizer scoring and alignment, with two tiny tokenizers trained in code and tiny random models."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dg_core.base import align, generate
from dg_core.errors import DGError

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


def _brute_joint(model, tok, prompt, response):
    """Sum of log p over tokens overlapping the response, one sequence at a time, no padding."""
    enc = tok(prompt + response, return_offsets_mapping=True)
    ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    if not prompt:
        ids, offs = [tok.bos_token_id] + ids, [(0, 0)] + offs
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids)) if offs[i][1] > len(prompt))


def _brute_separate(model, tok, prompt, response, eos=False):
    """The training layout of dg_core.base.generate (pack_texts), scored on the response targets."""
    if not prompt:
        prompt_ids = [tok.bos_token_id]
        batch = generate.pack([prompt_ids], [generate.encode_response(tok, response, add_eos=eos)], tok.pad_token_id)
    else:
        batch = generate.pack_texts(tok, [prompt], [response], add_eos=eos)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch.input_ids).logits[0, :-1].float(), -1)
    tgt = batch.input_ids[0, 1:]
    m = batch.targets_mask()[0]
    return logp.gather(-1, tgt[:, None])[:, 0][m].sum().item()


@pytest.mark.parametrize("side", [0, 1])
@pytest.mark.parametrize("layout", ["separate", "joint"])
def test_sequence_logprob_matches_unpadded_brute_force(pair, side, layout):
    model, tok = pair[side]
    got = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, batch_size=3, layout=layout)
    assert got.shape == (4,)
    brute = _brute_joint if layout == "joint" else _brute_separate
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert got[i].item() == pytest.approx(brute(model, tok, p, r), rel=1e-4, abs=1e-4)
    single = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, batch_size=1, layout=layout)
    torch.testing.assert_close(single, got, rtol=1e-4, atol=1e-4)


def test_separate_layout_with_eos_is_the_training_likelihood(pair):
    model, tok = pair[1]
    got = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, append_eos=True, batch_size=2)
    for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES)):
        assert got[i].item() == pytest.approx(_brute_separate(model, tok, p, r, eos=True), rel=1e-4, abs=1e-4)
    without = align.sequence_logprob(model, tok, PROMPTS, RESPONSES)
    assert (got < without).all()  # the EOS term is a log-probability < 0


@pytest.mark.parametrize("layout", ["separate", "joint"])
def test_chain_rule_with_char_tokenizer(pair, layout):
    model, tok = pair[0]
    whole = align.sequence_logprob(model, tok, ["Q"], ["12+34=46"], layout=layout)
    parts = align.sequence_logprob(model, tok, ["Q", "Q12+34="], ["12+34=", "46"], layout=layout)
    assert whole.item() == pytest.approx(parts.sum().item(), rel=1e-5)


def test_normalisation(pair):
    model, tok = pair[1]
    total = align.sequence_logprob(model, tok, PROMPTS, RESPONSES)
    per_char = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, normalize="char")
    per_tok = align.sequence_logprob(model, tok, PROMPTS, RESPONSES, normalize=True)
    n_chars = torch.tensor([float(len(r)) for r in RESPONSES])
    torch.testing.assert_close(per_char, total / n_chars)
    n_tok = torch.tensor([float(len(tok(r, add_special_tokens=False)["input_ids"])) for r in RESPONSES])
    torch.testing.assert_close(per_tok, total / n_tok)


def test_joint_layout_counts_a_token_straddling_the_boundary_as_response(pair):
    _, tok = pair[1]
    ids, offs, resp = align.encode_pair(tok, "the ca", "t", layout="joint")
    toks = tok.convert_ids_to_tokens(ids)
    assert "Ġcat" in toks  # the BPE merged " cat" across the prompt/response cut
    assert [t for t, m in zip(toks, resp) if m] == ["Ġcat"]
    ids, offs, resp = align.encode_pair(tok, "the ca", "t", layout="separate")
    assert [t for t, m in zip(tok.convert_ids_to_tokens(ids), resp) if m] == ["t"]
    assert [o for o, m in zip(offs, resp) if m] == [(6, 7)]


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
    with pytest.raises(DGError, match="layout"):
        align.sequence_logprob(model, tok, ["a"], ["b"], layout="mixed")
    with pytest.raises(DGError, match="expected str"):
        align.sequence_logprob(model, tok, ["a"], [None])
