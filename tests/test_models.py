"""Zoo, load/save by reference, and LoRA: offline, deterministic, safetensors-only."""

import json

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
        fresh = build_model(ZOO[name], build_tokenizer(ZOO[name].tokenizer))
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
