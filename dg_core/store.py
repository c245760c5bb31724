"""Artifact store: directories published atomically under a URI, on S3/MinIO or a local directory.

URIs: ``s3://bucket/prefix`` (through the MinIO Python SDK, any S3 endpoint) or ``file:///abs/dir`` (the
embedded default, ``$DG_STORE_ROOT`` or ``file://$PWD/.dg/store``); a plain path means a local directory.

An *artifact* is a directory published with :func:`publish`: the payload first, then ``MANIFEST.json``
(sha256 + size of every file, created time, metadata) last, so a reader that finds a manifest knows the
payload is complete. Republishing deletes the old manifest before touching anything else, so a publish that
dies half-way leaves nothing readable rather than a mix of two versions. Local publishes write into a hidden
temp directory beside the target and rename it into place. Readers (:func:`read_manifest`, :func:`fetch`)
check the files against the manifest and refuse incomplete or corrupted artifacts with a one-line
:class:`DGError` naming the file and the expected vs actual size/sha256.

S3 settings come from the environment, under the names KFP and MinIO users already have:

- endpoint: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` / ``S3_ENDPOINT`` / ``MINIO_ENDPOINT``
  (``http://host:port`` or ``host:port``; without a scheme ``S3_USE_SSL`` decides, default on)
- credentials: ``AWS_ACCESS_KEY_ID`` / ``MINIO_ACCESS_KEY``, ``AWS_SECRET_ACCESS_KEY`` / ``MINIO_SECRET_KEY``,
  ``AWS_SESSION_TOKEN``; none at all means anonymous requests
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; ``S3_VERIFY_SSL`` (``0`` disables, a file path is a CA bundle)
- ``DG_S3_CREATE_BUCKET=1`` creates a missing bucket on write (otherwise a missing bucket is an error)
- tuning: ``DG_S3_WORKERS`` (parallel transfers, 8), ``DG_S3_PART_SIZE_MB`` (multipart part size and
  ranged-download chunk, 32; upload memory is about workers x part size), ``DG_S3_RETRIES`` (attempts on
  transient errors, 5), ``DG_S3_BACKOFF_S`` (first backoff, doubling, 0.5)

Secrets never appear in logs or errors; the access key id is shown masked. Downloads of s3 artifacts go to
``$DG_CACHE_DIR`` (default ``~/.cache/dguard``) under a key derived from the manifest, and a verified cached
copy is reused as long as its files are unchanged.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import contextlib
import dataclasses
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
_CHUNK = 4 * 1024 * 1024
_T = TypeVar("_T")


class ArtifactNotFound(DGError):
    """No complete artifact at a URI: never published, or a publish did not finish."""


class ArtifactCorrupt(DGError):
    """An artifact whose files do not match its manifest."""


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


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def parse_uri(uri: str) -> tuple[str, str | None, str]:
    """Split a store URI into (scheme, bucket, path): ("s3", bucket, key prefix) or ("file", None, abs path)."""
    if not isinstance(uri, str) or not uri.strip():
        raise DGError(f"store URI {uri!r} is empty: expected s3://bucket/prefix, file:///abs/dir or a local path")
    uri = uri.strip()
    shown = redact_url(uri)
    if "://" not in uri:
        return "file", None, str(Path(uri).expanduser().absolute())
    parts = urlsplit(uri)
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

    @property
    def url(self) -> str:
        return ("https://" if self.secure else "http://") + self.endpoint

    @property
    def masked_key(self) -> str:
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
        )


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
            c = Minio(
                s.endpoint,
                access_key=s.access_key,
                secret_key=s.secret_key,
                session_token=s.session_token,
                secure=s.secure,
                region=s.region,
                http_client=http,
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
                return DGError(
                    f"S3 bucket {self.bucket!r} does not exist at {s.url}: create it, or set "
                    "DG_S3_CREATE_BUCKET=1 to have it created"
                )
            if code in ("NoSuchKey", "NoSuchObject"):
                return ArtifactNotFound(f"no object at {target}")
            return DGError(f"S3 {what} {target} failed at {s.url}: {_short(exc)}")
        return DGError(f"cannot {what} {target} at {s.url}: {_short(exc)}")

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
                raise DGError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.settings.url}: create it, or set "
                    "DG_S3_CREATE_BUCKET=1 to have it created"
                )

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
        sizes = {rel: p.stat().st_size for rel, p in files.items()}
        # Biggest first, so a large file does not start last and leave the pool idle.
        order = sorted(files.items(), key=lambda kv: -sizes[kv[0]])
        self.ensure_bucket()
        with _progress(sum(sizes.values()), f"upload {self.uri(prefix)}") as bar:

            def put(kv: tuple[str, Path]) -> None:
                self.put_file(_key_join(prefix, kv[0]), kv[1])
                bar.update(sizes[kv[0]])

            _parallel(put, order, self.settings.workers)
        return [_key_join(prefix, rel) for rel in files]

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


def _manifest(digests: Mapping[str, tuple[str, int]], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    try:
        meta = json.loads(json.dumps(dict(metadata or {}), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise DGError(f"artifact metadata is not JSON-serialisable: {e}") from None
    files = {rel: {"sha256": sha, "size": size} for rel, (sha, size) in sorted(digests.items())}
    return {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": files,
        "total_size": sum(f["size"] for f in files.values()),
        "metadata": meta,
    }


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "uri"}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def _parse_manifest(data: bytes, uri: str) -> dict[str, Any]:
    try:
        m = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT or not isinstance(m.get("files"), dict):
        raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} is not a {FORMAT} manifest")
    for rel, f in m["files"].items():
        ok = isinstance(f, dict) and isinstance(f.get("size"), int) and f["size"] >= 0
        ok = ok and isinstance(f.get("sha256"), str) and bool(_SHA_RE.match(f["sha256"]))
        if not ok or _clean_key(rel, uri) != rel or rel == MANIFEST:
            raise ArtifactCorrupt(f"artifact {uri}: {MANIFEST} has an invalid entry for {rel!r}")
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


def publish(local_dir: str | os.PathLike, uri: str, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Publish a local directory as the artifact ``uri``: payload first, ``MANIFEST.json`` last.

    Returns the manifest (with ``uri``). An existing artifact at ``uri`` is invalidated before anything is
    written and replaced as a whole (files it had that the new one lacks are removed).
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise DGError(f"cannot publish {str(src)!r}: not a directory")
    store, key = open_store(uri)
    uri = store.uri(key)
    t0 = time.monotonic()
    if isinstance(store, LocalStore):
        manifest = _publish_local(store, src, key, metadata)
    else:
        assert isinstance(store, S3Store)
        manifest = _publish_s3(store, src, key, metadata)
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


def _publish_local(store: LocalStore, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if not key:
        raise DGError("cannot publish to the filesystem root: expected file:///some/dir")
    dest = store.path(key)
    with store._oserror("publish to", key):
        if dest.exists() and not dest.is_dir():
            raise DGError(f"cannot publish to {store.uri(key)}: a file is in the way")
        if src.resolve() == dest.resolve():
            # Publishing a directory in place: only the manifest is (re)written.
            (dest / MANIFEST).unlink(missing_ok=True)
            manifest = build_manifest(src, metadata)
            store.put_bytes(_key_join(key, MANIFEST), _manifest_bytes(manifest))
            return manifest
        if dest.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dest.resolve()):
            raise DGError(f"cannot publish {str(src)!r} to {store.uri(key)}: one directory contains the other")
        dest.parent.mkdir(parents=True, exist_ok=True)
        _sweep_temps(dest)
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:12]}")
        tmp.mkdir()
        try:
            files = _scan_dir(src)
            digests = _parallel(lambda kv: _copy_hashed(kv[1], tmp / kv[0]), files.items(), 4)
            manifest = _manifest(dict(zip(files, digests)), metadata)
            (tmp / MANIFEST).write_bytes(_manifest_bytes(manifest))
            old = None
            if dest.exists():
                (dest / MANIFEST).unlink(missing_ok=True)  # readers stop trusting the old version first
                old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:12]}")
                os.rename(dest, old)
            os.rename(tmp, dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            return manifest
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


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


def _publish_s3(store: S3Store, src: Path, key: str, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    manifest = build_manifest(src, metadata)
    mkey = _key_join(key, MANIFEST)
    store.ensure_bucket()
    store.delete(mkey)  # readers stop trusting the old version first
    before = store.sizes(key)
    store.put_dir(src, key)
    new_keys = {_key_join(key, rel) for rel in manifest["files"]}
    stale = sorted(set(before) - new_keys - {mkey})
    for k in stale:
        store.delete(k)
    store.put_bytes(mkey, _manifest_bytes(manifest))
    return manifest


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a published artifact, after checking every listed file is present with its size.

    :class:`ArtifactNotFound` when there is no manifest (never published or publish unfinished);
    :class:`ArtifactCorrupt` when files are missing or have the wrong size.
    """
    store, key = open_store(uri)
    manifest, _ = _load_manifest(store, key)
    actual = {k[len(key) :].lstrip("/"): n for k, n in store.sizes(key).items()}
    _check_sizes(manifest, actual, store.uri(key))
    return manifest


