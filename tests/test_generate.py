"""Sampling engine: determinism, left padding, EOS handling, and the train/generate tokenisation contract."""

from __future__ import annotations

import pytest
import torch

from dg_core.base.generate import encode_prompt, generate, generate_tokens, pack, pack_texts
from dg_core.errors import DGError
from dg_core.models.zoo import ZOO, build_model, build_tokenizer

PROMPTS = ["12*3+4\n", "5*6\n", "123*4+56\n"]


@pytest.fixture(scope="module", params=["student-llama", "student-gpt2", "proxy"])
def zoo_pair(request):
    torch.set_num_threads(1)
    spec = ZOO[request.param]
    tok = build_tokenizer(spec.tokenizer, spec.vocab_size)
    return build_model(spec, tok), tok


def test_n_samples_per_prompt_deterministic_under_seed(zoo_pair):
    model, tok = zoo_pair
    a = generate(model, tok, PROMPTS, n=3, max_new_tokens=8, seed=7, batch_size=4)
    b = generate(model, tok, PROMPTS, n=3, max_new_tokens=8, seed=7, batch_size=4)
    c = generate(model, tok, PROMPTS, n=3, max_new_tokens=8, seed=8, batch_size=4)
    assert [len(x) for x in a] == [3, 3, 3]
    assert a == b
    assert a != c
    assert len({s for row in a for s in row}) > 1  # samples differ from each other


def test_caller_rng_stream_untouched(zoo_pair):
    model, tok = zoo_pair
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    generate(model, tok, PROMPTS, n=2, max_new_tokens=4, seed=1)
    assert torch.equal(torch.rand(4), expected)


def test_greedy_is_independent_of_left_padding_and_batching(zoo_pair):
    model, tok = zoo_pair
    together = generate(model, tok, PROMPTS, do_sample=False, max_new_tokens=8, batch_size=8)
    alone = [generate(model, tok, [p], do_sample=False, max_new_tokens=8)[0] for p in PROMPTS]
    assert together == alone
    rolls = generate_tokens(model, tok, PROMPTS, do_sample=False, max_new_tokens=8, batch_size=2)
    assert rolls.prompt_ids == [encode_prompt(tok, p) for p in PROMPTS]
    assert all(len(r) == 8 or r[-1] == tok.eos_token_id for r in rolls.response_ids)


def test_sampling_restores_training_mode_and_padding_side(zoo_pair):
    model, tok = zoo_pair
    model.train()
    tok.padding_side = "right"
    try:
        generate(model, tok, PROMPTS[:1], max_new_tokens=2)
        assert model.training and tok.padding_side == "right"
    finally:
        model.eval()
        tok.padding_side = "left"


def test_bad_arguments_fail_with_one_line(zoo_pair):
    model, tok = zoo_pair
    for kw in ({"n": 0}, {"max_new_tokens": 0}, {"temperature": 0.0}, {"top_p": 1.5}, {"batch_size": 0}):
        with pytest.raises(DGError, match="generate:"):
            generate(model, tok, PROMPTS, **kw)
    assert generate(model, tok, [], n=2) == []


def test_pack_masks_response_only_and_right_pads():
    tb = pack([[5, 6, 7], [5]], [[1, 2, 9], [3, 9]], pad_id=0)
    assert tb.input_ids.tolist() == [[5, 6, 7, 1, 2, 9], [5, 3, 9, 0, 0, 0]]
    assert tb.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    assert tb.response_mask.int().tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert tb.n_response_tokens == 5
    cut = pack([[5, 6, 7]], [[1, 2, 9]], pad_id=0, max_length=4)
    assert cut.input_ids.tolist() == [[5, 6, 7, 1]]
    with pytest.raises(DGError, match="max_length"):
        pack([[5, 6, 7]], [[1]], pad_id=0, max_length=3)
    with pytest.raises(DGError, match="responses"):
        pack([[5]], [], pad_id=0)


@pytest.mark.parametrize("name", ["student-llama", "student-gpt2", "student-neox"])
def test_trained_on_packed_text_generates_it_back_and_stops(name):
    """What pack_texts trains is exactly what generate produces: the response text, then EOS."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = ZOO[name]
    tok = build_tokenizer(spec.tokenizer, spec.vocab_size)
    model = build_model(spec, tok).train()
    prompts, responses = ["12*3+4\n", "7*8\n"], ["12*3=36 36+4=40 #40", "7*8=56 #56"]
    batch = pack_texts(tok, prompts, responses)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch.input_ids[:, 1:], reduction="none")
        loss = (nll * batch.targets_mask()).sum() / batch.targets_mask().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rolls = generate_tokens(model, tok, prompts, do_sample=False, max_new_tokens=40)
    assert rolls.texts == responses
    assert rolls.finished == [True, True]
    assert all(r[-1] == tok.eos_token_id for r in rolls.response_ids)
    # Re-packing the rollouts reproduces the training layout token for token.
    assert torch.equal(rolls.batch(tok.pad_token_id).input_ids, batch.input_ids)
    # Without EOS stopping every row runs to the token budget.
    long = generate_tokens(model, tok, prompts, do_sample=False, max_new_tokens=30, stop_at_eos=False)
    assert [len(r) for r in long.response_ids] == [30, 30]
    assert long.finished == [False, False]


# ------------------------------------------------------------------------------------- chat templates
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def _llama3_style_tokenizer():
    """A byte-level BPE tokenizer that, like Llama-3's, adds <|begin_of_text|> itself *and* has a chat template
    writing {{ bos_token }}: re-encoding the rendered text with special tokens would give two BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    corpus = ["user assistant question answer 12*3+4 = 40 #40 Show your steps"] * 20
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|eot_id|>"
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_chat_prompt_ids_equal_apply_chat_template_with_one_bos():
    from dg_core.base.align import encode_pair
    from dg_core.base.generate import encode_prompt
    from dg_core.data import get_task

    tok = _llama3_style_tokenizer()
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds BOS on its own
    task = get_task("synthetic_math", a_digits=1, b_digits=1, terms=1, term_digits=1)
    ex = task.generate(1, 0)[0]
    text = task.prompt(ex, tok)
    assert text.startswith("<|begin_of_text|>")
    content = f"{task.question(ex)}\n\n{task.instruction(ex)}"
    want = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True)
    want = list(want["input_ids"] if hasattr(want, "keys") else want)
    got = encode_prompt(tok, text)
    assert got == want
    assert got.count(tok.bos_token_id) == 1
    # scoring a pair lays the prompt out the same way
    ids, _, resp = encode_pair(tok, text, "#40")
    assert ids[: len(want)] == want and not any(resp[: len(want)])
    # plain text (no chat template) keeps the tokenizer's own BOS convention
    tok.chat_template = None
    assert encode_prompt(tok, "12*3+4\n")[0] == tok.bos_token_id
