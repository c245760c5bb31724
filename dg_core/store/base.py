"""What every transport is: the :class:`Store` primitives the artifact protocol is written against, the
store's errors and layout names, and the local-file helpers (hashing, scanning, parallel transfers)."""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dg_core.errors import DGError
from dg_core.store.settings import env_workers
from dg_core.store.uri import clean_key, key_join

MANIFEST = "MANIFEST.json"
FORMAT = "dguard-artifact/1"
VERSIONS = ".v"  # <artifact>/.v/<version id>/...: one immutable directory per publish
CHUNK = 4 * 1024 * 1024
_T = TypeVar("_T")


class ArtifactNotFound(DGError):
    """No complete artifact at a URI: never published, or a publish did not finish."""


class ArtifactCorrupt(DGError):
    """An artifact whose files do not match its manifest."""


class ArtifactBusy(ArtifactNotFound):
    """An artifact being published (or republished while it was read): retrying later succeeds."""


class BucketNotFound(ArtifactNotFound):
    """The bucket of an s3:// URI does not exist (so nothing is published there)."""


class PublishConflict(DGError):
    """A publish that lost to a concurrent publish of the same URI; nothing of it is visible."""


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy src to dst in one read pass, returning the sha256 and size of what was written."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while n := fi.readinto(buf):
            h.update(view[:n])
            fo.write(view[:n])
            size += n
    return h.hexdigest(), size


def scan_dir(local_dir: Path) -> dict[str, Path]:
    """Payload files of a directory, by '/'-separated relative path; a top-level MANIFEST.json is not payload."""
    files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(local_dir, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(local_dir).as_posix()
            if rel == MANIFEST:
                continue
            if rel.split("/", 1)[0] == VERSIONS:
                raise DGError(
                    f"cannot publish {str(local_dir)!r}: {VERSIONS + '/'!r} is the store's own version area "
                    "(publish the directory that store.fetch returns instead)"
                )
            if not p.is_file():
                raise DGError(f"cannot publish {str(local_dir)!r}: {rel!r} is not a regular file")
            files[rel] = p
    return files


def parallel(fn: Callable[[_T], Any], items: Iterable[_T], workers: int) -> list[Any]:
    """Run fn over items on a thread pool; the first failure cancels what has not started and is re-raised."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with cf.ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="dg-store") as ex:
        futures = [ex.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def progress(total: int, desc: str):
    """A byte progress bar for big transfers on a terminal; a no-op otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None if total >= 64 << 20 else True)


class Store(abc.ABC):
    """Low-level object access under one root: an S3 bucket, or the local filesystem.

    Keys are '/'-separated paths relative to the root; ``list``/``delete_prefix`` treat a prefix as a
    directory (``"a/b"`` covers ``"a/b/x"`` but not ``"a/bc"``).
    """

    @abc.abstractmethod
    def uri(self, key: str = "") -> str:
        """The canonical URI of a key."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str | os.PathLike) -> None: ...

    @abc.abstractmethod
    def get_file(self, key: str, path: str | os.PathLike) -> None: ...

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; :class:`ArtifactNotFound` when it does not exist."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key under the directory ``prefix`` with its size in bytes."""

    def stats(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        """Every key under ``prefix`` with its size and a token that changes when the object is rewritten."""
        return {k: (n, "") for k, n in self.sizes(prefix).items()}

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; deleting a missing key is not an error."""

    def list(self, prefix: str = "") -> list[str]:
        """Every key under the directory ``prefix``, sorted."""
        return sorted(self.sizes(prefix))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under the directory ``prefix``; returns how many were deleted."""
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    # -- what the publish protocol (see "artifacts" below) needs from a transport

    def put_tree(self, files: Mapping[str, Path], prefix: str) -> dict[str, tuple[str, int]]:
        """Write {relative path: local file} under ``prefix``; returns the sha256 and size of each file."""
        digests = parallel(sha256_file, files.values(), min(4, os.cpu_count() or 1))
        parallel(lambda kv: self.put_file(key_join(prefix, kv[0]), kv[1]), files.items(), env_workers())
        return dict(zip(files, digests))

    @abc.abstractmethod
    def read_pointer(self, key: str) -> tuple[bytes, str] | None:
        """A small object's bytes and a token that changes whenever it is rewritten; None when absent."""

    @abc.abstractmethod
    def swap_pointer(self, key: str, data: bytes, expect: str | None) -> bool:
        """Write ``data`` at ``key`` only if its token is still ``expect`` (None: still absent).

        True when ``data`` is what the key now holds; False when another writer got there first.
        """

    @abc.abstractmethod
    def version_lease(self, art_key: str, vid: str) -> contextlib.AbstractContextManager[None]:
        """Mark version ``vid`` of the artifact ``art_key`` as being written while the context lasts."""

    @abc.abstractmethod
    def sweep_versions(self, art_key: str, own: str, keep: Callable[[], set[str]]) -> int:
        """Delete the versions of ``art_key`` whose writer is gone, except ``own`` and those ``keep()`` names.

        ``keep`` is called after the versions were listed, so a version switched in meanwhile is kept.
        Unfinished uploads of deleted versions are aborted. Returns how many versions were deleted.
        """

    @abc.abstractmethod
    def publishing(self, art_key: str) -> bool:
        """Whether a writer may be publishing a version of ``art_key`` right now."""

    def discard_version(self, art_key: str, vid: str) -> None:
        """Remove what a failed publish of version ``vid`` wrote."""
        self.delete_prefix(key_join(art_key, VERSIONS, vid))

    def put_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        """Upload every file of a local directory under ``prefix`` (in parallel); returns the keys written."""
        files = scan_dir(Path(local_dir))
        parallel(lambda kv: self.put_file(key_join(prefix, kv[0]), kv[1]), files.items(), env_workers())
        return [key_join(prefix, rel) for rel in files]

    def get_dir(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        """Download every key under ``prefix`` into a local directory (in parallel); returns the paths."""
        keys = self.list(prefix)
        base = clean_key(prefix, prefix)
        dest = Path(local_dir)
        pairs = [(k, dest / k[len(base) :].lstrip("/")) for k in keys]
        parallel(lambda kp: self.get_file(kp[0], kp[1]), pairs, env_workers())
        return [p for _, p in pairs]
