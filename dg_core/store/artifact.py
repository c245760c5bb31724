"""The artifact protocol: publish a directory as an immutable version and switch the pointer to it; read,
verify and fetch the current version. Written against the :class:`~dg_core.store.base.Store` primitives, so
any transport that provides them works.

    <artifact>/.v/<version>/...            the payload of one publish, never modified once written
    <artifact>/.v/<version>/MANIFEST.json  its manifest (so a version directory is self-describing)
    <artifact>/MANIFEST.json               the pointer: the manifest of the current version, switched last

A publish writes a fresh version, then switches the pointer with a conditional write (S3 If-Match /
If-None-Match; a flock-guarded compare-and-rename on file://): if another publish switched it since this
one started, this one loses, removes its version and raises PublishConflict. Readers read the pointer,
then only that version's listed files; if those vanish or change under them they re-read the pointer
and, when it moved, read the new version. Old versions are deleted after a switch; versions left by dead
writers are swept by the next publish (file://: their flock is free; s3: their lease went stale).
Manifests without "version" (artifacts published before this layout) are read in place, flat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dg_core.errors import DGError
from dg_core.store import manifest as manifests
from dg_core.store.base import (
    MANIFEST,
    VERSIONS,
    ArtifactBusy,
    ArtifactCorrupt,
    ArtifactNotFound,
    BucketNotFound,
    PublishConflict,
    Store,
    copy_hashed,
    scan_dir,
)
from dg_core.store.cache import cache_dir, cached
from dg_core.store.local import LocalStore
from dg_core.store.manifest import (
    build_manifest,
    check_sizes,
    make_manifest,
    parse_manifest,
    refuse_unlisted,
    verify_dir,
)
from dg_core.store.s3 import S3Store
from dg_core.store.uri import key_join, parse_uri

log = logging.getLogger("dg_core.store")
_T = TypeVar("_T")


def open_store(uri: str) -> tuple[Store, str]:
    """The store holding ``uri`` and the key of ``uri`` inside it (a bucket + prefix, or ``/`` + path)."""
    scheme, bucket, path = parse_uri(uri)
    if scheme == "s3":
        return S3Store(bucket or ""), path
    return LocalStore("/"), path.lstrip("/")


def publish(local_dir: str | os.PathLike, uri: str, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Publish a local directory as the artifact ``uri``; readers see the old version until it is complete.

    Returns the manifest (with ``uri``). The new version replaces the old one as a whole (files it had that
    the new one lacks are gone). A concurrent publish to the same URI that switched first makes this one
    raise :class:`PublishConflict` (nothing of it stays visible).
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise DGError(f"cannot publish {str(src)!r}: not a directory")
    store, key = open_store(uri)
    uri = store.uri(key)
    t0 = time.monotonic()
    if isinstance(store, LocalStore):
        if _check_local_target(store, src, key):
            manifest = _publish_in_place(store, src, key, metadata)
        else:
            manifest = _publish_version(store, src, key, metadata)
    else:
        assert isinstance(store, S3Store)
        store.ensure_bucket()
        manifest = _publish_version(store, src, key, metadata)
    manifest["uri"] = uri
    dt = time.monotonic() - t0
    log.info(
        "published %s (%d files, %.1f MB) in %.1fs",
        uri,
        len(manifest["files"]),
        manifest["total_size"] / 1e6,
        dt,
    )
    return manifest


def _check_local_target(store: LocalStore, src: Path, key: str) -> bool:
    """Refuse impossible local targets; True when ``src`` is the target directory itself."""
    if not key:
        raise DGError("cannot publish to the filesystem root: expected file:///some/dir")
    dest = store.path(key)
    with store.os_errors("publish to", key):
        if dest.exists() and not dest.is_dir():
            raise DGError(f"cannot publish to {store.uri(key)}: a file is in the way")
        s, d = src.resolve(), dest.resolve()
        if s == d:
            return True
        if s.is_relative_to(d / VERSIONS):
            return False  # republishing a fetched version of this artifact: it is copied before anything moves
        if d.is_relative_to(s) or s.is_relative_to(d):
            raise DGError(f"cannot publish {str(src)!r} to {store.uri(key)}: one directory contains the other")
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_temps(dest)
    return False


def _publish_in_place(store: LocalStore, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Publishing a directory where it lies: only the (flat) manifest is (re)written."""
    with store.os_errors("publish to", key):
        (src / MANIFEST).unlink(missing_ok=True)
        manifest = build_manifest(src, metadata)
        store.put_bytes(key_join(key, MANIFEST), manifests.manifest_bytes(manifest))
    return manifest


