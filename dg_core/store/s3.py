"""The S3 transport: one bucket through the MinIO SDK. The SDK does the signing, the credentials, the
multipart upload (``fput_object`` with ``part_size``/``num_parallel_uploads``) and the conditional PutObject;
this adds what it lacks: retries with backoff around whole operations (an interrupted ranged GET body, or
S3 codes such as RequestTimeout that come with a 4xx status, are beyond urllib3's Retry), one-line errors,
parallel ranged downloads, and writer leases for the publish protocol.

Over 500 lines: one S3 transport (conditional writes, leases, ranged resumable GETs, the retry loop the SDK cannot do) reads best in one file.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from dg_core.errors import DGError
from dg_core.store.base import (
    VERSIONS,
    ArtifactNotFound,
    BucketNotFound,
    Store,
    parallel,
    progress,
    scan_dir,
    sha256_file,
)
from dg_core.store.settings import (
    AUTH_CODES,
    BUCKETS_OK,
    S3Settings,
    client_for,
    is_tls_error,
    is_transient,
    short_error,
)
from dg_core.store.uri import clean_key, key_join

log = logging.getLogger("dg_core.store")

_LEASE = ".lease"  # <artifact>/.v/<version id>.lease, rewritten while its writer is alive
_T = TypeVar("_T")


class S3Store(Store):
    """One bucket through the MinIO SDK, with retries, parallel transfers and clear errors."""

    def __init__(self, bucket: str, settings: S3Settings | None = None):
        self.bucket = bucket
        self.settings = settings or S3Settings.from_env()
        self.client = client_for(self.settings)
        self._part_threads = min(4, self.settings.workers)
        self._multipart_slots = threading.BoundedSemaphore(max(1, self.settings.workers // self._part_threads))

    def __repr__(self) -> str:
        return f"S3Store({self.bucket!r}, endpoint={self.settings.url!r})"

    def uri(self, key: str = "") -> str:
        key = clean_key(key, key)
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    # -- error handling

    def _error(self, exc: BaseException, what: str, key: str) -> DGError:
        from minio.error import S3Error

        s = self.settings
        target = self.uri(key)
        if is_tls_error(exc):
            return DGError(
                f"cannot {what} {target}: TLS with {s.url} failed ({short_error(exc)}); set S3_VERIFY_SSL to the CA "
                "bundle that signed the server's certificate, or S3_VERIFY_SSL=0 to skip verification"
            )
        if is_transient(exc):
            return DGError(
                f"cannot {what} {target}: S3 endpoint {s.url} failed after {s.retries} attempts ({short_error(exc)})"
            )
        if isinstance(exc, S3Error):
            code = exc.code or "error"
            if code in AUTH_CODES:
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
            return DGError(f"S3 {what} {target} failed at {s.url}: {short_error(exc)}")
        return DGError(f"cannot {what} {target} at {s.url}: {short_error(exc)}")

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
                if not is_transient(exc) or attempt == s.retries:
                    raise self._error(exc, what, key) from None
                delay = min(s.backoff_s * 2 ** (attempt - 1), 20.0) * (0.5 + random.random() / 2)
                log.warning(
                    "S3 %s %s: transient error (%s); retry %d/%d in %.1fs",
                    what,
                    self.uri(key),
                    short_error(exc),
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
        if token in BUCKETS_OK:
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
        BUCKETS_OK.add(token)

    # -- objects

    def put_file(self, key: str, path: str | os.PathLike) -> None:
        """Upload one file; files over one part go up as a multipart upload with parallel parts.

        At most ``workers`` parts are in flight per store, so memory stays near ``workers * part_size``.
        """
        self.ensure_bucket()
        key = clean_key(key, key)
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
        key = clean_key(key, key)
        self._call("upload", key, lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)))

    def get_bytes(self, key: str) -> bytes:
        key = clean_key(key, key)

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
        key = clean_key(key, key)
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

        key = clean_key(key, key)

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
        prefix = clean_key(prefix, prefix)
        p = prefix + "/" if prefix else None

        def ls() -> dict[str, int]:
            return {
                o.object_name: int(o.size or 0)
                for o in self.client.list_objects(self.bucket, prefix=p, recursive=True)
                if not o.is_dir
            }

        return self._call("list", prefix, ls)

    def stats(self, prefix: str = "") -> dict[str, tuple[int, str]]:
        prefix = clean_key(prefix, prefix)
        p = prefix + "/" if prefix else None

        def ls() -> dict[str, tuple[int, str]]:
            objs = self.client.list_objects(self.bucket, prefix=p, recursive=True)
            return {o.object_name: (int(o.size or 0), str(o.etag or "")) for o in objs if not o.is_dir}

        return self._call("list", prefix, ls)

    def delete(self, key: str) -> None:
        key = clean_key(key, key)
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
        files = scan_dir(Path(local_dir))
        self._put_files(files, prefix)
        return [key_join(prefix, rel) for rel in files]

    def put_tree(self, files: Mapping[str, Path], prefix: str) -> dict[str, tuple[str, int]]:
        digests = parallel(sha256_file, files.values(), min(4, os.cpu_count() or 1))
        self._put_files(files, prefix)
        return dict(zip(files, digests))

    def read_pointer(self, key: str) -> tuple[bytes, str] | None:
        from minio.error import S3Error

        key = clean_key(key, key)

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

        key = clean_key(key, key)
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
        key = key_join(art_key, VERSIONS, vid + _LEASE)
        self.put_bytes(key, b"")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(0.25, self.settings.lease_s / 4)):
                try:
                    self.client.put_object(self.bucket, key, io.BytesIO(b""), 0)
                except Exception as e:  # the publish itself reports a dead endpoint
                    log.debug("lease %s not renewed: %s", self.uri(key), short_error(e))

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
        prefix = key_join(art_key, VERSIONS, vid)
        self.delete_prefix(prefix)
        self._abort_uploads(self._uploads(prefix))

    def sweep_versions(self, art_key: str, own: str, keep: Callable[[], set[str]]) -> int:
        vprefix = key_join(art_key, VERSIONS)
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
        vprefix = key_join(art_key, VERSIONS)
        return any(k.endswith(_LEASE) and "/" not in k[len(vprefix) + 1 :] for k in self.list(vprefix))

    def _put_files(self, files: Mapping[str, Path], prefix: str) -> None:
        sizes = {rel: p.stat().st_size for rel, p in files.items()}
        # Biggest first, so a large file does not start last and leave the pool idle.
        order = sorted(files.items(), key=lambda kv: -sizes[kv[0]])
        self.ensure_bucket()
        with progress(sum(sizes.values()), f"upload {self.uri(prefix)}") as bar:

            def put(kv: tuple[str, Path]) -> None:
                self.put_file(key_join(prefix, kv[0]), kv[1])
                bar.update(sizes[kv[0]])

            parallel(put, order, self.settings.workers)

    def download_many(self, items: Mapping[str, tuple[Path, int | None]]) -> None:
        """Download {key: (path, size or None)}, every byte range of every file on one thread pool."""
        tasks: list[tuple[Callable[[], None], int]] = []
        for key, (path, size) in items.items():
            tasks += self._download_tasks(key, path, size)
        with progress(sum(n for _, n in tasks), "download") as bar:

            def run(task: tuple[Callable[[], None], int]) -> None:
                task[0]()
                bar.update(task[1])

            try:
                parallel(run, tasks, self.settings.workers)
            except BaseException:
                for path, _ in items.values():
                    path.with_name(path.name + ".part").unlink(missing_ok=True)
                raise
        for path, _ in items.values():
            self._finish_download(path)

    def get_dir(self, prefix: str, local_dir: str | os.PathLike) -> list[Path]:
        sizes = self.sizes(prefix)
        base = clean_key(prefix, prefix)
        dest = Path(local_dir)
        items = {k: (dest / k[len(base) :].lstrip("/"), n) for k, n in sizes.items()}
        self.download_many(items)
        return [p for p, _ in items.values()]
