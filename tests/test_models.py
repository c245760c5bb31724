"""Zoo, load/save by reference, and LoRA: offline, deterministic, safetensors-only."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dg_core import store
from dg_core.errors import DGError
from dg_core.models import (
    adapter_disabled,
    attach_lora,
    load_model,
    load_tokenizer,
    merge_lora,
    save_model,
)
from dg_core.models.zoo import ZOO, build_model, build_tokenizer, ensure, zoo_uri

REPO = Path(__file__).resolve().parents[1]
TEXT = "Q: 37*4+12=? A: 37*4=148 148+12=160 #160"


@pytest.fixture()
def root(tmp_path, monkeypatch):
    uri = f"file://{tmp_path}/store"
    monkeypatch.setenv("DG_STORE_ROOT", uri)
    return uri


def _logits(model, tok, text=TEXT):
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_zoo_builds_offline_and_reloads_identically(root):
    for name in ZOO:
        uri = ensure(name)
        assert uri == zoo_uri(name) and store.is_published(uri)
        model, tok = load_model(f"zoo:{name}", device="cpu")
        fresh = build_model(ZOO[name], build_tokenizer(ZOO[name].tokenizer, ZOO[name].vocab_size))
        assert torch.equal(_logits(model, tok), _logits(fresh, tok)), name
        assert tok.decode(tok(TEXT)["input_ids"]) == TEXT


def test_zoo_is_cached_not_rebuilt(root):
    uri = ensure("proxy")
    first = store.read_manifest(uri)
    assert store.read_manifest(ensure("proxy")) == first


def test_zoo_tokenizers_differ(root):
    pieces = {}
    for name in ("teacher", "proxy", "student-gpt2"):
        tok = load_tokenizer(f"zoo:{name}")
        pieces[name] = tuple(tok.convert_ids_to_tokens(tok(TEXT)["input_ids"]))
    assert len(set(pieces.values())) == 3
    assert len(pieces["teacher"]) == len(TEXT)  # char-level
    assert len(pieces["student-gpt2"]) < len(TEXT)  # subword


def test_held_out_attacker_merges_digits_where_the_others_split_them(root):
    """student-neox reads `56` as one token (as GPT-2's BPE does); every other member reads digits one by one."""
    answer = "7*8=56 56+34=90 #90"
    for name in ZOO:
        tok = load_tokenizer(f"zoo:{name}")
        pieces = tok.convert_ids_to_tokens(tok(answer)["input_ids"])
        merged = [p for p in pieces if sum(c.isdigit() for c in p) > 1]
        assert bool(merged) == (name == "student-neox"), (name, pieces)
        assert tok.decode(tok(answer)["input_ids"]) == answer


def test_save_and_load_round_trip_with_metadata(root, tmp_path):
    model, tok = load_model("zoo:student-llama", device="cpu")
    uri = store.join(root, "models", "copy")
    save_model(model, tok, uri, metadata={"source": "test"})
    again, tok2 = load_model(uri, device="cpu")
    assert torch.equal(_logits(model, tok), _logits(again, tok2))
    assert json.loads((store.fetch(uri) / "dg_model.json").read_text())["source"] == "test"


def test_bad_references_fail_clearly(tmp_path, root, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DGError, match="zoo model 'nope'"):
        load_model("zoo:nope")
    with pytest.raises(DGError, match="HF_HUB_OFFLINE"):
        load_model("someorg/somemodel")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DGError, match="config.json"):
        load_model(str(empty))
    model, tok = load_model("zoo:proxy", device="cpu")
    pickled = tmp_path / "pickled"
    model.save_pretrained(pickled, safe_serialization=False)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(DGError, match="safetensors"):
        load_model(str(pickled))


def test_lora_reference_and_merge(root):
    model, tok = load_model("zoo:teacher", device="cpu")
    base = _logits(model, tok)
    peft_model = attach_lora(model, r=4, alpha=8)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    tuned = _logits(peft_model, tok)
    assert not torch.allclose(tuned, base)
    with adapter_disabled(peft_model):
        assert torch.allclose(_logits(peft_model, tok), base, atol=1e-6)
    merged = merge_lora(peft_model)
    assert torch.allclose(_logits(merged, tok), tuned, atol=1e-5)
    with pytest.raises(DGError, match="PEFT"):
        save_model(attach_lora(merged, r=2), tok, store.join(root, "x"))


_BUILD = """
import json, os, sys
from dg_core import store
from dg_core.models import load_tokenizer
from dg_core.models.zoo import ensure
names = sys.argv[1].split(",")
out = {}
for name in names:
    m = store.read_manifest(ensure(name))
    out[name] = {f: e["sha256"] for f, e in m["files"].items()}
    tok = load_tokenizer(f"zoo:{name}")
    out[name]["ids"] = tok("Q: 37*4+12=? A: 37*4=148 148+12=160 #160 the answer")["input_ids"]
print(json.dumps(out))
"""


def _build(store_uri: str, names: str) -> subprocess.Popen:
    env = {**os.environ, "DG_STORE_ROOT": store_uri, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "true"}
    return subprocess.Popen(
        [sys.executable, "-c", _BUILD, names], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_zoo_builds_are_byte_identical_across_processes(tmp_path):
    """Every file of every member hashes the same from two fresh processes, built side by side (the Unigram
    trainer alone used to permute its ids from run to run, so student-gpt2's results moved between machines)."""
    names = ",".join(ZOO)
    runs = [_result(p) for p in [_build((tmp_path / f"s{i}").as_uri(), names) for i in range(2)]]
    assert runs[0] == runs[1]
    assert set(runs[0]) == set(ZOO) and all("model.safetensors" in v for v in runs[0].values())


def test_concurrent_builds_of_one_member_are_safe(tmp_path):
    """Two processes building the same member into one store at once both get a sound, identical model."""
    uri = (tmp_path / "shared").as_uri()
    procs = [_build(uri, "student-gpt2") for _ in range(2)]
    a, b = (_result(p) for p in procs)
    assert a == b
    # a later reader (its load checks every file's sha256 against the manifest) sees the same member
    assert _result(_build(uri, "student-gpt2")) == a
