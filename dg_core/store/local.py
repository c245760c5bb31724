"""The local transport: files under a root directory (``/`` for file:// URIs). Writes land via rename;
pointer switches are a flock-guarded compare-and-rename; a writer's liveness is its flock (the kernel drops
it however the writer dies)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from dg_core.errors import DGError
from dg_core.store import base
from dg_core.store.base import VERSIONS, ArtifactNotFound, Store, parallel
from dg_core.store.uri import clean_key, key_join

_SWITCH_LOCK = ".switch.lock"  # serialises pointer switches and sweeps of one artifact


class LocalStore(Store):
    """Files under a local root directory (``/`` for file:// URIs); every write lands via rename."""

    def __init__(self, root: str | os.PathLike = "/"):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        key = clean_key(key, key)
        return self.root / key if key else self.root

    def uri(self, key: str = "") -> str:
        return self.path(key).as_uri()

    @contextlib.contextmanager
    def os_errors(self, what: str, key: str) -> Iterator[None]:
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
        with self.os_errors("write", key):
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
        with self.os_errors("read", key):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, path)

    def put_bytes(self, key: str, data: bytes) -> None:
        dst = self.path(key)
        with self.os_errors("write", key):
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
        with self.os_errors("read", key):
            return src.read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def sizes(self, prefix: str = "") -> dict[str, int]:
        base = self.path(prefix)
        out: dict[str, int] = {}
        if not base.is_dir():
            return out
        with self.os_errors("list", prefix):
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
        with self.os_errors("delete", key):
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        n = len(self.sizes(prefix))
        base = self.path(prefix)
        if base == self.root or base == Path("/"):
            raise DGError(f"refusing to delete the whole store root {self.uri()}")
        if base.is_dir():
            with self.os_errors("delete", prefix):
                shutil.rmtree(base)
        return n

    def put_tree(self, files: Mapping[str, Path], prefix: str) -> dict[str, tuple[str, int]]:
        dest = self.path(prefix)
        with self.os_errors("write", prefix):
            dest.mkdir(parents=True, exist_ok=True)
            # base.copy_hashed looked up at call time: tests interpose on it to stop a writer part-way
            digests = parallel(lambda kv: base.copy_hashed(kv[1], dest / kv[0]), files.items(), 4)
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
        vdir = self.path(key_join(art_key, VERSIONS))
        with self.os_errors("lock", art_key):
            vdir.mkdir(parents=True, exist_ok=True)
            fd = _flock(vdir / _SWITCH_LOCK)
        try:
            yield vdir
        finally:
            os.close(fd)

    def swap_pointer(self, key: str, data: bytes, expect: str | None) -> bool:
        art_key = key.rsplit("/", 1)[0] if "/" in key else ""
        with self._switch_lock(art_key) as vdir, self.os_errors("publish", key):
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
        with self._switch_lock(art_key) as vdir, self.os_errors("lock", art_key):
            lock = vdir / f"{vid}.lock"
            fd = _flock(lock)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # still held: a sweep cannot take it in between
            os.close(fd)

    def sweep_versions(self, art_key: str, own: str, keep: Callable[[], set[str]]) -> int:
        vdir = self.path(key_join(art_key, VERSIONS))
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
        vdir = self.path(key_join(art_key, VERSIONS))
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
