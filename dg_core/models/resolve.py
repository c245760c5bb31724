"""Model references, resolved in one place: ``zoo:<name>``, store URIs (``s3://``, ``file://``), local paths and
hub ids. Every stage and component that turns a reference into a URI, a directory or an identity comes here, so
``zoo:`` means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dg_core import store
from dg_core.errors import DGError
from dg_core.models import zoo
from dg_core.store import is_store_uri

ZOO = "zoo:"


def is_zoo(ref: str) -> bool:
    """Whether ``ref`` names a member of the offline tiny-model zoo (a random-init toy)."""
    return str(ref).startswith(ZOO)


def to_uri(ref: str) -> str:
    """``zoo:<name>`` as its store URI (built and published on first use); any other reference unchanged."""
    if is_zoo(ref):
        return zoo.ensure(ref[len(ZOO) :])
    return ref


def resolve_model_dir(ref: str) -> Path:
    """A verified local directory holding the model named by `ref` (building zoo members on first use)."""
    if not ref:
        raise DGError("model reference is empty: expected a store URI, a local directory, zoo:<name> or a hub id")
    ref = to_uri(ref)
    if is_store_uri(ref):
        return store.fetch_folder(ref)  # a published artifact, or a plain HF folder synced into the bucket
    p = Path(ref).expanduser()
    if (p / store.MANIFEST).is_file():  # a published artifact named by its path: verified, current version
        return store.fetch(str(p))
    if p.is_dir():
        return p
    if p.exists() or ref.startswith((".", "/")) or os.sep in ref.strip("/").split("/", 1)[0]:
        raise DGError(f"model path {ref!r} is not a directory: expected a saved model directory")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise DGError(
            f"model {ref!r} not found: expected a store URI (s3://, file://), a local directory or zoo:<name>; "
            "hub downloads are disabled (HF_HUB_OFFLINE=1)"
        )
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))


def identity(ref: str) -> str:
    """What a reference's model *is*, for keys and pins: :func:`dg_core.store.content_sha` of the artifact or
    folder it names (the gate's pin and the published manifest's sha are the same value), or, for a hub id
    (which cannot be checked offline), the sha256 of the id itself."""
    uri = to_uri(ref)
    if is_store_uri(uri) or Path(uri).expanduser().is_dir():
        return store.content_sha(uri)
    return hashlib.sha256(uri.encode()).hexdigest()
