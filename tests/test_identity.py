"""One content identity: the gate's pin, the published manifest's sha, a component's pin, the calibration
card's digest and the distill signals' teacher key are one value for the same folder, wherever it lives."""

from __future__ import annotations

import shutil

import pytest

from components import _common
from dg_core import gate, store
from dg_core.calibrate.card import artifact_digest
from dg_core.config import from_dict
from dg_core.distill.signals import SignalsConfig, signals_key
from dg_core.models.resolve import identity


def _records() -> list[dict]:
    out = [{"model": "teacher", "teacher": w, "accuracy": a} for w, a in (("original", 1.0), ("calibrated", 0.98))]
    for w, a in (("original", 0.9), ("calibrated", 0.3)):
        out.append({"model": "student", "teacher": w, "student": "s", "method": "sft", "seed": 0, "accuracy": a})
    return out


@pytest.mark.parametrize("where", ["file-store", "local-path"])
def test_gate_pin_manifest_and_fingerprint_agree(tmp_path, monkeypatch, where):
    monkeypatch.setenv("DG_STORE_ROOT", (tmp_path / "store").as_uri())
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.safetensors").write_bytes(b"weights-v1" * 100)
    target = tmp_path / "store" / "models" / "m"
    uri = target.as_uri() if where == "file-store" else str(target)
    manifest = store.publish(src, uri)
    want = store.files_sha(manifest["files"])

    decision = gate.run(from_dict(gate.Config, {"evaluations": _records(), "model": uri}))
    assert decision["model"]["sha256"] == want
    assert _common.pin(uri).split(_common.PIN, 1)[1] == want
    assert identity(uri) == want  # what the distill signals are keyed by
    assert artifact_digest(uri) == want
    copy = tmp_path / "copy"  # the same files, unpublished, elsewhere: the same digest
    shutil.copytree(src, copy)
    assert artifact_digest(str(copy)) == want

    # The signals key follows the content: a re-publish with other weights is another teacher.
    (tmp_path / "dataset").mkdir()
    spec = SignalsConfig(teacher=uri, dataset=str(tmp_path / "dataset"), max_new_tokens=64)
    key = signals_key(spec)
    (src / "model.safetensors").write_bytes(b"weights-v2" * 100)
    store.publish(src, uri)
    assert identity(uri) != want and signals_key(spec) != key
