"""The offline tiny-model zoo: a teacher, a smaller proxy, and students of other architectures and tokenizers.

Everything is built in code from a seed: tokenizers are trained with `tokenizers` on a fixed corpus, weights are
random-initialised. Members are cached in the store under ``<root>/zoo/<name>/v<ZOO_VERSION>`` and rebuilt only
when missing, so `zoo:<name>` is a cheap, reproducible model reference for tests, the demo and the pipelines.

The tokenizers differ on purpose (char-level, byte-level BPE, Unigram): the product must work when the proxy
and the attacking students do not share the teacher's vocabulary. ``student-neox`` is the attacker calibration never
sees: another family (GPT-NeoX) and a larger byte-level BPE that merges digits as GPT-2's does (``56`` is one
token), so it cannot read the arithmetic digit by digit as the others do.
"""

from __future__ import annotations

import json
import logging
import random
import string
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from dg_core import store
from dg_core.errors import DGError
from dg_core.models.save import save_model

log = logging.getLogger(__name__)

ZOO_VERSION = 3  # 3: byte-identical builds (Unigram pieces in a fixed order)
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ALPHABET = sorted(set(string.printable) - set("\x0b\x0c\r"))


@dataclass(frozen=True)
class ZooMember:
    """A tiny model: architecture, size and tokenizer kind. Sizes keep CPU training in seconds to minutes."""

    arch: str  # llama | qwen2 | gpt2 | gpt_neox
    tokenizer: str  # char | bpe | unigram
    hidden: int
    layers: int
    heads: int
    kv_heads: int | None = None
    intermediate: int | None = None
    max_positions: int = 256
    seed: int = 0
    role: str = ""
    vocab_size: int = 256  # subword tokenizers' trained vocabulary (the char tokenizer ignores it)
    extra: dict[str, Any] = field(default_factory=dict)


ZOO: dict[str, ZooMember] = {
    "teacher": ZooMember(
        "llama",
        "char",
        hidden=128,
        layers=4,
        heads=4,
        intermediate=384,
        seed=1,
        role="teacher to calibrate (~0.8M params)",
    ),
    "proxy": ZooMember(
        "qwen2",
        "bpe",
        hidden=48,
        layers=2,
        heads=4,
        kv_heads=2,
        intermediate=128,
        seed=2,
        role="calibration proxy q: smaller, other architecture and tokenizer",
    ),
    "student-llama": ZooMember(
        "llama",
        "char",
        hidden=64,
        layers=3,
        heads=4,
        intermediate=192,
        seed=3,
        role="probe student sharing the teacher's tokenizer (logit KD possible)",
    ),
    "student-gpt2": ZooMember(
        "gpt2",
        "unigram",
        hidden=64,
        layers=3,
        heads=4,
        seed=4,
        role="probe student of another family and tokenizer than the proxy (xtok KD)",
    ),
    "student-neox": ZooMember(
        "gpt_neox",
        "bpe",
        hidden=64,
        layers=3,
        heads=4,
        intermediate=192,
        seed=5,
        vocab_size=960,
        role="held-out attacker: a family and tokenizer calibration never sees; its BPE merges digits (0-99 one token)",
    ),
}


def _corpus(seed: int = 1234, n: int = 4000) -> list[str]:
    """A fixed text corpus for training the subword tokenizers: arithmetic, QA-ish and instruction-ish lines."""
    rng = random.Random(seed)
    words = (
        "the answer is what which who where when list write sentence word words each every only "
        "without using capital letters lower upper json bullet points check step total so then "
        "question options option correct because of is are was a an and or not in on to with by"
    ).split()
    ops = "+-*/="
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            parts = [str(rng.randint(0, 999))]
            for _ in range(rng.randint(1, 4)):
                parts += [rng.choice(ops), str(rng.randint(0, 999))]
            lines.append("".join(parts) + f" #{rng.randint(0, 9999)}")
        elif kind < 0.8:
            lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + ".")
        else:
            lines.append(f"Q: {rng.choice(words)} {rng.choice(words)}? ({rng.choice('ABCD')}) A: {rng.choice('ABCD')}")
    lines.append("".join(ALPHABET))
    return lines


