"""Plain folders: models synced into a bucket as they are (``aws s3 sync``, ``mc mirror``), without a
``MANIFEST.json``. They are found by their ``config.json``, named by their listing (:func:`listing_sha`: one
LIST tells a new release), snapshotted into the cache, or imported as a published artifact so everything
downstream reads manifest-pinned content."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dg_core.store.artifact import fetch, is_published, open_store, publish, read_manifest
from dg_core.store.base import (
    MANIFEST,
    VERSIONS,
    ArtifactBusy,
    ArtifactCorrupt,
    ArtifactNotFound,
    BucketNotFound,
    Store,
    copy_hashed,
    sha256_file,
)
from dg_core.store.cache import cache_dir, cached
from dg_core.store.local import LocalStore
from dg_core.store.manifest import files_sha, make_manifest, manifest_bytes, parse_manifest, verify_dir
from dg_core.store.s3 import S3Store
from dg_core.store.uri import default_root, join, key_join


def snapshot_dir(uri: str, dest: str | os.PathLike) -> dict[str, Any]:
    """Copy a folder that has no MANIFEST.json (a Hugging Face model synced into the bucket as is) into
    ``dest`` and return the manifest of what was copied: its content, pinned by sha256 on first sight.

    A folder whose files change between the listing before the copy and the one after is still being
    uploaded: :class:`ArtifactBusy`, so a recurring run leaves it for its next pass instead of pinning a
    half-written release. A published artifact is copied (verified) with its own manifest.
    """
    store, key = open_store(uri)
    uri = store.uri(key)
    out = Path(dest)
    if store.read_pointer(key_join(key, MANIFEST)) is not None:
        fetch(uri, dest=out)
        return read_manifest(uri)
    before = {k: v for k, v in store.stats(key).items() if VERSIONS not in k[len(key) :].split("/")}
    if not before:
        raise ArtifactNotFound(f"nothing at {uri}: expected a published artifact or a folder of model files")
    rels = {k: k[len(key) :].lstrip("/") for k in before}
    if isinstance(store, LocalStore):
        digests = {rels[k]: copy_hashed(store.path(k), out / rels[k]) for k in sorted(before)}
    else:
        assert isinstance(store, S3Store)
        store.download_many({k: (out / rels[k], before[k][0]) for k in before})
        digests = {rels[k]: sha256_file(out / rels[k]) for k in sorted(before)}
    after = {k: v for k, v in store.stats(key).items() if VERSIONS not in k[len(key) :].split("/")}
    if after != before or any(digests[rels[k]][1] != before[k][0] for k in before):
        raise ArtifactBusy(f"{uri} is still being uploaded (its files changed while being read): retry later")
    return make_manifest(digests, {"source": uri})


MODEL_MARKER = "config.json"  # what makes a plain folder a model folder (a Hugging Face checkpoint)


def _plain_listing(store: Store, key: str) -> dict[str, tuple[int, str]]:
    """rel -> (size, token) of the files of a plain folder, without any store-protocol files."""
    out = {}
    for k, v in store.stats(key).items():
        rel = k[len(key) :].lstrip("/")
        if rel == MANIFEST or VERSIONS in rel.split("/"):
            continue
        out[rel] = v
    return out


def listing_sha(uri: str) -> str:
    """Identity of a plain folder as it is now: the sha256 of its file names, sizes and change tokens (S3 ETags;
    mtime and inode on file://). It changes whenever a file is added, removed or rewritten, and costs one
    listing, so a recurring run can tell a new release without downloading it; content is pinned by sha256
    when the folder is read (:func:`snapshot_dir`)."""
    store, key = open_store(uri)
    listing = _plain_listing(store, key)
    if not listing:
        raise ArtifactNotFound(f"nothing at {store.uri(key)}: expected a published artifact or a folder of model files")
    return hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()


def is_plain_folder(uri: str) -> bool:
    """Whether ``uri`` is a model folder without a manifest (it holds ``config.json``, no ``MANIFEST.json``)."""
    store, key = open_store(uri)
    if store.read_pointer(key_join(key, MANIFEST)) is not None:
        return False
    try:
        return store.exists(key_join(key, MODEL_MARKER))
    except BucketNotFound:
        return False


def list_model_folders(prefix_uri: str) -> list[str]:
    """URIs of the plain model folders under a prefix (holding ``config.json`` and no manifest, and not inside
    a published artifact), sorted."""
    store, key = open_store(prefix_uri)
    try:
        keys = store.list(key)
    except BucketNotFound:
        return []
    published = {k[: -len(MANIFEST)].rstrip("/") for k in keys if k == MANIFEST or k.endswith("/" + MANIFEST)}
    out = []
    for k in keys:
        if k == MODEL_MARKER or k.endswith("/" + MODEL_MARKER):
            parent = k[: -len(MODEL_MARKER)].rstrip("/")
            segments = parent.split("/")
            if VERSIONS in segments or any(p.startswith(".") for p in segments):
                continue
            if any(parent == p or parent.startswith(p + "/") for p in published):
                continue  # inside a published artifact
            out.append(store.uri(parent))
    return sorted(out)


def fetch_folder(uri: str) -> Path:
    """A verified local directory for a published artifact (:func:`fetch`) or for a plain model folder: the
    latter is snapshotted once into the cache, keyed by its listing, and re-verified by sha256 on reuse."""
    if not is_plain_folder(uri):
        return fetch(uri)
    store, key = open_store(uri)
    if isinstance(store, LocalStore):
        return store.path(key)  # a local folder is read in place, as a local model directory is
    out = cache_dir() / "plain" / listing_sha(uri)[:40]

    def check(out: Path) -> None:
        verify_dir(out, parse_manifest((out / MANIFEST).read_bytes(), str(out)), str(out))

    def fill(tmp: Path) -> None:
        (tmp / MANIFEST).write_bytes(manifest_bytes(snapshot_dir(uri, tmp)))

    return cached(out, check, fill, uri)


def import_dir(src_uri: str, dst_uri: str, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Publish the folder (or artifact) ``src_uri`` as the artifact ``dst_uri``, pinned by content: the
    manifest's ``metadata.source_sha256`` is the sha256 of the source's file list at the time of the copy."""
    with tempfile.TemporaryDirectory(prefix="dg-import-") as tmp:
        snap = snapshot_dir(src_uri, tmp)
        (Path(tmp) / MANIFEST).unlink(missing_ok=True)
        files = {rel: {"sha256": f["sha256"], "size": f["size"]} for rel, f in snap["files"].items()}
        pin = files_sha(files)
        meta = {"kind": "import", "source": open_store(src_uri)[0].uri(open_store(src_uri)[1])}
        meta |= {"source_sha256": pin, **(metadata or {})}
        manifest = publish(tmp, dst_uri, metadata=meta)
    if {rel: f["sha256"] for rel, f in manifest["files"].items()} != {rel: f["sha256"] for rel, f in files.items()}:
        raise ArtifactCorrupt(f"import of {src_uri} into {dst_uri}: the published files differ from the copy")
    return manifest


def import_plain(uri: str, root: str | None = None) -> str:
    """A published artifact holding ``uri``'s content: ``uri`` itself when it is one; for a plain folder, its
    import under ``<root>/imports/<listing sha>`` (made on first sight, reused while the folder is unchanged),
    so everything downstream reads a manifest-pinned artifact."""
    if not is_plain_folder(uri):
        return uri
    dst = join(root or default_root(), "imports", listing_sha(uri)[:24])
    if not is_published(dst):
        import_dir(uri, dst)
    return dst