def _load_manifest(store: Store, key: str) -> tuple[dict[str, Any], bytes]:
    uri = store.uri(key)
    try:
        data = store.get_bytes(_key_join(key, MANIFEST))
    except ArtifactNotFound:
        raise ArtifactNotFound(
            f"no published artifact at {uri}: {MANIFEST} is missing (never published, or the publish did not finish)"
        ) from None
    return _parse_manifest(data, uri), data


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
    out = []
    for k in store.list(key):
        if k == MANIFEST or k.endswith("/" + MANIFEST):
            parent = k[: -len(MANIFEST)].rstrip("/")
            if isinstance(store, LocalStore) and any(p.startswith(".") for p in parent.split("/")):
                continue  # temp dirs of publishes in flight
            out.append(store.uri(parent))
    return sorted(out)


def cache_dir() -> Path:
    """Where s3 artifacts are downloaded: ``$DG_CACHE_DIR`` or ``~/.cache/dguard``."""
    return Path(os.environ.get("DG_CACHE_DIR") or Path.home() / ".cache" / "dguard")


def fetch(uri: str, dest: str | os.PathLike | None = None) -> Path:
    """A verified local directory holding the artifact ``uri``.

    file:// artifacts are verified in place (or copied into ``dest`` and verified there); s3:// artifacts
    are downloaded into ``dest`` or the cache, verified by sha256, and a verified cached copy is reused.
    """
    store, key = open_store(uri)
    uri = store.uri(key)
    manifest, raw = _load_manifest(store, key)
    if isinstance(store, LocalStore):
        src = store.path(key)
        if dest is None:
            verify_dir(src, manifest, uri)
            return src
        out = Path(dest)
        _check_sizes(
            manifest, {rel: (src / rel).stat().st_size for rel in manifest["files"] if (src / rel).is_file()}, uri
        )
        for rel, f in manifest["files"].items():
            with store._oserror("copy", _key_join(key, rel)):
                sha, _ = _copy_hashed(src / rel, out / rel)
            if sha != f["sha256"]:
                raise ArtifactCorrupt(
                    f"artifact {uri} is corrupted: {rel!r} has sha256 {sha[:16]}..., {MANIFEST} says {f['sha256'][:16]}..."
                )
        (out / MANIFEST).write_bytes(raw)
        return out

    assert isinstance(store, S3Store)
    digest = hashlib.sha256(raw).hexdigest()[:40]
    actual = {k[len(key) :].lstrip("/"): n for k, n in store.sizes(key).items()}
    _check_sizes(manifest, actual, uri)  # one listing: fail fast on a missing or truncated file
    if dest is not None:
        out = Path(dest)
        _download_verified(store, key, manifest, raw, out, uri)
        return out
    out = cache_dir() / "artifacts" / digest
    marker = out.with_name(digest + ".verified.json")
    if out.is_dir() and _marker_ok(out, manifest, marker):
        log.info("fetch %s: using verified cache %s", uri, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{digest}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        _download_verified(store, key, manifest, raw, tmp, uri)
        marker.unlink(missing_ok=True)
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out.is_dir() and (out / MANIFEST).is_file()):
                raise  # otherwise another process finished the same download first
        _write_marker(out, manifest, marker)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _download_verified(store: S3Store, key: str, manifest: Mapping[str, Any], raw: bytes, out: Path, uri: str) -> None:
    t0 = time.monotonic()
    items = {_key_join(key, rel): (out / rel, f["size"]) for rel, f in manifest["files"].items()}
    try:
        store.download_many(items)
    except ArtifactNotFound as e:
        raise ArtifactCorrupt(f"artifact {uri} is incomplete: {e}") from None
    (out / MANIFEST).write_bytes(raw)
    verify_dir(out, manifest, uri)
    log.info(
        "fetched %s (%d files, %.1f MB) in %.1fs", uri, len(items), manifest["total_size"] / 1e6, time.monotonic() - t0
    )


def _stat_sig(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _write_marker(out: Path, manifest: Mapping[str, Any], marker: Path) -> None:
    sig = {rel: _stat_sig(out / rel) for rel in manifest["files"]}
    tmp = marker.with_name(marker.name + f".{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(sig))
    os.replace(tmp, marker)


def _marker_ok(out: Path, manifest: Mapping[str, Any], marker: Path) -> bool:
    """A cached copy is reused when every file still has the size/mtime/inode it had when verified."""
    try:
        sig = json.loads(marker.read_text())
        return all(sig.get(rel) == _stat_sig(out / rel) for rel in manifest["files"])
    except (OSError, ValueError):
        return False
