"""Batched, KV-cached sampling from a causal LM, and the token layout that training uses.

One tokenisation rule everywhere: a prompt is encoded on its own (with the tokenizer's own special-token
convention), a response is encoded on its own without special tokens and followed by EOS. Generation
conditions on exactly those prompt ids, so a model trained on ``prompt_ids + response_ids + [eos]`` learns
the very sequence it will later be asked to produce; joint tokenisation would merge subwords across the
boundary (BPE) or drop the word-start marker (Unigram/Metaspace) and train a sequence it never generates.

Sampling is explicit (temperature, top-p, top-k off by default) rather than inheriting a checkpoint's
``generation_config``: calibration rewards and distillation need samples from the model's own distribution.
It runs under a forked RNG seeded from ``seed``, so results depend on the seed alone and the caller's RNG
stream (e.g. a training loop being resumed) is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from dg_core.base.modelinfo import context_limit, model_name
from dg_core.errors import DGError

__all__ = [
    "Rollouts",
    "TokenBatch",
    "encode_prompt",
    "encode_response",
    "generate",
    "prompt_adds_special_tokens",
    "generate_tokens",
    "pack",
    "pack_texts",
]


# ----------------------------------------------------------------------------------------------- encoding
def prompt_adds_special_tokens(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether a prompt's encoding adds the tokenizer's special tokens (BOS): not for a tokenizer with a chat
    template, whose rendered prompts (:meth:`dg_core.data.tasks.Task.prompt`) already hold the special tokens the
    template wants. Llama-3 and Gemma templates write ``{{ bos_token }}`` and their tokenizers add BOS too;
    encoding without adding gives exactly ``apply_chat_template(..., tokenize=True)``'s ids (what vLLM feeds)."""
    return not getattr(tokenizer, "chat_template", None)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt ids as generation sees them: the tokenizer's own BOS convention for plain text, the chat
    template's own special tokens for a rendered chat prompt (see :func:`prompt_adds_special_tokens`)."""
    return list(tokenizer(prompt, add_special_tokens=prompt_adds_special_tokens(tokenizer))["input_ids"])


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str, *, add_eos: bool = True) -> list[int]:
    """Response ids without special tokens, followed by EOS so a student learns where to stop."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"]) if response else []
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise DGError("tokenizer has no eos_token: expected one so responses can be terminated")
        ids.append(int(tokenizer.eos_token_id))
    return ids


@dataclass
class TokenBatch:
    """Right-padded training batch: ``input_ids``/``attention_mask`` ``[B, T]`` and ``response_mask`` marking the
    positions whose *token* belongs to the response (so the loss at position t uses logits at t-1)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))

    @property
    def n_response_tokens(self) -> int:
        return int(self.response_mask.sum())

    def targets_mask(self) -> torch.Tensor:
        """``[B, T-1]`` mask aligned with ``logits[:, :-1]`` predicting ``input_ids[:, 1:]``."""
        return self.response_mask[:, 1:]


def pack(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    *,
    max_length: int | None = None,
) -> TokenBatch:
    """Concatenate prompt and response ids per row and right-pad; truncate the response (never the prompt)
    to ``max_length``. Right padding keeps position ids = arange, matching how generation positions tokens."""
    if len(prompt_ids) != len(response_ids):
        raise DGError(f"pack: {len(prompt_ids)} prompts but {len(response_ids)} responses, expected equal counts")
    if not prompt_ids:
        raise DGError("pack: no rows, expected at least one prompt/response pair")
    rows, resp = [], []
    for p, r in zip(prompt_ids, response_ids):
        p, r = list(p), list(r)
        if max_length is not None:
            if len(p) >= max_length:
                raise DGError(f"prompt of {len(p)} tokens: expected fewer than max_length={max_length}")
            r = r[: max_length - len(p)]
        rows.append(p + r)
        resp.append([0] * len(p) + [1] * len(r))
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    rmask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (x, m) in enumerate(zip(rows, resp)):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        att[i, : len(x)] = 1
        rmask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return TokenBatch(ids, att, rmask)


