"""Manifests: what an artifact holds (sha256 + size of every file, created time, metadata), its checks, and
the one content identity of an artifact (:func:`files_sha`)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dg_core.errors import DGError
from dg_core.store.base import FORMAT, MANIFEST, VERSIONS, ArtifactCorrupt, parallel, scan_dir, sha256_file
from dg_core.store.uri import clean_key

VID_RE = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")  # a version id: <artifact>/.v/<version id>/


def build_manifest(local_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a local directory: sha256 and size of every payload file (hashed in parallel)."""
    d = Path(local_dir)
    files = scan_dir(d)
    digests = parallel(sha256_file, files.values(), min(4, os.cpu_count() or 1))
    return make_manifest({rel: dg for rel, dg in zip(files, digests)}, metadata)


def make_manifest(
    digests: Mapping[str, tuple[str, int]], metadata: Mapping[str, Any] | None, version: str | None = None
) -> dict[str, Any]:
    try:
        meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise DGError(f"artifact metadata is not JSON-serialisable: {e}") from None
    files = {rel: {"sha256": sha, "size": size} for rel, (sha, size) in sorted(digests.items())}
    m = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": files,
        "total_size": sum(f["size"] for f in files.values()),
        "metadata": meta,
    }
    if version is not None:
        m["version"] = version  # the payload is under <artifact>/.v/<version>/
    return m


def files_sha(files: Mapping[str, Any]) -> str:
    """THE content identity of an artifact: the sha256 of its manifest's file list (path -> sha256, size).

    The gate pins it, publish records it, components pin references with it and the distill stage keys its
    signals by it, so "the same model" means the same thing everywhere; it does not depend on where the
    files live, when they were published or the manifest's metadata.
    """
    return hashlib.sha256(json.dumps(dict(files), sort_keys=True).encode()).hexdigest()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "uri"}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def parse_manifest(data: bytes, uri: str) -> dict[str, Any]:
    try:
        m = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactCorrupt(
            f"artifact {uri}: {MANIFEST} is not valid JSON ({e}): torn or overwritten, republish the artifact"
        ) from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} is not a {FORMAT} manifest")
    for rel, f in m["files"].items():
        ok = isinstance(f, dict) and isinstance(f.get("size"), int) and f["size"] >= 0
        ok = ok and isinstance(f.get("sha256"), str) and bool(_SHA_RE.match(f["sha256"]))
        if not ok or clean_key(rel, uri) != rel or rel == MANIFEST:
            raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} has an invalid entry for {rel!r}")
    vid = m.get("version")
    if vid is not None and not (isinstance(vid, str) and VID_RE.match(vid)):
        raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} names an invalid version {vid!r}")
    m["uri"] = uri
    return m


def check_sizes(manifest: Mapping[str, Any], actual: Mapping[str, int], uri: str) -> None:
    for rel, f in manifest["files"].items():
        if rel not in actual:
            raise ArtifactCorrupt(f"artifact {uri} is incomplete: {rel!r} is listed in {MANIFEST} but missing")
        if actual[rel] != f["size"]:
            raise ArtifactCorrupt(
                f"artifact {uri} is corrupted: {rel!r} is {actual[rel]} bytes, {MANIFEST} says {f['size']}"
            )


def verify_dir(local_dir: str | os.PathLike, manifest: Mapping[str, Any], uri: str | None = None) -> None:
    """Check every file of ``manifest`` in a local directory by size and sha256; raise ArtifactCorrupt."""
    d = Path(local_dir)
    where = uri or str(d)
    actual = {rel: (d / rel).stat().st_size for rel in manifest["files"] if (d / rel).is_file()}
    check_sizes(manifest, actual, where)
    rels = list(manifest["files"])
    digests = parallel(lambda r: sha256_file(d / r)[0], rels, min(4, os.cpu_count() or 1))
    for rel, sha in zip(rels, digests):
        want = manifest["files"][rel]["sha256"]
        if sha != want:
            raise ArtifactCorrupt(
                f"artifact {where} is corrupted: {rel!r} has sha256 {sha[:16]}..., {MANIFEST} says {want[:16]}..."
            )


# ---------------------------------------------------------------------------------------------- artifacts
#
# The publish protocol, written against the Store primitives above (any transport that provides them works):
#
#   <artifact>/.v/<version>/...           the payload of one publish, never modified once written
#   <artifact>/.v/<version>/MANIFEST.json  its manifest (so a version directory is self-describing)
#   <artifact>/MANIFEST.json               the pointer: the manifest of the current version, switched last
#
# A publish writes a fresh version, then switches the pointer with a conditional write (S3 If-Match /
# If-None-Match; a flock-guarded compare-and-rename on file://): if another publish switched it since this
# one started, this one loses, removes its version and raises PublishConflict. Readers read the pointer,
# then only that version's listed files; if those vanish or change under them they re-read the pointer
# and, when it moved, read the new version. Old versions are deleted after a switch; versions left by dead
# writers are swept by the next publish (file://: their flock is free; s3: their lease went stale).
# Manifests without "version" (artifacts published before this layout) are read in place, flat.


def refuse_unlisted(d: Path, manifest: Mapping[str, Any], uri: str, *, flat: bool) -> None:
    """A directory a reader uses in place must hold nothing its manifest does not list.

    An extra file (a ``chat_template.jinja`` dropped into a model folder) would be picked up by loaders
    that look for it by name although the manifest never vouched for it. A flat (pre-version) artifact's
    folder may also hold the store's version area and nested artifacts; those are not its files.
    """
    listed = set(manifest["files"]) | {MANIFEST}
    for dirpath, dirnames, filenames in os.walk(d):
        here = Path(dirpath)
        rel_dir = here.relative_to(d).as_posix()
        if flat:
            dirnames[:] = [
                n for n in dirnames if not (rel_dir == "." and n == VERSIONS) and not (here / n / MANIFEST).is_file()
            ]
        for name in sorted(filenames + [n for n in dirnames if (here / n).is_symlink()]):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel not in listed or (here / name).is_symlink():
                raise ArtifactCorrupt(
                    f"artifact {uri} holds {rel!r}, which its {MANIFEST} does not list: refusing to use it "
                    "(remove the file, or republish the artifact with it)"
                )
