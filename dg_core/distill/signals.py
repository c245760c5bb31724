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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dg_core import store
from dg_core.data import Example, load_split, task_of
from dg_core.errors import DGError
from dg_core.generate import generate_tokens, pack
from dg_core.models.resolve import identity

log = logging.getLogger(__name__)
FORMAT = "dguard-signals/1"


@dataclass(frozen=True)
class SignalSpec:
    """What to sample from the teacher; every field enters the content address of the signals."""

    teacher: str
    dataset: str
    split: str = "train"
    n_samples: int = 2
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    topk: int = 0  # 0: no log-probs stored (text-only signals)
    limit: int = 0  # 0: every prompt of the split
    seed: int = 0
    batch_size: int = 64
    shard_rows: int = 2048

    def check(self) -> None:
        if self.n_samples < 1:
            raise DGError(f"signals n_samples={self.n_samples}: expected >= 1")
        if self.topk < 0:
            raise DGError(f"signals topk={self.topk}: expected >= 0 (0 stores no log-probs)")
        if self.shard_rows < 1:
            raise DGError(f"signals shard_rows={self.shard_rows}: expected >= 1")


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


def signals_key(spec: SignalSpec) -> str:
    body = asdict(spec)  # batch_size included: sampling seeds are per generation batch
    body["teacher"] = identity(spec.teacher)  # the content sha: agrees with the gate's pin
    body["dataset"] = _dataset_fingerprint(spec.dataset)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]


def _dataset_fingerprint(uri: str) -> str:
    try:
        if store.is_store_uri(uri) and store.is_published(uri):
            return store.content_sha(uri)
    except DGError:
        pass
    from dg_core.data.artifact import local_dir

    d = local_dir(uri)
    h = hashlib.sha256()
    for f in sorted(d.glob("*.json*")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def default_signals_uri(spec: SignalSpec, root: str | None = None) -> str:
    return store.join(root or store.default_root(), "signals", signals_key(spec))


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
    from dg_core.models.logprobs import token_logprobs

    tb = pack(batch_prompts, batch_resp, pad)
    # chunked over positions: top-k per chunk of rows, never a [B, T, V] log-softmax
    scored = token_logprobs(model, tb.input_ids, tb.attention_mask, topk=topk)
    out = []
    for r, (p, resp) in enumerate(zip(batch_prompts, batch_resp)):
        pos = slice(len(p) - 1, len(p) - 1 + len(resp))
        chosen = scored.logprobs[r, pos]
        out.append((chosen.cpu(), scored.topk_ids[r, pos].to(torch.int32).cpu(), scored.topk_logprobs[r, pos].cpu()))
    return out


def build_signals(
    spec: SignalSpec,
    *,
    uri: str | None = None,
    teacher: tuple[Any, Any] | None = None,
    force: bool = False,
) -> str:
    """Sample the teacher on the split and publish the signals (skipped when already published); the URI."""
    spec.check()
    uri = uri or default_signals_uri(spec)
    if not force and store.is_published(uri):
        log.info("teacher signals already at %s: reusing", uri)
        return uri
    from dg_core.models import load_model

    model, tok = teacher if teacher is not None else load_model(spec.teacher)
    task = task_of(spec.dataset)
    examples = load_split(spec.dataset, spec.split)
    if spec.limit:
        examples = examples[: spec.limit]
    if not examples:
        raise DGError(f"{spec.dataset}: split {spec.split!r} is empty, expected prompts to sample the teacher on")
    prompts = [task.prompt(ex, tok) for ex in examples]
    rolls = generate_tokens(
        model,
        tok,
        prompts,
        n=spec.n_samples,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with tempfile.TemporaryDirectory(prefix="dg-signals-") as tmp:
        n_rows = len(rolls.texts)
        shards = []
        for s, a in enumerate(range(0, n_rows, spec.shard_rows)):
            idx = list(range(a, min(n_rows, a + spec.shard_rows)))
            lps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
            if spec.topk > 0:
                for b in range(0, len(idx), spec.batch_size):
                    sub = idx[b : b + spec.batch_size]
                    lps += _teacher_logprobs(
                        model, [rolls.prompt_ids[i] for i in sub], [rolls.response_ids[i] for i in sub], pad, spec.topk
                    )
            name = f"shard-{s:05d}"
            ptr = [0]
            with open(Path(tmp) / f"{name}.jsonl", "w", encoding="utf-8") as f:
                for i in idx:
                    resp = rolls.response_ids[i]
                    text = rolls.texts[i]
                    body = resp[:-1] if rolls.finished[i] else resp
                    offsets = _char_offsets(tok, body, text)
                    if rolls.finished[i]:
                        offsets.append((len(text), len(text)))  # EOS: zero width at the end
                    row = {
                        "example_id": examples[rolls.prompt_index[i]].id,
                        "prompt": prompts[rolls.prompt_index[i]],
                        "response": text,
                        "finished": rolls.finished[i],
                        "token_ids": resp,
                        "offsets": offsets,
                    }
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    ptr.append(ptr[-1] + len(resp))
            if spec.topk > 0:
                save_file(
                    {
                        "row_ptr": torch.tensor(ptr, dtype=torch.int64),
                        "token_logprobs": torch.cat([x[0] for x in lps]).contiguous(),
                        "topk_ids": torch.cat([x[1] for x in lps]).contiguous(),
                        "topk_logprobs": torch.cat([x[2] for x in lps]).contiguous(),
                    },
                    str(Path(tmp) / f"{name}.safetensors"),
                )
            shards.append(name)
        meta = {
            "format": FORMAT,
            "spec": asdict(spec),
            "task": task.spec(),
            "shards": shards,
            "rows": n_rows,
            "vocab_size": len(tok),
            "finished_rate": sum(rolls.finished) / max(1, n_rows),
        }
        (Path(tmp) / "signals.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        store.publish(tmp, uri, metadata={"kind": "signals", "rows": n_rows, "teacher": spec.teacher})
    log.info("teacher signals: %d samples -> %s", n_rows, uri)
    return uri


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