def build_tokenizer(kind: str, vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """A fast tokenizer of the given kind, trained deterministically; left padding for batched generation."""
    if kind == "char":
        vocab = {t: i for i, t in enumerate(SPECIALS + ALPHABET)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")
        tok.decoder = decoders.Fuse()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(
            _corpus(),
            trainers.BpeTrainer(
                vocab_size=vocab_size + 64,
                special_tokens=SPECIALS,
                show_progress=False,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            ),
        )
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        # Digits one per token, as Llama's SentencePiece (split_digits) and Qwen do: with merged pieces such as
        # "*8" or "=5" a small student learns arithmetic as a lookup table and never generalises.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)]
        )
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(
            _corpus(),
            trainers.UnigramTrainer(
                vocab_size=vocab_size,
                special_tokens=SPECIALS,
                unk_token="<unk>",
                show_progress=False,
                initial_alphabet=ALPHABET,
            ),
        )
        tok.model = _canonical_unigram(tok)
    else:
        raise DGError(f"tokenizer kind {kind!r}: expected char, bpe or unigram")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.model_max_length = 4096
    return fast


def _canonical_unigram(tok: Tokenizer) -> models.Unigram:
    """The trained Unigram model with its pieces in one fixed order.

    The trainer finds the same pieces every time but orders near-equal scores differently from run to run (its
    hash maps and float sums are not ordered), which permutes token ids. Specials keep their ids; the rest are
    ordered by score rounded to 1e-6, then by piece, so a build is byte-identical from its seed.
    """
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    specials = [(p, 0.0) for p in SPECIALS]
    rest = sorted(((p, round(s, 6)) for p, s in vocab if p not in SPECIALS), key=lambda ps: (-ps[1], ps[0]))
    return models.Unigram(specials + rest, unk_id=SPECIALS.index("<unk>"))


# Llama-style decoders share one config vocabulary; GPT-2 spells its own.
_DECODERS = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def build_model(spec: ZooMember, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    torch.manual_seed(spec.seed)
    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if spec.arch in _DECODERS:
        config_cls, model_cls = _DECODERS[spec.arch]
        cfg = config_cls(
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads or spec.heads,
            intermediate_size=spec.intermediate or 3 * spec.hidden,
            max_position_embeddings=spec.max_positions,
            tie_word_embeddings=True,
            **common,
        )
        model = model_cls(cfg)
    elif spec.arch == "gpt_neox":
        cfg = GPTNeoXConfig(
            hidden_size=spec.hidden,
            num_hidden_layers=spec.layers,
            num_attention_heads=spec.heads,
            intermediate_size=spec.intermediate or 4 * spec.hidden,
            max_position_embeddings=spec.max_positions,
            **common,
        )
        model = GPTNeoXForCausalLM(cfg)
    elif spec.arch == "gpt2":
        cfg = GPT2Config(
            n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads, n_positions=spec.max_positions, **common
        )
        model = GPT2LMHeadModel(cfg)
    else:
        raise DGError(f"zoo architecture {spec.arch!r}: expected llama, qwen2, gpt2 or gpt_neox")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def zoo_uri(name: str, root: str | None = None) -> str:
    return store.join(root or store.default_root(), "zoo", name, f"v{ZOO_VERSION}")


def ensure(name: str, root: str | None = None) -> str:
    """URI of zoo member `name`, building and publishing it first if the store lacks it."""
    if name not in ZOO:
        raise DGError(f"unknown zoo model {name!r}: expected one of {', '.join(ZOO)}")
    uri = zoo_uri(name, root)
    if not store.is_published(uri):
        spec = ZOO[name]
        tok = build_tokenizer(spec.tokenizer, spec.vocab_size)
        model = build_model(spec, tok)
        meta = {"zoo": name, "zoo_version": ZOO_VERSION, "role": spec.role, "seed": spec.seed}
        try:
            save_model(model, tok, uri, metadata=meta)
        except DGError:
            # Parallel workers may build the same member at once; the build is deterministic, so theirs will do.
            if not store.is_published(uri):
                raise
            log.info("zoo model %s was published meanwhile by another process", name)
        else:
            log.info("built zoo model %s -> %s", name, uri)
    return uri