def pack_texts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_length: int | None = None,
    add_eos: bool = True,
) -> TokenBatch:
    """Tokenise (prompt, response) text pairs by the module's rule and pack them for training."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pack(
        [encode_prompt(tokenizer, p) for p in prompts],
        [encode_response(tokenizer, r, add_eos=add_eos) for r in responses],
        pad,
        max_length=max_length,
    )


# ----------------------------------------------------------------------------------------------- sampling
@dataclass
class Rollouts:
    """Sampled sequences, flat in prompt-major order (prompt i's j-th sample is row ``i * n + j``).

    ``response_ids`` keep the EOS token when the model produced one (``finished``), so a batch packed from
    them trains the stop decision too; ``texts`` are decoded responses without it.
    """

    prompt_index: list[int]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    n: int
    index: list[int] | None = None  # flat position of each row when only a shard was generated (``shard=``)

    def nested_texts(self) -> list[list[str]]:
        return [self.texts[i : i + self.n] for i in range(0, len(self.texts), self.n)]

    def batch(self, pad_id: int, *, max_length: int | None = None) -> TokenBatch:
        return pack(self.prompt_ids, self.response_ids, pad_id, max_length=max_length)


@contextmanager
def _left_padding(tokenizer: PreTrainedTokenizerBase):
    old = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = old


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _device_of(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _check_args(n: int, max_new_tokens: int, temperature: float, top_p: float, batch_size: int) -> None:
    if n < 1:
        raise DGError(f"generate: n={n}, expected >= 1 samples per prompt")
    if max_new_tokens < 1:
        raise DGError(f"generate: max_new_tokens={max_new_tokens}, expected >= 1")
    if not temperature > 0:
        raise DGError(f"generate: temperature={temperature}, expected > 0 (use do_sample=False for greedy)")
    if not 0 < top_p <= 1:
        raise DGError(f"generate: top_p={top_p}, expected a value in (0, 1]")
    if batch_size < 1:
        raise DGError(f"generate: batch_size={batch_size}, expected >= 1")


@torch.no_grad()
def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    stop_at_eos: bool = True,
    on_batch: Callable[[int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Rollouts:
    """Sample ``n`` responses per prompt with KV cache and left padding; token ids plus decoded text.

    ``batch_size`` counts sequences (prompts × samples). Prompts are batched in length order to waste
    little padding, and results come back in input order. Deterministic for a given ``seed`` and
    ``batch_size``; greedy decoding (``do_sample=False``) ignores the seed. ``on_batch(n)`` is called after each
    batch of ``n`` sequences (progress).

    ``shard=(rank, world)`` generates only the batches ``b`` with ``b % world == rank`` (data-parallel
    processes splitting one job): each batch keeps its seed, so the shards together are exactly the
    single-process result; the rows come back in flat order with their positions in ``index``.
    """
    _check_args(n, max_new_tokens, temperature, top_p, batch_size)
    if not 0 <= shard[0] < shard[1]:
        raise DGError(f"generate shard={shard}: expected (rank, world) with 0 <= rank < world")
    prompts = list(prompts)
    if not prompts:
        return Rollouts([], [], [], [], [], n)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise DGError("tokenizer has neither pad_token nor eos_token: expected at least one to pad batches")
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise DGError("generate: a prompt encodes to zero tokens, expected a non-empty prompt")

    limit = context_limit(model)
    longest = max(len(e) for e in encoded)
    if limit is not None and longest + max_new_tokens > limit:  # stages check up front; this is the safety net
        raise DGError(
            f"model {model_name(model, tokenizer)}: context of {limit} positions, but the longest prompt is {longest} "
            f"tokens + max_new_tokens={max_new_tokens}; expected at most {limit} in all"
        )
    flat = [i for i in range(len(prompts)) for _ in range(n)]  # prompt-major
    order = sorted(range(len(flat)), key=lambda j: (len(encoded[flat[j]]), j))
    sampling = (
        {
            "temperature": temperature,
            "top_p": top_p,
            "top_k": max(top_k, 0),
            # Explicit neutral values: a checkpoint's generation_config fills in whatever is left as None.
            "typical_p": 1.0,
            "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0,
        }
        if do_sample
        else {}
    )
    if do_sample and getattr(getattr(model, "generation_config", None), "min_p", None) is not None:
        sampling["min_p"] = 0.0  # neutralise a checkpoint's min-p (left None otherwise: a 0.0 warper costs time)
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad,
        eos_token_id=eos if stop_at_eos else [],  # [] (not None) so the model's own EOS is not filled in
        bos_token_id=tokenizer.bos_token_id,
        **sampling,
    )
    device = _device_of(model)
    responses: dict[int, list[int]] = {}
    finished: dict[int, bool] = {}
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), _eval_mode(model), _left_padding(tokenizer):
        for b, start in enumerate(range(0, len(order), batch_size)):
            if b % shard[1] != shard[0]:
                continue
            rows = order[start : start + batch_size]
            torch.manual_seed((seed * 1_000_003 + b) % (2**63 - 1))
            ids = [encoded[flat[j]] for j in rows]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            att = torch.zeros((len(ids), width), dtype=torch.long)
            for r, x in enumerate(ids):
                input_ids[r, width - len(x) :] = torch.tensor(x, dtype=torch.long)
                att[r, width - len(x) :] = 1
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=att.to(device), generation_config=gen_cfg
            )
            new = out[:, width:].tolist()
            for r, j in enumerate(rows):
                toks = new[r]
                done = bool(stop_at_eos and eos is not None and eos in toks)
                if done:  # generate pads finished rows after their EOS; keep the EOS, drop the padding
                    toks = toks[: toks.index(eos) + 1]
                responses[j] = toks
                finished[j] = done
            if on_batch is not None:
                on_batch(len(rows))
    mine = sorted(responses)  # every flat position unless sharded
    resp = [responses[j] for j in mine]
    done = [finished[j] for j in mine]
    texts = [tokenizer.decode(r[:-1] if f else r, skip_special_tokens=True) for r, f in zip(resp, done)]
    return Rollouts(
        prompt_index=[flat[j] for j in mine],
        prompt_ids=[list(encoded[flat[j]]) for j in mine],
        response_ids=resp,
        texts=texts,
        finished=done,
        n=n,
        index=None if shard[1] == 1 else mine,
    )


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    n: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    do_sample: bool = True,
    batch_size: int = 32,
    seed: int = 0,
    stop_at_eos: bool = True,
) -> list[list[str]]:
    """``n`` decoded responses per prompt (response text only, cut at EOS): ``out[i][j]`` for prompt i."""
    return generate_tokens(
        model,
        tokenizer,
        prompts,
        n=n,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        do_sample=do_sample,
        batch_size=batch_size,
        seed=seed,
        stop_at_eos=stop_at_eos,
    ).nested_texts()