def _new_version() -> str:
    """Sortable by time for people reading a listing; unique by its random part."""
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


def _publish_version(store: Store, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    uri = store.uri(key)
    pkey = key_join(key, MANIFEST)
    files = scan_dir(src)
    prev = store.read_pointer(pkey)
    replaced: dict[str, Any] | None = None
    if prev is not None:
        with contextlib.suppress(ArtifactCorrupt):  # an unreadable pointer is replaced; its files are unknown
            replaced = parse_manifest(prev[0], uri)
    vid = _new_version()
    vkey = key_join(key, VERSIONS, vid)
    raw: bytes | None = None
    with store.version_lease(key, vid):
        try:
            manifest = make_manifest(store.put_tree(files, vkey), metadata, version=vid)
            raw = manifests.manifest_bytes(manifest)
            store.put_bytes(key_join(vkey, MANIFEST), raw)
            try:  # a writer paused past its lease may have been swept: never switch to a missing version
                check_sizes(manifest, {k[len(vkey) + 1 :]: n for k, n in store.sizes(vkey).items()}, uri)
            except ArtifactCorrupt:
                raise DGError(
                    f"publish to {uri}: its new version was removed before the switch (this writer paused "
                    "longer than DG_S3_LEASE_S?); nothing was switched: rerun the publish"
                ) from None
            if not store.swap_pointer(pkey, raw, prev[1] if prev else None):
                raise PublishConflict(
                    f"publish to {uri} lost to a concurrent publish of the same URI (another writer switched "
                    "it while this one was uploading); nothing of this publish is visible: rerun to replace it"
                )
        except BaseException:
            _discard(store, key, vid, raw)
            raise
        _collect(store, key, vid, replaced)
    return manifest


def _discard(store: Store, key: str, vid: str, raw: bytes | None) -> None:
    """Remove a failed publish's version, unless its pointer switch landed after all (a lost reply)."""
    try:
        if raw is not None:
            cur = store.read_pointer(key_join(key, MANIFEST))
            if cur is not None and cur[0] == raw:
                return
        store.discard_version(key, vid)
    except Exception as e:  # the publish's own error is the one to report; the next publish sweeps this
        log.warning("could not remove the unfinished version %s of %s: %s", vid, store.uri(key), e)


def _collect(store: Store, key: str, vid: str, replaced: Mapping[str, Any] | None) -> None:
    """After a switch: delete the version it replaced, and versions of writers that died."""
    try:
        if replaced is not None:
            old = replaced.get("version")
            if old and old != vid:
                store.delete_prefix(key_join(key, VERSIONS, old))
            elif not old:  # a flat artifact from before versioned publishes: its listed files go
                for rel in replaced["files"]:
                    if rel.split("/", 1)[0] != VERSIONS:
                        store.delete(key_join(key, rel))
        store.sweep_versions(key, vid, lambda: _current_versions(store, key))
    except DGError as e:
        log.warning(
            "published %s, but old versions were not all removed (%s); the next publish retries", store.uri(key), e
        )


def _current_versions(store: Store, key: str) -> set[str]:
    got = store.read_pointer(key_join(key, MANIFEST))
    if got is None:
        return set()
    vid = parse_manifest(got[0], store.uri(key)).get("version")
    return {vid} if vid else set()


@dataclasses.dataclass(frozen=True)
class Version:
    """What a reader resolved: the manifest, its bytes, and the key of the payload it describes."""

    manifest: dict[str, Any]
    raw: bytes
    key: str
    uri: str

    @property
    def flat(self) -> bool:
        return "version" not in self.manifest


def _resolve(store: Store, key: str) -> Version:
    uri = store.uri(key)
    got = store.read_pointer(key_join(key, MANIFEST))
    if got is None:
        if store.publishing(key):
            raise ArtifactBusy(
                f"artifact {uri} is being published by another process ({MANIFEST} is missing until it "
                "finishes, or its writer was interrupted): retry when it is done"
            )
        raise ArtifactNotFound(
            f"no published artifact at {uri}: {MANIFEST} is missing (never published, or the publish did not finish)"
        )
    m = parse_manifest(got[0], uri)
    vid = m.get("version")
    vkey = key_join(key, VERSIONS, vid) if vid else key
    if vid and (
        key.split("/")[-2:] == [VERSIONS, vid] or (isinstance(store, LocalStore) and not store.path(vkey).is_dir())
    ):
        vkey = key  # a version directory named by itself, or a copy of one (a fetched or downloaded folder)
    return Version(m, got[0], vkey, uri)


_READ_ATTEMPTS = 3


def resolve_settled(store: Store, key: str) -> Version:
    """:func:`_resolve`, reading an unparseable pointer again after a moment before calling it corrupt:
    servers that overwrite objects in place (s3rver) serve a half-written pointer during a switch."""
    for delay in (0.05, 0.2, 0.5):
        try:
            return _resolve(store, key)
        except ArtifactCorrupt:
            time.sleep(delay)
    return _resolve(store, key)


def read_stable(store: Store, key: str, fn: Callable[[Version], _T]) -> _T:
    """Run ``fn`` on the current version; when its files vanish or change because the artifact was
    republished meanwhile, run it again on the new version (a few times), then give up with ArtifactBusy."""
    for _ in range(_READ_ATTEMPTS):
        v = resolve_settled(store, key)
        try:
            return fn(v)
        except (ArtifactCorrupt, ArtifactNotFound):
            now = store.read_pointer(key_join(key, MANIFEST))
            if now is not None and now[0] == v.raw:
                raise  # the pointer did not move: the files really are wrong
            log.info("%s was republished while being read; reading the new version", v.uri)
    raise ArtifactBusy(
        f"artifact {store.uri(key)} is being republished (it changed {_READ_ATTEMPTS} times while being read): "
        "retry when its publishes are done"
    )


def payload_sizes(store: Store, v: Version) -> dict[str, int]:
    return {k[len(v.key) :].lstrip("/"): n for k, n in store.sizes(v.key).items()}


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a published artifact, after checking every listed file is present with its size.

    :class:`ArtifactNotFound` when there is no manifest (never published, publish unfinished;
    :class:`ArtifactBusy` while one is under way); :class:`ArtifactCorrupt` when files are missing or have
    the wrong size.
    """
    store, key = open_store(uri)

    def check(v: Version) -> dict[str, Any]:
        check_sizes(v.manifest, payload_sizes(store, v), v.uri)
        return v.manifest

    return read_stable(store, key, check)


def is_published(uri: str) -> bool:
    """Whether a complete artifact is at ``uri`` (a manifest whose files are all present at their sizes)."""
    try:
        read_manifest(uri)
        return True
    except (ArtifactNotFound, ArtifactCorrupt):
        return False


def list_artifacts(prefix_uri: str) -> list[str]:
    """URIs of the published artifacts under a prefix (those with a manifest), sorted."""
    store, key = open_store(prefix_uri)
    try:
        keys = store.list(key)
    except BucketNotFound:
        if isinstance(store, S3Store) and store.settings.create_bucket:
            return []
        raise
    out = []
    for k in keys:
        if k == MANIFEST or k.endswith("/" + MANIFEST):
            parent = k[: -len(MANIFEST)].rstrip("/")
            segments = parent.split("/")
            if VERSIONS in segments:
                continue  # a version's own copy of its manifest
            if isinstance(store, LocalStore) and any(p.startswith(".") for p in segments):
                continue  # temp dirs of publishes in flight
            out.append(store.uri(parent))
    return sorted(out)


def fetch(uri: str, dest: str | os.PathLike | None = None) -> Path:
    """A verified local directory holding the artifact ``uri`` (its listed files and ``MANIFEST.json``).

    file:// artifacts are verified in place (or copied into ``dest`` and verified there); s3:// artifacts
    are downloaded into ``dest`` or the cache, verified by sha256, and a cached copy is reused after it
    verifies by sha256 again. A directory used in place that holds unlisted files is refused.
    """
    store, key = open_store(uri)
    if isinstance(store, LocalStore):
        return read_stable(store, key, lambda v: _fetch_local(store, v, dest))
    assert isinstance(store, S3Store)
    return read_stable(store, key, lambda v: _fetch_s3(store, v, dest))


def local_payload(uri: str) -> Path:
    """The directory holding a file:// artifact's current files, NOT verified: for a caller that hashes every
    listed file itself as it reads it (publish), so a large model is not hashed twice."""
    store, key = open_store(uri)
    if not isinstance(store, LocalStore):
        raise DGError(f"{uri}: expected a file:// artifact for an in-place read")
    return store.path(resolve_settled(store, key).key)


def _fetch_local(store: LocalStore, v: Version, dest: str | os.PathLike | None) -> Path:
    src = store.path(v.key)
    if dest is None:
        verify_dir(src, v.manifest, v.uri)
        refuse_unlisted(src, v.manifest, v.uri, flat=v.flat)
        return src
    out = Path(dest)
    check_sizes(
        v.manifest, {rel: (src / rel).stat().st_size for rel in v.manifest["files"] if (src / rel).is_file()}, v.uri
    )
    for rel, f in v.manifest["files"].items():
        try:
            sha, _ = copy_hashed(src / rel, out / rel)
        except FileNotFoundError:
            raise ArtifactCorrupt(f"artifact {v.uri} is incomplete: {rel!r} vanished while being copied") from None
        except OSError as e:
            raise DGError(f"cannot copy {v.uri}/{rel}: {e.strerror or e}") from None
        if sha != f["sha256"]:
            raise ArtifactCorrupt(
                f"artifact {v.uri} is corrupted: {rel!r} has sha256 {sha[:16]}..., {MANIFEST} says {f['sha256'][:16]}..."
            )
    (out / MANIFEST).write_bytes(v.raw)
    return out


def _fetch_s3(store: S3Store, v: Version, dest: str | os.PathLike | None) -> Path:
    check_sizes(v.manifest, payload_sizes(store, v), v.uri)  # one listing: fail fast on a missing file
    if dest is not None:
        out = Path(dest)
        download_verified(store, v, out)
        return out

    def check(out: Path) -> None:
        verify_dir(out, v.manifest, str(out))
        refuse_unlisted(out, v.manifest, str(out), flat=False)

    out = cache_dir() / "artifacts" / hashlib.sha256(v.raw).hexdigest()[:40]
    return cached(out, check, lambda tmp: download_verified(store, v, tmp), v.uri)


def download_verified(store: S3Store, v: Version, out: Path) -> None:
    t0 = time.monotonic()
    items = {key_join(v.key, rel): (out / rel, f["size"]) for rel, f in v.manifest["files"].items()}
    try:
        store.download_many(items)
    except ArtifactNotFound as e:
        raise ArtifactCorrupt(f"artifact {v.uri} is incomplete: {e}") from None
    (out / MANIFEST).write_bytes(v.raw)
    verify_dir(out, v.manifest, v.uri)
    log.info(
        "fetched %s (%d files, %.1f MB) in %.1fs",
        v.uri,
        len(items),
        v.manifest["total_size"] / 1e6,
        time.monotonic() - t0,
    )


# ---------------------------------------------------------------------------------------------- plain folders


def sweep_temps(dest: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp/old siblings of ``dest`` left by publishes that died more than an hour ago."""
    now = time.time()
    name = re.sub(r"([*?\[])", r"[\1]", dest.name)  # glob-escaped
    for p in [*dest.parent.glob(f".{name}.tmp-*"), *dest.parent.glob(f".{name}.old-*")]:
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
