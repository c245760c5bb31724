"""Artifact store: directories published atomically under a URI, on S3/MinIO or a local directory.

URIs: ``s3://bucket/prefix`` (through the MinIO Python SDK, any S3 endpoint) or ``file:///abs/dir`` (the
embedded default, ``$DG_STORE_ROOT`` or ``file://$PWD/.dg/store``); a plain path means a local directory.

An *artifact* is a directory published with :func:`publish`. Each publish writes an immutable version
(``<uri>/.v/<version>/``: the payload and its ``MANIFEST.json``: sha256 + size of every file, created time,
metadata), then switches the pointer ``<uri>/MANIFEST.json`` to it with a conditional write, so readers see
the old version or the new one, whole, and of two concurrent publishes one wins and the other raises
:class:`PublishConflict`. The guarantees, and which server gives which, are in docs/CONTRACTS.md (Store).
Readers (:func:`read_manifest`, :func:`fetch`) use only the files the manifest lists, check them against it
and refuse incomplete or corrupted artifacts with a one-line :class:`DGError` naming the file and the
expected vs actual size/sha256.

S3 settings come from the environment, under the names KFP and MinIO users already have:

- endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT`` / ``MINIO_ENDPOINT``
  (``http://host:port`` or ``host:port``; without a scheme ``S3_USE_SSL`` decides, default on)
- credentials (``DG_S3_CREDENTIALS``: ``auto``, ``static``, ``iam``, ``anonymous``): static keys
  ``AWS_ACCESS_KEY_ID`` / ``MINIO_ACCESS_KEY``, ``AWS_SECRET_ACCESS_KEY`` / ``MINIO_SECRET_KEY``,
  ``AWS_SESSION_TOKEN``; without them ``auto`` uses the minio SDK's provider chain when Kubernetes or ECS
  injected a role (``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``: IRSA / workload identity; container
  credentials), ``iam`` also asks the instance metadata service; otherwise requests are anonymous.
  ``AWS_ENDPOINT_URL_STS`` / ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` point those at other endpoints
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``S3_VERIFY_SSL`` (``0`` disables, a file path is a CA bundle)
- ``DG_S3_CREATE_BUCKET=1`` creates a missing bucket on the first write (reads of it find nothing);
  otherwise a missing bucket is an error
- tuning: ``DG_S3_WORKERS`` (parallel transfers, 8), ``DG_S3_PART_SIZE_MB`` (multipart part size and
  ranged-download chunk, 32; upload memory is about workers x part size), ``DG_S3_RETRIES`` (attempts on
  transient errors, 5), ``DG_S3_BACKOFF_S`` (first backoff, doubling, 0.5), ``DG_S3_LEASE_S`` (a writer
  renews its lease every quarter of this; a version whose lease is older is a dead writer's, swept with its
  unfinished multipart uploads by the next publish of that URI; 120)

Secrets never appear in logs or errors (:func:`dg_core.errors.redact_url`); the access key id is shown
masked. Downloads of s3 artifacts go to ``$DG_CACHE_DIR`` (default ``~/.cache/dguard``) under a key derived
from the manifest; a cached copy is reused only after it verifies by sha256 again.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from dg_core.errors import DGError, redact_url  # noqa: F401 (re-exported)

log = logging.getLogger("dg_core.store")

MANIFEST = "MANIFEST.json"
FORMAT = "dguard-artifact/1"
VERSIONS = ".v"  # <artifact>/.v/<version id>/...: one immutable directory per publish
_SWITCH_LOCK = ".switch.lock"  # local: serialises pointer switches and sweeps of one artifact
_LEASE = ".lease"  # s3: <artifact>/.v/<version id>.lease, rewritten while its writer is alive
_VID_RE = re.compile(r"^[0-9a-z][0-9a-z-]{0,63}$")
_CHUNK = 4 * 1024 * 1024
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


# ---------------------------------------------------------------------------------------------- URIs


def default_root() -> str:
    """Where stages publish unless told otherwise: ``$DG_STORE_ROOT`` or ``file://$PWD/.dg/store``."""
    root = os.environ.get("DG_STORE_ROOT", "").strip()
    if root:
        return _canonical(root)
    return (Path.cwd() / ".dg" / "store").as_uri()


def _canonical(uri: str) -> str:
    scheme, bucket, path = parse_uri(uri)
    if scheme == "s3":
        return f"s3://{bucket}/{path}" if path else f"s3://{bucket}"
    return Path(path).as_uri()


_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_uri(uri: str) -> tuple[str, str | None, str]:
    """Split a store URI into (scheme, bucket, path): ("s3", bucket, key prefix) or ("file", None, abs path)."""
    if not isinstance(uri, str) or not uri.strip():
        raise DGError(f"store URI {uri!r} is empty: expected s3://bucket/prefix, file:///abs/dir or a local path")
    uri = uri.strip()
    shown = redact_url(uri)
    if _CONTROL_RE.search(unquote(uri)):
        raise DGError(f"store URI {shown!r} contains a control character: expected a printable URI or path")
    if "://" not in uri:
        try:
            return "file", None, os.path.normpath(Path(uri).expanduser().absolute())
        except RuntimeError as e:  # ~user of an unknown user, or no home directory
            raise DGError(f"store path {shown!r}: {e} (expected an absolute or relative path)") from None
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises on a malformed port)
    except ValueError as e:
        raise DGError(
            f"store URI {shown!r} is malformed ({e}): expected s3://bucket/prefix or file:///abs/dir"
        ) from None
    scheme = parts.scheme.lower()
    if scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise DGError(
                f"store URI {shown!r}: bucket {redact_url('s3://' + bucket)[5:]!r} is not a valid S3 bucket name "
                "(expected 3-63 lowercase letters, digits, dots or hyphens)"
            )
        key = _clean_key(unquote(parts.path), uri)
        return "s3", bucket, key
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            host = redact_url("file://" + parts.netloc)[7:]
            raise DGError(f"store URI {shown!r} names host {host!r}: expected file:///absolute/path")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise DGError(f"store URI {shown!r} is not absolute: expected file:///absolute/path")
        return "file", None, os.path.normpath(path)
    raise DGError(
        f"store URI {shown!r} has unsupported scheme {scheme!r}: expected s3://bucket/prefix, "
        "file:///abs/dir or a local path"
    )


