"""Releases as users store them: a Hugging Face folder synced into the bucket as is (no MANIFEST.json) is found
by the recurring run, pinned by content, read by every model loader and importable with `dguard import`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from servers import use_s3

from dg_core import publish, store
from dg_core.errors import DGError
from dg_core.models.io import load_tokenizer
from dg_core.models.resolve import resolve_model_dir


@pytest.fixture(params=["file", "moto"])
def root(request, clean_env, tmp_path) -> str:
    clean_env.setenv("DG_RELEASE_SETTLE_S", "0")
    if request.param == "file":
        uri = (tmp_path / "store").as_uri()
    else:
        uri = use_s3(clean_env, request.getfixturevalue("moto"))
    clean_env.setenv("DG_STORE_ROOT", uri)
    return uri


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, bytes]:
    """The files of a real (zoo) Hugging Face model folder, without the store's manifest."""
    from dg_core.models import zoo

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    zroot = tmp_path_factory.mktemp("zoo")
    d = store.fetch(zoo.ensure("proxy", root=(zroot / "store").as_uri()))
    return {
        p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != "MANIFEST.json"
    }


def sync(files: dict[str, bytes], uri: str, tmp_path: Path) -> None:
    """What `aws s3 sync` / `mc mirror` does: every file put as is, no manifest."""
    st, key = store.open_store(uri)
    for rel, data in files.items():
        p = tmp_path / "upload" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        st.put_file(store.join(key, rel) if key else rel, p)


def test_plain_release_is_pending_until_hardened_and_again_when_changed(root, model_files, tmp_path):
    rel, hard = store.join(root, "releases"), store.join(root, "hardened")
    sync(model_files, store.join(rel, "team/llm-a"), tmp_path)
    pending = publish.pending_releases(rel, hard)
    assert [p["name"] for p in pending] == ["team/llm-a"]  # today: [] ("nothing new to harden" forever)
    sha = pending[0]["sha256"]
    assert sha.startswith(store.PLAIN) and sha == store.content_sha(store.join(rel, "team/llm-a"))

    # a twin that records this identity makes it up to date
    twin_src = tmp_path / "twin"
    twin_src.mkdir()
    (twin_src / "w.bin").write_bytes(b"hardened")
    store.publish(twin_src, pending[0]["hardened"], metadata={"release_sha256": sha})
    assert publish.pending_releases(rel, hard) == []

    # new weights under the same name: pending again
    sync({"model.safetensors": b"new weights"}, store.join(rel, "team/llm-a"), tmp_path / "v2")
    changed = publish.pending_releases(rel, hard)
    assert [p["name"] for p in changed] == ["team/llm-a"] and changed[0]["sha256"] != sha


def test_a_release_still_uploading_is_left_for_the_next_run(root, model_files, tmp_path, clean_env):
    rel, hard = store.join(root, "releases"), store.join(root, "hardened")
    target = store.join(rel, "llm-b")
    sync({"config.json": model_files["config.json"]}, target, tmp_path)  # the upload has begun
    clean_env.setenv("DG_RELEASE_SETTLE_S", "1.5")
    late = threading.Timer(0.5, lambda: sync({"model.safetensors": model_files["model.safetensors"]}, target,
                                             tmp_path / "late"))  # fmt: skip
    late.start()
    try:
        assert publish.pending_releases(rel, hard) == []
    finally:
        late.join()
    clean_env.setenv("DG_RELEASE_SETTLE_S", "0")
    assert [p["name"] for p in publish.pending_releases(rel, hard)] == ["llm-b"]


def test_plain_folder_is_read_by_loaders_and_pinned_by_import(root, model_files, tmp_path):
    from components._common import PIN, pin, unpin

    uri = store.join(root, "uploads/llm-c")
    sync(model_files, uri, tmp_path)
    d = resolve_model_dir(uri)  # today: "MANIFEST.json is missing"
    assert json.loads((d / "config.json").read_text()) == json.loads(model_files["config.json"])
    assert load_tokenizer(uri).encode("a*b") == load_tokenizer(str(d)).encode("a*b")

    pinned = pin(uri)
    imported, sha = pinned.split(PIN, 1)
    assert imported != uri and store.is_published(imported) and sha == store.content_sha(imported)
    files = store.read_manifest(imported)["files"]
    assert set(files) == set(model_files)
    assert pin(uri) == pinned  # unchanged folder: the same import is reused
    assert unpin(pinned) == imported


def test_dguard_import_cli(root, model_files, tmp_path):
    src = tmp_path / "hf-download"
    for rel, data in model_files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    dst = store.join(root, "models/imported")
    env = {**os.environ}
    p = subprocess.run([sys.executable, "-m", "dg_core.cli", "import", str(src), dst], capture_output=True, text=True,
                       env=env, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["uri"] == dst and out["files"] == len(model_files)
    m = store.read_manifest(dst)
    assert m["metadata"]["source_sha256"] == out["source_sha256"]
    assert {rel: f["size"] for rel, f in m["files"].items()} == {rel: len(b) for rel, b in model_files.items()}

    bad = subprocess.run([sys.executable, "-m", "dg_core.cli", "import", str(tmp_path / "nothing"), dst + "-2"],
                         capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "nothing at" in bad.stderr
    assert not store.is_published(dst + "-2")


def test_an_impossible_settle_time_is_one_line(clean_env):
    clean_env.setenv("DG_RELEASE_SETTLE_S", "soon")
    with pytest.raises(DGError, match="DG_RELEASE_SETTLE_S='soon': expected seconds"):
        publish.settle_seconds()
