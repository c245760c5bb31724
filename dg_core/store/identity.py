"""The one content identity of what a URI holds, for everything that pins, records or keys by content."""

from __future__ import annotations

from dg_core.store.artifact import read_manifest
from dg_core.store.manifest import files_sha
from dg_core.store.plain import is_plain_folder, listing_sha

PLAIN = "listing:"  # prefix of a plain folder's identity (see listing_sha)


def content_sha(uri: str) -> str:
    """Identity of the content at ``uri``: :func:`~dg_core.store.manifest.files_sha` of a published artifact
    (any location: s3://, file:// or a local path holding a MANIFEST.json), or, for a plain Hugging Face folder
    without a manifest, ``listing:<sha256 of names, sizes and change tokens>`` (it changes when a file does;
    importing the folder pins its bytes)."""
    if is_plain_folder(uri):
        return PLAIN + listing_sha(uri)
    return files_sha(read_manifest(uri)["files"])
