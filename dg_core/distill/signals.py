"""Teacher signals, generated once and reused by every student: samples and per-position top-k log-probs.

A teacher is the expensive model, so its outputs on a split are computed a single time and published as
shards under a content-addressed URI (teacher weights' manifest, dataset, split and sampling settings), and
every probe student, method and seed reads them back. What a shard holds per sampled response:

- the text (what a black-box API returns; ``sft`` and ``xtok`` train on it),
- the teacher's own token ids, their character offsets in the text and the log-probability of each sampled
  token (``xtok`` aligns these with a student's tokens by character offsets),
- the top-k token ids and log-probabilities at every response position, EOS included (what an API that exposes
  ``top_logprobs`` leaks; ``kd`` distils from them, ``xtok``'s ULD loss uses their sorted values).

Layout: ``signals.json`` (spec, counts), and per shard ``shard-NNNNN.jsonl`` (one row per sample) plus
``shard-NNNNN.safetensors`` (flat token arrays with a row pointer), safetensors so nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dg_core import store
from dg_core.base.generate import generate_tokens, pack
from dg_core.base.logprobs import token_logprobs
from dg_core.config import StageConfig, option
from dg_core.data import Example, load_split, task_of, with_task_budget
from dg_core.data.artifact import local_dir
from dg_core.errors import DGError
from dg_core.models import load_model
from dg_core.models.resolve import identity

log = logging.getLogger(__name__)
FORMAT = "dguard-signals/1"


TOP_P = 1.0  # nucleus sampling is not an attack option; recorded in the content address all the same
SHARD_ROWS = 2048  # samples per published shard


@dataclass
class SignalsConfig(StageConfig):
    """What to sample from the teacher; every field (and the method's ``topk``) enters the signals' address."""

    teacher: str = option("", "Teacher model reference (store URI, local dir, zoo:<name>).")
    dataset: str = option("", "Prepared dataset URI (from `dguard prep`).")
    split: str = option("train", "Split whose prompts the teacher answers.")
    n_samples: int = option(2, "Teacher samples per training prompt.", ge=1)
    max_new_tokens: int = option(
        0,
        "Token budget of teacher samples, and of gkd students by default (0: the task's own budget, e.g. 512 for "
        "math, 64 for the zoo's arithmetic).",
        ge=0,
    )
    sample_temperature: float = option(1.0, "Teacher (and gkd student) sampling temperature.", gt=0)
    signals_seed: int = option(0, "Seed of the teacher samples (shared by every student).")
    limit: int = option(0, "Use only the first N prompts of the split (0 = all).", ge=0)
    teacher_batch_size: int = option(
        64, "Teacher sequences per generation and top-k scoring batch when building the signals.", ge=1
    )
    ask: str = option(
        "",
        "Prompt attack: a request added to every question the teacher is sampled on (e.g. 'show steps', replacing a "
        "synthetic problem's own instruction); students still train on the plain question.",
        late=True,
    )

    def teacher_prompts(self, task: Any, examples: list[Example], tok: Any) -> list[str]:
        """What the teacher is conditioned on: each example's prompt, with the attack's request when one is set."""
        return [task.prompt(task.ask(ex, self.ask) if self.ask else ex, tok) for ex in examples]


def signal_spec(cfg: SignalsConfig, topk: int = 0) -> dict[str, Any]:
    """The recorded sampling settings (``topk`` 0: text only); batch_size is in it because seeds are per batch."""
    return {
        "teacher": cfg.teacher,
        "dataset": cfg.dataset,
        "split": cfg.split,
        "n_samples": cfg.n_samples,
        "max_new_tokens": with_task_budget(cfg).max_new_tokens,
        "temperature": cfg.sample_temperature,
        "top_p": TOP_P,
        "topk": topk,
        "limit": cfg.limit,
        "seed": cfg.signals_seed,
        "batch_size": cfg.teacher_batch_size,
        "shard_rows": SHARD_ROWS,
        **({"ask": cfg.ask} if cfg.ask else {}),  # absent when unset: plain signals keep their addresses
    }


@dataclass
class SignalRow:
    """One teacher sample (see module doc). ``topk_*`` are ``[n_tokens, k]`` or None for text-only signals."""

    example_id: str
    prompt: str
    response: str
    finished: bool
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    token_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None


@dataclass
class Signals:
    uri: str
    spec: dict[str, Any]
    rows: list[SignalRow]
    examples: dict[str, Example]
    vocab_size: int

    @property
    def has_topk(self) -> bool:
        return bool(self.rows) and self.rows[0].topk_ids is not None


def signals_key(cfg: SignalsConfig, topk: int = 0) -> str:
    body = signal_spec(cfg, topk)  # batch_size included: sampling seeds are per generation batch
    body["teacher"] = identity(cfg.teacher)  # the content sha: agrees with the gate's pin
    body["dataset"] = _dataset_fingerprint(cfg.dataset)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def _dataset_fingerprint(uri: str) -> str:
    try:
        if store.is_store_uri(uri) and store.is_published(uri):
            return store.content_sha(uri)
    except DGError:
        pass

    d = local_dir(uri)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.json*")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def default_signals_uri(cfg: SignalsConfig, topk: int = 0, root: str | None = None) -> str:
    return store.join(root or store.default_root(), "signals", signals_key(cfg, topk))


def _char_offsets(tokenizer: Any, ids: list[int], text: str) -> list[tuple[int, int]]:
    """Character span of each generated token in the decoded text.

    When re-encoding the text gives back the same ids (the usual case) the tokenizer's own offsets are used;
    otherwise (a non-canonical sample) spans come from incremental decoding, clipped to stay monotone, which
    is quadratic in the length and so only the fallback.
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(ids):
            return [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    except (NotImplementedError, ValueError, TypeError):
        pass
    out, prev = [], 0
    for i in range(len(ids)):
        end = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
        end = min(max(end, prev), len(text))
        out.append((prev, end))
        prev = end
    return out


@torch.no_grad()
def _teacher_logprobs(
    model: torch.nn.Module, batch_prompts: list[list[int]], batch_resp: list[list[int]], pad: int, topk: int
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(chosen logprob [n], top-k ids [n, k], top-k logprobs [n, k]) for each response, one forward pass."""

    tb = pack(batch_prompts, batch_resp, pad)
    # chunked over positions: top-k per chunk of rows, never a [B, T, V] log-softmax
    scored = token_logprobs(model, tb.input_ids, tb.attention_mask, topk=topk)
    out = []
    for r, (p, resp) in enumerate(zip(batch_prompts, batch_resp)):
        pos = slice(len(p) - 1, len(p) - 1 + len(resp))
        chosen = scored.logprobs[r, pos]
        out.append((chosen.cpu(), scored.topk_ids[r, pos].to(torch.int32).cpu(), scored.topk_logprobs[r, pos].cpu()))
    return out


def _sample(
    cfg: SignalsConfig, topk: int, model: Any, tok: Any, prompts: list[str], rank: int, world: int
) -> list[dict[str, Any]]:
    """This process's share of the samples (generation batches ``b % world == rank``), scored for top-k."""
    rolls = generate_tokens(
        model,
        tok,
        prompts,
        n=cfg.n_samples,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.sample_temperature,
        top_p=TOP_P,
        batch_size=cfg.teacher_batch_size,
        seed=cfg.signals_seed,
        shard=(rank, world),
    )
    index = rolls.index if rolls.index is not None else list(range(len(rolls.texts)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    lps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(index)
    if topk > 0:
        bs = cfg.teacher_batch_size
        for b in range(0, len(index), bs):
            sub = range(b, min(len(index), b + bs))
            scored = _teacher_logprobs(
                model, [rolls.prompt_ids[i] for i in sub], [rolls.response_ids[i] for i in sub], pad, topk
            )
            for i, x in zip(sub, scored):
                lps[i] = x
    out = []
    for i, j in enumerate(index):
        resp, text, done = rolls.response_ids[i], rolls.texts[i], rolls.finished[i]
        offsets = _char_offsets(tok, resp[:-1] if done else resp, text)
        if done:
            offsets.append((len(text), len(text)))  # EOS: zero width at the end
        out.append(
            {"j": j, "p": rolls.prompt_index[i], "ids": resp, "text": text, "done": done, "off": offsets, "lp": lps[i]}
        )
    return out


def build_signals(
    cfg: SignalsConfig,
    *,
    topk: int = 0,
    uri: str | None = None,
    teacher: tuple[Any, Any] | None = None,
    force: bool = False,
    accelerator: Any = None,
) -> str:
    """Sample the teacher on the split and publish the signals (skipped when already published); the URI.

    Under several processes (``accelerator`` with ``num_processes > 1``) every process samples and scores its
    share of the generation batches, rank 0 gathers and publishes, and the others wait for it: the signals are
    the single-process ones (same seeds per batch), produced ``num_processes`` times faster.
    """
    cfg = with_task_budget(cfg)
    if topk < 0:
        raise DGError(f"signals topk={topk}: expected >= 0 (0 stores no log-probs)")
    uri = uri or default_signals_uri(cfg, topk)
    if not force and store.is_published(uri):
        log.info("teacher signals already at %s: reusing", uri)
        return uri

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    model, tok = teacher if teacher is not None else load_model(cfg.teacher)
    task = task_of(cfg.dataset)
    examples = load_split(cfg.dataset, cfg.split)
    if cfg.limit:
        examples = examples[: cfg.limit]
    if not examples:
        raise DGError(f"{cfg.dataset}: split {cfg.split!r} is empty, expected prompts to sample the teacher on")
    prompts = cfg.teacher_prompts(task, examples, tok)
    samples = _sample(cfg, topk, model, tok, prompts, rank, world)
    if world > 1:
        from accelerate.utils import gather_object

        samples = sorted(gather_object(samples), key=lambda r: r["j"])
    if rank == 0:
        _publish(cfg, topk, uri, samples, examples, prompts, task, len(tok))
    if world > 1:
        accelerator.wait_for_everyone()
    log.info("teacher signals: %d samples -> %s", len(samples), uri)
    return uri


def _publish(
    cfg: SignalsConfig,
    topk: int,
    uri: str,
    samples: list[dict[str, Any]],
    examples: list[Example],
    prompts: list[str],
    task: Any,
    vocab_size: int,
) -> None:
    with tempfile.TemporaryDirectory(prefix="dg-signals-") as tmp:
        n_rows = len(samples)
        shards = []
        for s, a in enumerate(range(0, n_rows, SHARD_ROWS)):
            part = samples[a : a + SHARD_ROWS]
            name = f"shard-{s:05d}"
            ptr = [0]
            with open(Path(tmp) / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for r in part:
                    row = {
                        "example_id": examples[r["p"]].id,
                        "prompt": prompts[r["p"]],
                        "response": r["text"],
                        "finished": r["done"],
                        "token_ids": r["ids"],
                        "offsets": r["off"],
                    }
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    ptr.append(ptr[-1] + len(r["ids"]))
            if topk > 0:
                save_file(
                    {
                        "row_ptr": torch.tensor(ptr, dtype=torch.int64),
                        "token_logprobs": torch.cat([r["lp"][0] for r in part]).contiguous(),
                        "topk_ids": torch.cat([r["lp"][1] for r in part]).contiguous(),
                        "topk_logprobs": torch.cat([r["lp"][2] for r in part]).contiguous(),
                    },
                    str(Path(tmp) / f"{name}.safetensors"),
                )
            shards.append(name)
        meta = {
            "format": FORMAT,
            "spec": signal_spec(cfg, topk),
            "task": task.spec(),
            "shards": shards,
            "rows": n_rows,
            "vocab_size": vocab_size,
            "finished_rate": sum(r["done"] for r in samples) / max(1, n_rows),
        }
        (Path(tmp) / "signals.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        store.publish(tmp, uri, metadata={"kind": "signals", "rows": n_rows, "teacher": cfg.teacher})


def load_signals(uri: str) -> Signals:
    """Read published signals back (rows in generation order) with the dataset examples they refer to."""
    d = store.fetch(uri)
    meta_path = d / "signals.json"
    if not meta_path.is_file():
        raise DGError(f"{uri}: no signals.json, expected teacher signals written by dg_core.distill.signals")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise DGError(f"{uri}: signals format {meta.get('format')!r}, expected {FORMAT}")
    rows: list[SignalRow] = []
    for name in meta["shards"]:
        lines = (d / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        tens = load_file(str(d / f"{name}.safetensors")) if (d / f"{name}.safetensors").is_file() else None
        for j, line in enumerate(lines):
            r = json.loads(line)
            row = SignalRow(
                example_id=r["example_id"],
                prompt=r["prompt"],
                response=r["response"],
                finished=bool(r["finished"]),
                token_ids=list(r["token_ids"]),
                offsets=[tuple(o) for o in r["offsets"]],
            )
            if tens is not None:
                a, b = int(tens["row_ptr"][j]), int(tens["row_ptr"][j + 1])
                row.token_logprobs = tens["token_logprobs"][a:b]
                row.topk_ids = tens["topk_ids"][a:b].long()
                row.topk_logprobs = tens["topk_logprobs"][a:b]
            rows.append(row)
    spec = meta["spec"]
    examples = {ex.id: ex for ex in load_split(spec["dataset"], spec["split"])}
    return Signals(uri=uri, spec=spec, rows=rows, examples=examples, vocab_size=int(meta["vocab_size"]))