def _clean_key(key: str, where: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DGError(f"{where!r}: '..' is not allowed in a store path")
    return "/".join(parts)


def join(uri: str, *parts: str) -> str:
    """``uri`` with path segments appended (``join("s3://b/runs", "r1", "model")``); keeps the URI's form."""
    tail = _clean_key("/".join(str(p) for p in parts), f"join({uri!r}, ...)")
    if not tail:
        return uri
    if "://" not in uri:
        return str(Path(uri) / tail)
    return uri.rstrip("/") + "/" + tail


def _key_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# ---------------------------------------------------------------------------------------------- hashing


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def _copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy src to dst in one read pass, returning the sha256 and size of what was written."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while n := fi.readinto(buf):
            h.update(view[:n])
            fo.write(view[:n])
            size += n
    return h.hexdigest(), size


def _scan_dir(local_dir: Path) -> dict[str, Path]:
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


def _parallel(fn: Callable[[_T], Any], items: Iterable[_T], workers: int) -> list[Any]:
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


def _workers() -> int:
    return _env_int("DG_S3_WORKERS", 8, lo=1, hi=64)


def _env_int(name: str, default: int, *, lo: int, hi: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise DGError(f"environment variable {name}={raw!r} is not an integer (expected {lo}..{hi})") from None
    if not lo <= v <= hi:
        raise DGError(f"environment variable {name}={v} is out of range (expected {lo}..{hi})")
    return v


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise DGError(f"environment variable {name}={raw!r} is not a number") from None
    if v < 0:
        raise DGError(f"environment variable {name}={v} must be >= 0")
    return v


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise DGError(f"environment variable {name}={raw!r} is not a boolean (expected 1/0, true/false, yes/no)")


def _progress(total: int, desc: str):
    """A byte progress bar for big transfers on a terminal; a no-op otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None if total >= 64 << 20 else True)


# ---------------------------------------------------------------------------------------------- stores


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
        digests = _parallel(_sha256_file, files.values(), min(4, os.cpu_count() or 1))
        _parallel(lambda kv: self.put_file(_key_join(prefix, kv[0]), kv[1]), files.items(), _workers())
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
        self.delete_prefix(_key_join(art_key, VERSIONS, vid))

    def put_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        """Upload every file of a local directory under ``prefix`` (in parallel); returns the keys written."""
        files = _scan_dir(Path(local_dir))
        _parallel(lambda kv: self.put_file(_key_join(prefix, kv[0]), kv[1]), files.items(), _workers())
        return [_key_join(prefix, rel) for rel in files]

    def get_dir(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        """Download every key under ``prefix`` into a local directory (in parallel); returns the paths."""
        keys = self.list(prefix)
        base = _clean_key(prefix, prefix)
        dest = Path(local_dir)
        pairs = [(k, dest / k[len(base) :].lstrip("/")) for k in keys]
        _parallel(lambda kp: self.get_file(kp[0], kp[1]), pairs, _workers())
        return [p for _, p in pairs]


class LocalStore(Store):
    """Files under a local root directory (``/`` for file:// URIs); every write lands via rename."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        key = _clean_key(key, key)
        return self.root / key if key else self.root

    def uri(self, key: str = "") -> str:
        return self.path(key).as_uri()

    @contextlib.contextmanager
    def _oserror(self, what: str, key: str) -> Iterator[None]:
        try:
            yield
        except DGError:
            raise
        except PermissionError:
            raise DGError(f"cannot {what} {self.uri(key)}: permission denied") from None
        except OSError as e:
            raise DGError(f"cannot {what} {self.uri(key)}: {e.strerror or e}") from None

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        dst = self.path(key)
        with self._oserror("write", key):
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                shutil.copyfile(path, tmp)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

    def get_file(self, key: str, path: str | os.PathLike) -> None:
        src = self.path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"no file at {self.uri(key)}")
        with self._oserror("read", key):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self.path(key)
        with self._oserror("write", key):
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        src = self.path(key)
        if not src.is_file():
            raise ArtifactNotFound(f"no file at {self.uri(key)}")
        with self._oserror("read", key):
            return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def sizes(self, prefix: str = "") -> dict[str, int]:
        base = self.path(prefix)
        out: dict[str, int] = {}
        if not base.is_dir():
            return out
        with self._oserror("list", prefix):
            for dirpath, _, filenames in os.walk(base):
                for name in filenames:
                    p = Path(dirpath) / name
                    out[p.relative_to(self.root).as_posix()] = p.stat().st_size
        return out

    def stats(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        out = {}
        for k in self.sizes(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = self.path(k).stat()
                out[k] = (st.st_size, f"{st.st_mtime_ns}:{st.st_ino}")
        return out

    def delete(self, key: str) -> None:
        with self._oserror("delete", key):
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        n = len(self.sizes(prefix))
        base = self.path(prefix)
        if base == self.root or base == Path("/"):
            raise DGError(f"refusing to delete the whole store root {self.uri()}")
        if base.is_dir():
            with self._oserror("delete", prefix):
                shutil.rmtree(base)
        return n

    def put_tree(self, files: Mapping[str, Path], prefix: str) -> dict[str, tuple[str, int]]:
        base = self.path(prefix)
        with self._oserror("write", prefix):
            base.mkdir(parents=True, exist_ok=True)
            digests = _parallel(lambda kv: _copy_hashed(kv[1], base / kv[0]), files.items(), 4)
        return dict(zip(files, digests))

    def read_pointer(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise DGError(f"cannot read {self.uri(key)}: {e.strerror or e}") from None
        return data, hashlib.sha256(data).hexdigest()

    @contextlib.contextmanager
    def _switch_lock(self, art_key: str) -> Iterator[Path]:
        vdir = self.path(_key_join(art_key, VERSIONS))
        with self._oserror("lock", art_key):
            vdir.mkdir(parents=True, exist_ok=True)
            fd = _flock(vdir / _SWITCH_LOCK)
        try:
            yield vdir
        finally:
            os.close(fd)

    def swap_pointer(self, key: str, data: bytes, expect: str | None) -> bool:
        art_key = key.rsplit("/", 1)[0] if "/" in key else ""
        with self._switch_lock(art_key) as vdir, self._oserror("publish", key):
            cur = self.read_pointer(key)
            if (cur[1] if cur else None) != expect:
                return False
            tmp = vdir / f".pointer.tmp-{uuid.uuid4().hex[:12]}"
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self.path(key))  # readers see the old pointer or the new one, never a mix
            finally:
                tmp.unlink(missing_ok=True)
            return True

    @contextlib.contextmanager
    def version_lease(self, art_key: str, vid: str) -> Iterator[None]:
        # Taken under the switch lock, so a sweep never sees the lock file before it is held.
        with self._switch_lock(art_key) as vdir, self._oserror("lock", art_key):
            lock = vdir / f"{vid}.lock"
            fd = _flock(lock)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # still held: a sweep cannot take it in between
            os.close(fd)

    def sweep_versions(self, art_key: str, own: str, keep: Callable[[], set[str]]) -> int:
        vdir = self.path(_key_join(art_key, VERSIONS))
        if not vdir.is_dir():
            return 0
        n = 0
        with self._switch_lock(art_key):
            kept = keep() | {own}
            names = {p.name.removesuffix(".lock") for p in vdir.iterdir() if not p.name.startswith(".")}
            for vid in sorted(names - kept):
                lock = vdir / f"{vid}.lock"
                fd = _flock(lock, blocking=False, create=False)
                if fd == -1:
                    continue  # its writer is alive
                try:
                    shutil.rmtree(vdir / vid, ignore_errors=True)
                    lock.unlink(missing_ok=True)
                    n += 1
                finally:
                    if fd is not None:
                        os.close(fd)
        return n

    def publishing(self, art_key: str) -> bool:
        vdir = self.path(_key_join(art_key, VERSIONS))
        if not vdir.is_dir():
            return False
        for lock in vdir.glob("*.lock"):
            fd = _flock(lock, blocking=False, create=False)
            if fd == -1:
                return True
            if fd is not None:
                os.close(fd)
        return False


def _flock(path: Path, *, blocking: bool = True, create: bool = True) -> int | None:
    """An fd holding an exclusive flock on ``path``; -1 when (non-blocking) another holds it; None when absent.

    The kernel drops the lock when its holder exits, however it dies: a free lock means a dead writer.
    """
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        if create:
            raise
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return -1
    except BaseException:
        os.close(fd)
        raise
    return fd


# ---------------------------------------------------------------------------------------------- S3


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """Connection settings read from the environment; secrets are excluded from repr."""

    endpoint: str
    secure: bool
    region: str | None
    access_key: str | None = dataclasses.field(repr=False)
    secret_key: str | None = dataclasses.field(repr=False)
    session_token: str | None = dataclasses.field(repr=False)
    verify: bool | str
    create_bucket: bool
    workers: int
    part_size: int
    retries: int
    backoff_s: float
    lease_s: int = 120
    credentials: str = "static"  # static | anonymous | iam (see _IAM_SIGNALS)
    iam_endpoint: str | None = None  # the STS (web identity) or instance-metadata URL, when not the default

    @property
    def url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    @property
    def masked_key(self) -> str:
        if self.credentials == "iam":
            return "(from the IAM provider chain)"
        k = self.access_key or ""
        return (k[:4] + "***") if k else "(anonymous)"

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        raw = next(
            (
                env[n].strip()
                for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT", "MINIO_ENDPOINT")
                if env.get(n, "").strip()
            ),
            "s3.amazonaws.com",
        )
        shown = redact_url(raw)
        if "://" in raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise DGError(f"S3 endpoint {shown!r} is not valid: expected http(s)://host[:port] or host[:port]")
            if parts.path.strip("/"):
                raise DGError(f"S3 endpoint {shown!r} has a path: expected http(s)://host[:port] without a path")
            secure = parts.scheme == "https"
            endpoint = parts.netloc
        else:
            endpoint = raw.rstrip("/")
            secure = _env_flag("S3_USE_SSL", True)
        if "@" in endpoint:
            raise DGError(
                f"S3 endpoint {shown!r} holds credentials: put them in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "(or MINIO_ACCESS_KEY/MINIO_SECRET_KEY) and give the endpoint as http(s)://host[:port]"
            )
        access = env.get("AWS_ACCESS_KEY_ID") or env.get("MINIO_ACCESS_KEY") or None
        secret = env.get("AWS_SECRET_ACCESS_KEY") or env.get("MINIO_SECRET_KEY") or None
        if bool(access) != bool(secret):
            missing = "secret key (AWS_SECRET_ACCESS_KEY)" if access else "access key id (AWS_ACCESS_KEY_ID)"
            raise DGError(f"S3 credentials are incomplete: the {missing} is not set")
        mode = env.get("DG_S3_CREDENTIALS", "").strip().lower() or "auto"
        if mode not in ("auto", "static", "iam", "anonymous"):
            raise DGError(f"DG_S3_CREDENTIALS={mode!r}: expected auto, static, iam or anonymous")
        if mode == "auto":
            mode = "static" if access else ("iam" if any(env.get(n) for n in _IAM_SIGNALS) else "anonymous")
        if mode == "static" and not access:
            raise DGError("DG_S3_CREDENTIALS=static but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")
        if mode == "anonymous":
            access = secret = None
        token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip()
        if mode == "iam" and token_file and not Path(token_file).is_file():
            raise DGError(f"AWS_WEB_IDENTITY_TOKEN_FILE={token_file!r} does not exist: expected the projected token")
        iam_endpoint = (
            env.get("AWS_ENDPOINT_URL_STS" if token_file else "AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip() or None
        )
        verify_raw = env.get("S3_VERIFY_SSL", "").strip()
        verify: bool | str
        if not verify_raw or verify_raw.lower() in ("1", "true", "yes", "on"):
            verify = True
        elif verify_raw.lower() in ("0", "false", "no", "off"):
            verify = False
        elif Path(verify_raw).is_file():
            verify = verify_raw
        else:
            raise DGError(f"S3_VERIFY_SSL={verify_raw!r}: expected 1/0 or the path of an existing CA bundle file")
        return cls(
            endpoint=endpoint,
            secure=secure,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or env.get("MINIO_REGION") or None,
            access_key=access,
            secret_key=secret,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            verify=verify,
            create_bucket=_env_flag("DG_S3_CREATE_BUCKET", False),
            workers=_workers(),
            part_size=_env_int("DG_S3_PART_SIZE_MB", 32, lo=5, hi=5120) << 20,
            retries=_env_int("DG_S3_RETRIES", 5, lo=1, hi=50),
            backoff_s=_env_float("DG_S3_BACKOFF_S", 0.5),
            lease_s=_env_int("DG_S3_LEASE_S", 120, lo=1, hi=86400),
            credentials=mode,
            iam_endpoint=iam_endpoint if mode == "iam" else None,
        )


# Any of these set (IRSA / workload identity / ECS task roles) makes ``auto`` use the IAM provider chain.
# Instance metadata alone is not probed unless DG_S3_CREDENTIALS=iam: off a cloud VM it only hangs.
_IAM_SIGNALS = (
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


def _credential_provider(s: S3Settings):
    """The minio SDK's chain: keys in the environment (AWS_*, MINIO_*), then the IAM provider (web identity
    via AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN, ECS container credentials, EC2 instance metadata).
    Temporary credentials are refreshed by the SDK before they expire."""
    from minio.credentials.providers import ChainedProvider, EnvAWSProvider, EnvMinioProvider, IamAwsProvider

    return ChainedProvider([EnvAWSProvider(), EnvMinioProvider(), IamAwsProvider(custom_endpoint=s.iam_endpoint)])


def _check_credentials(provider: Any, s: S3Settings) -> None:
    """Fetch credentials once up front, so a missing role is one clear line, not a failure per request."""
    from minio.credentials.providers import IamAwsProvider

    try:
        provider.retrieve()
    except Exception:
        try:  # the chain hides why; ask its last member, the one that was expected to answer
            IamAwsProvider(custom_endpoint=s.iam_endpoint).retrieve()
            reason = "no provider answered"
        except Exception as e:
            reason = _short(e)
        via = (
            "web identity (AWS_WEB_IDENTITY_TOKEN_FILE)"
            if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
            else ("container or instance metadata")
        )
        raise DGError(
            f"S3 credentials: none found for {s.url} (no AWS_ACCESS_KEY_ID; {via} failed: {reason}); set keys, "
            "or check the pod's service account / the instance role"
        ) from None


_CLIENTS: dict[S3Settings, Any] = {}
_BUCKETS_OK: set[tuple[S3Settings, str]] = set()
_LOCK = threading.Lock()

_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidSecurity"}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "XMinioServerNotInitialized",
}


def _client(s: S3Settings):
    with _LOCK:
        c = _CLIENTS.get(s)
        if c is None:
            import certifi
            import urllib3
            from minio import Minio

            ca = s.verify if isinstance(s.verify, str) else (os.environ.get("SSL_CERT_FILE") or certifi.where())
            http = urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=10, read=120),
                maxsize=s.workers * 4 + 4,
                cert_reqs="CERT_REQUIRED" if s.verify else "CERT_NONE",
                ca_certs=ca,
                retries=False,  # retries live in S3Store._call, with backoff and error mapping
            )
            provider = None
            if s.credentials == "iam":
                provider = _credential_provider(s)
                _check_credentials(provider, s)
            c = Minio(
                s.endpoint,
                access_key=s.access_key if provider is None else None,
                secret_key=s.secret_key if provider is None else None,
                session_token=s.session_token if provider is None else None,
                secure=s.secure,
                region=s.region,
                http_client=http,
                credentials=provider,
            )
            if not s.verify and s.secure:
                import warnings

                # The user opted out (S3_VERIFY_SSL=0): say so once instead of once per request.
                warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
                log.warning("S3_VERIFY_SSL=0: TLS certificates of %s are not verified", s.url)
            _CLIENTS[s] = c
        return c


def _is_tls_error(exc: BaseException) -> bool:
    import ssl

    import urllib3

    reason = getattr(exc, "reason", None)
    return isinstance(exc, urllib3.exceptions.SSLError | ssl.SSLError) or isinstance(
        reason, urllib3.exceptions.SSLError | ssl.SSLError
    )


def _is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if _is_tls_error(exc):
        return False  # a certificate problem does not go away by retrying
    if isinstance(exc, S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return exc.code in _TRANSIENT_CODES or status >= 500 or status == 429
    if isinstance(exc, ServerError):
        return exc.status_code >= 500 or exc.status_code == 429
    if isinstance(exc, InvalidResponseError):
        code = getattr(exc, "_code", 0) or 0
        return code >= 500 or code == 429
    return isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError | http.client.HTTPException)


def _short(exc: BaseException) -> str:
    """A one-line reason for an SDK/HTTP error (S3 code and message, or the exception text)."""
    code, message = getattr(exc, "code", None), getattr(exc, "message", None)
    if isinstance(code, str) and code:
        return f"{code}: {message}" if message else code
    text = " ".join(str(exc).split())
    text = redact_url(re.sub(r"<[^>]*object at 0x[0-9a-f]+>:?\s*", "", text))
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


class S3Store(Store):
    """One bucket through the MinIO SDK, with retries, parallel transfers and clear errors."""

    def __init__(self, bucket: str, settings: S3Settings | None = None):
        self.bucket = bucket
        self.settings = settings or S3Settings.from_env()
        self.client = _client(self.settings)
        self._part_threads = min(4, self.settings.workers)
        self._multipart_slots = threading.BoundedSemaphore(max(1, self.settings.workers // self._part_threads))

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, endpoint={self.settings.url!r})"

    def uri(self, key: str = "") -> str:
        key = _clean_key(key, key)
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    # -- error handling

    def _error(self, exc: BaseException, what: str, key: str) -> DGError:
        from minio.error import S3Error

        s = self.settings
        target = self.uri(key)
        if _is_tls_error(exc):
            return DGError(
                f"cannot {what} {target}: TLS with {s.url} failed ({_short(exc)}); set S3_VERIFY_SSL to the CA "
                "bundle that signed the server's certificate, or S3_VERIFY_SSL=0 to skip verification"
            )
        if _is_transient(exc):
            return DGError(
                f"cannot {what} {target}: S3 endpoint {s.url} failed after {s.retries} attempts ({_short(exc)})"
            )
        if isinstance(exc, S3Error):
            code = exc.code or "error"
            if code in _AUTH_CODES:
                return DGError(
                    f"S3 authentication failed ({code}) at {s.url} for access key {s.masked_key}: check "
                    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or MINIO_ACCESS_KEY/MINIO_SECRET_KEY)"
                )
            if code == "AccessDenied":
                return DGError(
                    f"S3 access denied: cannot {what} {target} at {s.url} with access key {s.masked_key} "
                    "(the credentials lack permission for this bucket or prefix)"
                )
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in ("NoSuchKey", "NoSuchObject"):
                return ArtifactNotFound(f"no object at {target}")
            return DGError(f"S3 {what} {target} failed at {s.url}: {_short(exc)}")
        return DGError(f"cannot {what} {target} at {s.url}: {_short(exc)}")

    def _no_bucket(self) -> BucketNotFound:
        where = f"S3 bucket {self.bucket!r} does not exist at {self.settings.url}"
        if self.settings.create_bucket:  # reads find nothing; the first write creates it
            return BucketNotFound(f"{where} (DG_S3_CREATE_BUCKET=1 creates it on the first write)")
        return BucketNotFound(f"{where}: create it, or set DG_S3_CREATE_BUCKET=1 to have it created")

    def _call(self, what: str, key: str, fn: Callable[[], _T]) -> _T:
        """Run one SDK call with exponential backoff on transient failures; map the rest to DGError."""
        s = self.settings
        for attempt in range(1, s.retries + 1):
            try:
                return fn()
            except DGError:
                raise
            except Exception as exc:
                if not _is_transient(exc) or attempt == s.retries:
                    raise self._error(exc, what, key) from None
                delay = min(s.backoff_s * 2 ** (attempt - 1), 20.0) * (0.5 + random.random() / 2)
                log.warning(
                    "S3 %s %s: transient error (%s); retry %d/%d in %.1fs",
                    what,
                    self.uri(key),
                    _short(exc),
                    attempt,
                    s.retries - 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def ensure_bucket(self) -> None:
        """Check the bucket once per process before writing; create it when DG_S3_CREATE_BUCKET=1."""
        from minio.error import S3Error

        token = (self.settings, self.bucket)
        if token in _BUCKETS_OK:
            return

        def bucket_exists() -> bool:
            try:
                return self.client.bucket_exists(self.bucket)
            except S3Error as e:
                if e.code != "AccessDenied":
                    raise
                # HEAD answers 403 without a body, so this may really be bad credentials or a missing
                # bucket: a listing GET returns the precise error code (and succeeds if only HEAD is denied).
                next(iter(self.client.list_objects(self.bucket)), None)
                return True

        if not self._call("check bucket", "", bucket_exists):
            if not self.settings.create_bucket:
                raise self._no_bucket()

            def make_bucket() -> None:
                try:
                    self.client.make_bucket(self.bucket, location=self.settings.region)
                except S3Error as e:
                    if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise

            self._call("create bucket", "", make_bucket)
            log.info("created bucket s3://%s at %s", self.bucket, self.settings.url)
        _BUCKETS_OK.add(token)

    # -- objects

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload one file; files over one part go up as a multipart upload with parallel parts.

        At most ``workers`` parts are in flight per store, so memory stays near ``workers * part_size``.
        """
        self.ensure_bucket()
        key = _clean_key(key, key)
        size = os.stat(path).st_size
        part_size = max(self.settings.part_size, -(-size // 9000))  # S3 allows at most 10000 parts
        if size <= part_size:
            self._call("upload", key, lambda: self.client.fput_object(self.bucket, key, os.fspath(path)))
            return
        with self._multipart_slots:
            self._call(
                "upload",
                key,
                lambda: self.client.fput_object(
                    self.bucket, key, os.fspath(path), part_size=part_size, num_parallel_uploads=self._part_threads
                ),
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        self.ensure_bucket()
        key = _clean_key(key, key)
        self._call("upload", key, lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)))

    def get_bytes(self, key: str) -> bytes:
        key = _clean_key(key, key)

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        return self._call("read", key, get)

    def _get_range(self, key: str, path: Path, offset: int, length: int) -> None:
        def get() -> None:
            resp = self.client.get_object(self.bucket, key, offset=offset, length=length)
            try:
                with open(path, "r+b") as f:
                    f.seek(offset)
                    got = 0
                    for data in resp.stream(amt=1 << 20):
                        f.write(data)
                        got += len(data)
                if got != length:
                    raise http.client.IncompleteRead(b"", length - got)
            finally:
                resp.close()
                resp.release_conn()

        self._call("download", key, get)

    def get_file(self, key: str, path: str | os.PathLike, size: int | None = None) -> None:
        """Download one object; objects over one part are fetched as parallel ranged GETs."""
        key = _clean_key(key, key)
        self.download_many({key: (Path(path), size)})

    def _download_tasks(self, key: str, path: Path, size: int | None) -> list[tuple[Callable[[], None], int]]:
        """Preallocate ``path``.part; return (callable, bytes) per byte range. Finish with _finish_download."""
        if size is None:
            st = self._call("stat", key, lambda: self.client.stat_object(self.bucket, key))
            size = int(st.size or 0)
        part = path.with_name(path.name + ".part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(part, "wb") as f:
                f.truncate(size)
        except OSError as e:
            raise DGError(f"cannot write {str(path)!r}: {e.strerror or e}") from None
        chunk = self.settings.part_size
        return [
            (lambda o=o, n=n: self._get_range(key, part, o, n), n)
            for o, n in ((o, min(chunk, size - o)) for o in range(0, size, chunk))
        ]

    @staticmethod
    def _finish_download(path: Path) -> None:
        os.replace(path.with_name(path.name + ".part"), path)

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        key = _clean_key(key, key)

        def probe() -> bool:
            try:
                self.client.stat_object(self.bucket, key)
                return True
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return False
                if e.code != "AccessDenied":
                    raise
            # HEAD errors carry no body: a one-byte GET says precisely what is wrong.
            try:
                resp = self.client.get_object(self.bucket, key, offset=0, length=1)
                resp.close()
                resp.release_conn()
                return True
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return False
                raise

        return self._call("check", key, probe)

    def sizes(self, prefix: str = "") -> dict[str, int]:
        prefix = _clean_key(prefix, prefix)
        p = prefix + "/" if prefix else None

        def ls() -> dict[str, int]:
            return {
                o.object_name: int(o.size or 0)
                for o in self.client.list_objects(self.bucket, prefix=p, recursive=True)
                if not o.is_dir
            }

        return self._call("list", prefix, ls)

    def stats(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        prefix = _clean_key(prefix, prefix)
        p = prefix + "/" if prefix else None

        def ls() -> dict[str, tuple[int, str]]:
            objs = self.client.list_objects(self.bucket, prefix=p, recursive=True)
            return {o.object_name: (int(o.size or 0), str(o.etag or "")) for o in objs if not o.is_dir}

        return self._call("list", prefix, ls)

    def delete(self, key: str) -> None:
        key = _clean_key(key, key)
        self._call("delete", key, lambda: self.client.remove_object(self.bucket, key))

    def delete_prefix(self, prefix: str) -> int:
        from minio.deleteobjects import DeleteObject

        keys = self.list(prefix)
        for i in range(0, len(keys), 1000):
            batch = [DeleteObject(k) for k in keys[i : i + 1000]]
            errors = self._call(
                "delete", prefix, lambda batch=batch: list(self.client.remove_objects(self.bucket, batch))
            )
            if errors:
                raise DGError(
                    f"cannot delete {self.uri(errors[0].name)}: {errors[0].code}: {errors[0].message} "
                    f"({len(errors)} objects not deleted)"
                )
        return len(keys)

    def put_dir(self, local_dir: str | os.PathLike, prefix: str) -> list[str]:
        files = _scan_dir(Path(local_dir))
        self._put_files(files, prefix)
        return [_key_join(prefix, rel) for rel in files]

    def put_tree(self, files: Mapping[str, Path], prefix: str) -> dict[str, tuple[str, int]]:
        digests = _parallel(_sha256_file, files.values(), min(4, os.cpu_count() or 1))
        self._put_files(files, prefix)
        return dict(zip(files, digests))

    def read_pointer(self, key: str) -> tuple[bytes, str] | None:
        from minio.error import S3Error

        key = _clean_key(key, key)

        def get() -> tuple[bytes, str] | None:
            try:
                resp = self.client.get_object(self.bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return resp.read(), (resp.headers.get("ETag") or "").strip('"')
            finally:
                resp.close()
                resp.release_conn()

        return self._call("read", key, get)

    def swap_pointer(self, key: str, data: bytes, expect: str | None) -> bool:
        from minio.error import S3Error

        key = _clean_key(key, key)
        self.ensure_bucket()

        def put() -> None:
            # minio 7.2's put_object turns unknown headers into x-amz-meta-*; the conditional headers
            # must reach S3 as they are, so this goes through the SDK's PutObject call itself.
            cond = {"If-Match": f'"{expect}"'} if expect else {"If-None-Match": "*"}
            try:
                self.client._put_object(self.bucket, key, data, headers={"Content-Type": "application/json", **cond})
            except S3Error as e:
                if e.code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise

        self._call("publish", key, put)
        # Read back: a refused write (another writer first) and a server that ignores the conditions but
        # was overwritten already both show here; a retried write that had landed shows as our own bytes.
        cur = self.read_pointer(key)
        return cur is not None and cur[0] == data

    @contextlib.contextmanager
    def version_lease(self, art_key: str, vid: str) -> Iterator[None]:
        key = _key_join(art_key, VERSIONS, vid + _LEASE)
        self.put_bytes(key, b"")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(0.25, self.settings.lease_s / 4)):
                try:
                    self.client.put_object(self.bucket, key, io.BytesIO(b""), 0)
                except Exception as e:  # the publish itself reports a dead endpoint
                    log.debug("lease %s not renewed: %s", self.uri(key), _short(e))

        t = threading.Thread(target=beat, name="dg-store-lease", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            with contextlib.suppress(DGError):
                self.delete(key)

    def _uploads(self, prefix: str) -> list[tuple[str, str]]:
        """(key, upload id) of the unfinished multipart uploads under ``prefix``; [] where listing them is
        not implemented (s3rver)."""
        from minio.error import S3Error

        def ls() -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            km = um = None
            for _ in range(1000):
                try:
                    r = self.client._list_multipart_uploads(
                        self.bucket, prefix=prefix + "/", key_marker=km, upload_id_marker=um
                    )
                except S3Error as e:
                    if e.code == "NotImplemented":
                        return out
                    raise
                out += [(u.object_name, u.upload_id) for u in r.uploads]
                if not r.is_truncated:
                    break
                km, um = r.next_key_marker, r.next_upload_id_marker
            return out

        return self._call("list uploads", prefix, ls)

    def _abort_uploads(self, uploads: Iterable[tuple[str, str]]) -> None:
        for key, upload_id in uploads:
            self._call(
                "abort upload", key, lambda k=key, u=upload_id: self.client._abort_multipart_upload(self.bucket, k, u)
            )

    def discard_version(self, art_key: str, vid: str) -> None:
        prefix = _key_join(art_key, VERSIONS, vid)
        self.delete_prefix(prefix)
        self._abort_uploads(self._uploads(prefix))

    def sweep_versions(self, art_key: str, own: str, keep: Callable[[], set[str]]) -> int:
        vprefix = _key_join(art_key, VERSIONS)
        objs = self._call(
            "list", vprefix, lambda: list(self.client.list_objects(self.bucket, prefix=vprefix + "/", recursive=True))
        )
        uploads = self._uploads(vprefix)
        kept = keep() | {own}  # read after the listing: a version switched in since then is kept
        leases: dict[str, datetime] = {}
        keys: dict[str, list[str]] = {}
        for o in objs:
            rest = o.object_name[len(vprefix) + 1 :]
            if "/" in rest:
                keys.setdefault(rest.split("/", 1)[0], []).append(o.object_name)
            elif rest.endswith(_LEASE) and o.last_modified is not None:
                leases[rest.removesuffix(_LEASE)] = o.last_modified
                keys.setdefault(rest.removesuffix(_LEASE), []).append(o.object_name)
        for k, _ in uploads:
            keys.setdefault(k[len(vprefix) + 1 :].split("/", 1)[0], [])
        ref = leases.get(own)  # the server's clock, through our own fresh lease: no client clock skew

        def dead(vid: str) -> bool:
            if vid not in leases:
                return True  # finished (its writer dropped the lease after switching) or never started
            return ref is not None and (ref - leases[vid]).total_seconds() > self.settings.lease_s

        gone = [vid for vid in keys if vid not in kept and dead(vid)]
        if not gone:
            return 0
        from minio.deleteobjects import DeleteObject

        doomed = [DeleteObject(k) for vid in gone for k in keys[vid]]
        for i in range(0, len(doomed), 1000):
            batch = doomed[i : i + 1000]
            self._call("delete", vprefix, lambda batch=batch: list(self.client.remove_objects(self.bucket, batch)))
        self._abort_uploads(u for u in uploads if u[0][len(vprefix) + 1 :].split("/", 1)[0] in gone)
        return len(gone)

    def publishing(self, art_key: str) -> bool:
        vprefix = _key_join(art_key, VERSIONS)
        return any(k.endswith(_LEASE) and "/" not in k[len(vprefix) + 1 :] for k in self.list(vprefix))

    def _put_files(self, files: Mapping[str, Path], prefix: str) -> None:
        sizes = {rel: p.stat().st_size for rel, p in files.items()}
        # Biggest first, so a large file does not start last and leave the pool idle.
        order = sorted(files.items(), key=lambda kv: -sizes[kv[0]])
        self.ensure_bucket()
        with _progress(sum(sizes.values()), f"upload {self.uri(prefix)}") as bar:

            def put(kv: tuple[str, Path]) -> None:
                self.put_file(_key_join(prefix, kv[0]), kv[1])
                bar.update(sizes[kv[0]])

            _parallel(put, order, self.settings.workers)

    def download_many(self, items: Mapping[str, tuple[Path, int | None]]) -> None:
        """Download {key: (path, size or None)}, every byte range of every file on one thread pool."""
        tasks: list[tuple[Callable[[], None], int]] = []
        for key, (path, size) in items.items():
            tasks += self._download_tasks(key, path, size)
        with _progress(sum(n for _, n in tasks), "download") as bar:

            def run(task: tuple[Callable[[], None], int]) -> None:
                task[0]()
                bar.update(task[1])

            try:
                _parallel(run, tasks, self.settings.workers)
            except BaseException:
                for path, _ in items.values():
                    path.with_name(path.name + ".part").unlink(missing_ok=True)
                raise
        for path, _ in items.values():
            self._finish_download(path)

    def get_dir(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        sizes = self.sizes(prefix)
        base = _clean_key(prefix, prefix)
        dest = Path(local_dir)
        items = {k: (dest / k[len(base) :].lstrip("/"), n) for k, n in sizes.items()}
        self.download_many(items)
        return [p for p, _ in items.values()]


def open_store(uri: str) -> tuple[Store, str]:
    """The store holding ``uri`` and the key of ``uri`` inside it (a bucket + prefix, or ``/`` + path)."""
    scheme, bucket, path = parse_uri(uri)
    if scheme == "s3":
        return S3Store(bucket or ""), path
    return LocalStore("/"), path.lstrip("/")


# ---------------------------------------------------------------------------------------------- manifests


def build_manifest(local_dir: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a local directory: sha256 and size of every payload file (hashed in parallel)."""
    d = Path(local_dir)
    files = _scan_dir(d)
    digests = _parallel(_sha256_file, files.values(), min(4, os.cpu_count() or 1))
    return _manifest({rel: dg for rel, dg in zip(files, digests)}, metadata)


def _manifest(
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


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "uri"}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _parse_manifest(data: bytes, uri: str) -> dict[str, Any]:
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
        if not ok or _clean_key(rel, uri) != rel or rel == MANIFEST:
            raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} has an invalid entry for {rel!r}")
    vid = m.get("version")
    if vid is not None and not (isinstance(vid, str) and _VID_RE.match(vid)):
        raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} names an invalid version {vid!r}")
    m["uri"] = uri
    return m


def _check_sizes(manifest: Mapping[str, Any], actual: Mapping[str, int], uri: str) -> None:
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
    _check_sizes(manifest, actual, where)
    rels = list(manifest["files"])
    digests = _parallel(lambda r: _sha256_file(d / r)[0], rels, min(4, os.cpu_count() or 1))
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
    with store._oserror("publish to", key):
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
        _sweep_temps(dest)
    return False


def _publish_in_place(store: LocalStore, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Publishing a directory where it lies: only the (flat) manifest is (re)written."""
    with store._oserror("publish to", key):
        (src / MANIFEST).unlink(missing_ok=True)
        manifest = build_manifest(src, metadata)
        store.put_bytes(_key_join(key, MANIFEST), _manifest_bytes(manifest))
    return manifest


def _new_version() -> str:
    """Sortable by time for people reading a listing; unique by its random part."""
    return time.strftime("%Y%m%dt%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:12]


def _publish_version(store: Store, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    uri = store.uri(key)
    pkey = _key_join(key, MANIFEST)
    files = _scan_dir(src)
    prev = store.read_pointer(pkey)
    replaced: dict[str, Any] | None = None
    if prev is not None:
        with contextlib.suppress(ArtifactCorrupt):  # an unreadable pointer is replaced; its files are unknown
            replaced = _parse_manifest(prev[0], uri)
    vid = _new_version()
    vkey = _key_join(key, VERSIONS, vid)
    raw: bytes | None = None
    with store.version_lease(key, vid):
        try:
            manifest = _manifest(store.put_tree(files, vkey), metadata, version=vid)
            raw = _manifest_bytes(manifest)
            store.put_bytes(_key_join(vkey, MANIFEST), raw)
            try:  # a writer paused past its lease may have been swept: never switch to a missing version
                _check_sizes(manifest, {k[len(vkey) + 1 :]: n for k, n in store.sizes(vkey).items()}, uri)
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
            cur = store.read_pointer(_key_join(key, MANIFEST))
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
                store.delete_prefix(_key_join(key, VERSIONS, old))
            elif not old:  # a flat artifact from before versioned publishes: its listed files go
                for rel in replaced["files"]:
                    if rel.split("/", 1)[0] != VERSIONS:
                        store.delete(_key_join(key, rel))
        store.sweep_versions(key, vid, lambda: _current_versions(store, key))
    except DGError as e:
        log.warning(
            "published %s, but old versions were not all removed (%s); the next publish retries", store.uri(key), e
        )


def _current_versions(store: Store, key: str) -> set[str]:
    got = store.read_pointer(_key_join(key, MANIFEST))
    if got is None:
        return set()
    vid = _parse_manifest(got[0], store.uri(key)).get("version")
    return {vid} if vid else set()


@dataclasses.dataclass(frozen=True)
class _Version:
    """What a reader resolved: the manifest, its bytes, and the key of the payload it describes."""

    manifest: dict[str, Any]
    raw: bytes
    key: str
    uri: str

    @property
    def flat(self) -> bool:
        return "version" not in self.manifest


def _resolve(store: Store, key: str) -> _Version:
    uri = store.uri(key)
    got = store.read_pointer(_key_join(key, MANIFEST))
    if got is None:
        if store.publishing(key):
            raise ArtifactBusy(
                f"artifact {uri} is being published by another process ({MANIFEST} is missing until it "
                "finishes, or its writer was interrupted): retry when it is done"
            )
        raise ArtifactNotFound(
            f"no published artifact at {uri}: {MANIFEST} is missing (never published, or the publish did not finish)"
        )
    m = _parse_manifest(got[0], uri)
    vid = m.get("version")
    vkey = _key_join(key, VERSIONS, vid) if vid else key
    if vid and (
        key.split("/")[-2:] == [VERSIONS, vid] or (isinstance(store, LocalStore) and not store.path(vkey).is_dir())
    ):
        vkey = key  # a version directory named by itself, or a copy of one (a fetched or downloaded folder)
    return _Version(m, got[0], vkey, uri)


_READ_ATTEMPTS = 3


def _resolve_settled(store: Store, key: str) -> _Version:
    """:func:`_resolve`, reading an unparseable pointer again after a moment before calling it corrupt:
    servers that overwrite objects in place (s3rver) serve a half-written pointer during a switch."""
    for delay in (0.05, 0.2, 0.5):
        try:
            return _resolve(store, key)
        except ArtifactCorrupt:
            time.sleep(delay)
    return _resolve(store, key)


def _read_stable(store: Store, key: str, fn: Callable[[_Version], _T]) -> _T:
    """Run ``fn`` on the current version; when its files vanish or change because the artifact was
    republished meanwhile, run it again on the new version (a few times), then give up with ArtifactBusy."""
    for _ in range(_READ_ATTEMPTS):
        v = _resolve_settled(store, key)
        try:
            return fn(v)
        except (ArtifactCorrupt, ArtifactNotFound):
            now = store.read_pointer(_key_join(key, MANIFEST))
            if now is not None and now[0] == v.raw:
                raise  # the pointer did not move: the files really are wrong
            log.info("%s was republished while being read; reading the new version", v.uri)
    raise ArtifactBusy(
        f"artifact {store.uri(key)} is being republished (it changed {_READ_ATTEMPTS} times while being read): "
        "retry when its publishes are done"
    )


def _payload_sizes(store: Store, v: _Version) -> dict[str, int]:
    return {k[len(v.key) :].lstrip("/"): n for k, n in store.sizes(v.key).items()}


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a published artifact, after checking every listed file is present with its size.

    :class:`ArtifactNotFound` when there is no manifest (never published, publish unfinished;
    :class:`ArtifactBusy` while one is under way); :class:`ArtifactCorrupt` when files are missing or have
    the wrong size.
    """
    store, key = open_store(uri)

    def check(v: _Version) -> dict[str, Any]:
        _check_sizes(v.manifest, _payload_sizes(store, v), v.uri)
        return v.manifest

    return _read_stable(store, key, check)


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


def cache_dir() -> Path:
    """Where s3 artifacts are downloaded: ``$DG_CACHE_DIR`` or ``~/.cache/dguard``."""
    return Path(os.environ.get("DG_CACHE_DIR") or Path.home() / ".cache" / "dguard")


def _refuse_unlisted(d: Path, manifest: Mapping[str, Any], uri: str, *, flat: bool) -> None:
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


def fetch(uri: str, dest: str | os.PathLike | None = None) -> Path:
    """A verified local directory holding the artifact ``uri`` (its listed files and ``MANIFEST.json``).

    file:// artifacts are verified in place (or copied into ``dest`` and verified there); s3:// artifacts
    are downloaded into ``dest`` or the cache, verified by sha256, and a cached copy is reused after it
    verifies by sha256 again. A directory used in place that holds unlisted files is refused.
    """
    store, key = open_store(uri)
    if isinstance(store, LocalStore):
        return _read_stable(store, key, lambda v: _fetch_local(store, v, dest))
    assert isinstance(store, S3Store)
    return _read_stable(store, key, lambda v: _fetch_s3(store, v, dest))


def local_payload(uri: str) -> Path:
    """The directory holding a file:// artifact's current files, NOT verified: for a caller that hashes every
    listed file itself as it reads it (publish), so a large model is not hashed twice."""
    store, key = open_store(uri)
    if not isinstance(store, LocalStore):
        raise DGError(f"{uri}: expected a file:// artifact for an in-place read")
    return store.path(_resolve_settled(store, key).key)


def _fetch_local(store: LocalStore, v: _Version, dest: str | os.PathLike | None) -> Path:
    src = store.path(v.key)
    if dest is None:
        verify_dir(src, v.manifest, v.uri)
        _refuse_unlisted(src, v.manifest, v.uri, flat=v.flat)
        return src
    out = Path(dest)
    _check_sizes(
        v.manifest, {rel: (src / rel).stat().st_size for rel in v.manifest["files"] if (src / rel).is_file()}, v.uri
    )
    for rel, f in v.manifest["files"].items():
        try:
            sha, _ = _copy_hashed(src / rel, out / rel)
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


def _fetch_s3(store: S3Store, v: _Version, dest: str | os.PathLike | None) -> Path:
    _check_sizes(v.manifest, _payload_sizes(store, v), v.uri)  # one listing: fail fast on a missing file
    if dest is not None:
        out = Path(dest)
        _download_verified(store, v, out)
        return out
    digest = hashlib.sha256(v.raw).hexdigest()[:40]
    out = cache_dir() / "artifacts" / digest
    if out.is_dir():
        try:
            verify_dir(out, v.manifest, str(out))
            _refuse_unlisted(out, v.manifest, str(out), flat=False)
            log.info("fetch %s: using verified cache %s", v.uri, out)
            return out
        except ArtifactCorrupt as e:
            log.warning("fetch %s: the cached copy fails verification (%s); downloading again", v.uri, e)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{digest}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        _download_verified(store, v, tmp)
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out.is_dir() and (out / MANIFEST).is_file()):
                raise  # otherwise another process finished the same download first
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _download_verified(store: S3Store, v: _Version, out: Path) -> None:
    t0 = time.monotonic()
    items = {_key_join(v.key, rel): (out / rel, f["size"]) for rel, f in v.manifest["files"].items()}
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
    if store.read_pointer(_key_join(key, MANIFEST)) is not None:
        fetch(uri, dest=out)
        return read_manifest(uri)
    before = {k: v for k, v in store.stats(key).items() if VERSIONS not in k[len(key) :].split("/")}
    if not before:
        raise ArtifactNotFound(f"nothing at {uri}: expected a published artifact or a folder of model files")
    rels = {k: k[len(key) :].lstrip("/") for k in before}
    if isinstance(store, LocalStore):
        digests = {rels[k]: _copy_hashed(store.path(k), out / rels[k]) for k in sorted(before)}
    else:
        assert isinstance(store, S3Store)
        store.download_many({k: (out / rels[k], before[k][0]) for k in before})
        digests = {rels[k]: _sha256_file(out / rels[k]) for k in sorted(before)}
    after = {k: v for k, v in store.stats(key).items() if VERSIONS not in k[len(key) :].split("/")}
    if after != before or any(digests[rels[k]][1] != before[k][0] for k in before):
        raise ArtifactBusy(f"{uri} is still being uploaded (its files changed while being read): retry later")
    return _manifest(digests, {"source": uri})


# -- plain folders: models synced into the bucket as they are (aws s3 sync, mc mirror), no MANIFEST.json

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
    if store.read_pointer(_key_join(key, MANIFEST)) is not None:
        return False
    try:
        return store.exists(_key_join(key, MODEL_MARKER))
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
    if (out / MANIFEST).is_file():
        try:
            m = _parse_manifest((out / MANIFEST).read_bytes(), str(out))
            verify_dir(out, m, str(out))
            return out
        except ArtifactCorrupt as e:
            log.warning("fetch %s: the cached snapshot fails verification (%s); copying again", uri, e)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        m = snapshot_dir(uri, tmp)
        (tmp / MANIFEST).write_bytes(_manifest_bytes(m))
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def import_dir(src_uri: str, dst_uri: str, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Publish the folder (or artifact) ``src_uri`` as the artifact ``dst_uri``, pinned by content: the
    manifest's ``metadata.source_sha256`` is the sha256 of the source's file list at the time of the copy."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dg-import-") as tmp:
        snap = snapshot_dir(src_uri, tmp)
        (Path(tmp) / MANIFEST).unlink(missing_ok=True)
        files = {rel: {"sha256": f["sha256"], "size": f["size"]} for rel, f in snap["files"].items()}
        pin = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
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


def _sweep_temps(dest: Path, max_age_s: float = 3600.0) -> None:
    """Remove temp/old siblings of ``dest`` left by publishes that died more than an hour ago."""
    now = time.time()
    name = _glob_escape(dest.name)
    for p in [*dest.parent.glob(f".{name}.tmp-*"), *dest.parent.glob(f".{name}.old-*")]:
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)
