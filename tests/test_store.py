"""Contract tests of dg_core.store: one suite, run against a local directory and real S3-protocol servers.

Backends: ``file`` (file:// directory), ``moto`` (moto server, in-memory S3) and ``s3rver`` (npm s3rver,
checks access key ids). The 200 MB round trip runs on file and moto; credential cases need s3rver.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from servers import S3RVER_KEY, FlakyProxy, use_s3

from dg_core import store
from dg_core.errors import DGError
from dg_core.store import MANIFEST, ArtifactCorrupt, ArtifactNotFound

SECRET = "sUp3r-s3cret-valu3-never-logged"


@pytest.fixture(params=["file", "moto", "s3rver"])
def root(request, clean_env, tmp_path) -> str:
    """The URI of an empty store root on the backend under test."""
    if request.param == "file":
        return (tmp_path / "store").as_uri()
    if request.param == "moto":
        return use_s3(clean_env, request.getfixturevalue("moto"), secret=SECRET)
    return use_s3(clean_env, request.getfixturevalue("s3rver"), key=S3RVER_KEY, secret=S3RVER_KEY)


def _write_tree(d: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _raw_put(uri: str, data: bytes) -> None:
    """Overwrite one object/file behind the store's back (as a disk fault or a stray writer would)."""
    st, key = store.open_store(uri)
    st.put_bytes(key, data)


def _payload(uri: str, rel: str) -> str:
    """Where the current version of an artifact keeps one of its files."""
    st, key = store.open_store(uri)
    return store.join(uri, store.VERSIONS, json.loads(st.get_bytes(f"{key}/{MANIFEST}"))["version"], rel)


def _layout(uri: str) -> set[str]:
    """Every key under an artifact, relative to it."""
    st, key = store.open_store(uri)
    return {k[len(key) + 1 :] for k in st.list(key)}


SMALL = {"config.json": b'{"a": 1}', "weights/w.bin": bytes(range(256)) * 64, "empty.txt": b""}


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("root", ["file", "moto"], indirect=True)
def test_roundtrip_200mb_directory(root, tmp_path, clean_env, caplog):
    """Two large files (multipart, ranged parallel downloads) and many small ones survive bit-exact."""
    clean_env.setenv("DG_S3_PART_SIZE_MB", "16")
    src = tmp_path / "model"
    src.mkdir()
    rng = random.Random(0)
    (src / "model-00001.safetensors").write_bytes(os.urandom(110 << 20))
    (src / "model-00002.safetensors").write_bytes(os.urandom(70 << 20))
    for i in range(160):
        _write_tree(src, {f"shards/s{i:03d}.bin": os.urandom(rng.randint(64 << 10, 192 << 10))})
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert total > 195 << 20
    want = {p.relative_to(src).as_posix(): _sha(p) for p in src.rglob("*") if p.is_file()}

    uri = store.join(root, "runs", "r1", "model")
    manifest = store.publish(src, uri, metadata={"kind": "model", "step": 3})
    assert manifest["total_size"] == total
    assert {rel: f["sha256"] for rel, f in manifest["files"].items()} == want

    got = store.fetch(uri)
    assert {p.relative_to(got).as_posix(): _sha(p) for p in got.rglob("*") if p.is_file() and p.name != MANIFEST} == (
        want
    )
    assert json.loads((got / MANIFEST).read_text())["metadata"] == {"kind": "model", "step": 3}

    if uri.startswith("s3://"):
        st, key = store.open_store(uri)
        etag = st.client.stat_object(st.bucket, f"{key}/.v/{manifest['version']}/model-00001.safetensors").etag
        assert etag.endswith("-7"), f"110 MiB in 16 MiB parts should be a 7-part multipart upload, etag {etag}"
        assert got.is_relative_to(store.cache_dir())
        with caplog.at_level(logging.INFO, logger="dg_core.store"):
            again = store.fetch(uri)
        assert again == got and "using verified cache" in caplog.text
    else:
        # verified in place, no copy: the current version's own directory inside the artifact
        assert got == Path(store.parse_uri(uri)[2]) / store.VERSIONS / manifest["version"]


def test_publish_fetch_small_and_metadata(root, tmp_path):
    src = _write_tree(tmp_path / "a", SMALL)
    uri = store.join(root, "x", "art")
    m = store.publish(src, uri, metadata={"eta": -1.0, "note": "ü"})
    assert m["uri"] == uri and set(m["files"]) == set(SMALL)
    assert store.is_published(uri)
    rm = store.read_manifest(uri)
    assert rm["metadata"] == {"eta": -1.0, "note": "ü"} and rm["files"] == m["files"]
    got = store.fetch(uri, dest=tmp_path / "dest")
    assert got == tmp_path / "dest"
    assert {k: v for k, v in _tree(got).items() if k != MANIFEST} == SMALL


def test_republish_replaces_whole_artifact(root, tmp_path):
    uri = store.join(root, "art")
    store.publish(_write_tree(tmp_path / "v1", {"a.txt": b"one", "old-only.txt": b"x"}), uri)
    store.publish(_write_tree(tmp_path / "v2", {"a.txt": b"two!", "new.txt": b"y"}), uri)
    got = store.fetch(uri, dest=tmp_path / "out")
    assert {k: v for k, v in _tree(got).items() if k != MANIFEST} == {"a.txt": b"two!", "new.txt": b"y"}
    # Nothing of the old version is left: the pointer, the current version (its files + manifest copy) and,
    # on file://, the lock file that serialises switches.
    v = store.read_manifest(uri)["version"]
    lock = {".v/.switch.lock"} if root.startswith("file://") else set()
    assert _layout(uri) == lock | {MANIFEST, f".v/{v}/{MANIFEST}", f".v/{v}/a.txt", f".v/{v}/new.txt"}


def test_list_artifacts_and_low_level_ops(root, tmp_path):
    src = _write_tree(tmp_path / "a", {"f.txt": b"hello"})
    for name in ("m/alpha", "m/beta", "m/beta-2/nested"):
        store.publish(src, store.join(root, name))
    st, key = store.open_store(store.join(root, "m", "beta", "loose.bin"))
    st.put_bytes(key, b"not an artifact")  # a stray object does not make an artifact
    assert store.list_artifacts(store.join(root, "m")) == [
        store.join(root, "m", "alpha"),
        store.join(root, "m", "beta"),
        store.join(root, "m", "beta-2", "nested"),
    ]
    assert store.list_artifacts(store.join(root, "m", "beta")) == [store.join(root, "m", "beta")]
    assert st.exists(key) and st.get_bytes(key) == b"not an artifact"
    st.get_file(key, tmp_path / "dl" / "loose.bin")
    assert (tmp_path / "dl" / "loose.bin").read_bytes() == b"not an artifact"
    st.delete(key)
    assert not st.exists(key)
    st.delete(key)  # deleting a missing key is fine
    with pytest.raises(ArtifactNotFound, match="no (file|object) at"):
        st.get_bytes(key)
    beta = store.join(root, "m", "beta")
    prefix = store.open_store(beta)[1]
    v = store.read_manifest(beta)["version"]
    lock = {".v/.switch.lock"} if root.startswith("file://") else set()
    assert _layout(beta) == lock | {MANIFEST, f".v/{v}/{MANIFEST}", f".v/{v}/f.txt"}
    assert st.delete_prefix(prefix) == 3 + len(lock)
    assert _layout(beta) == set()
    assert store.list_artifacts(store.join(root, "m")) == [
        store.join(root, "m", "alpha"),
        store.join(root, "m", "beta-2", "nested"),
    ]


def test_put_get_dir(root, tmp_path):
    src = _write_tree(tmp_path / "a", SMALL)
    st, key = store.open_store(store.join(root, "raw"))
    keys = st.put_dir(src, key)
    assert sorted(keys) == sorted(f"{key}/{rel}" for rel in SMALL)
    st.get_dir(key, tmp_path / "b")
    assert _tree(tmp_path / "b") == SMALL


# ---------------------------------------------------------------------------------------------- failures


_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from dg_core import store
    from dg_core.store import base, manifest
    point, src, uri = sys.argv[1:4]
    if point == "before-manifest":
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        manifest.manifest_bytes = die
    else:  # mid-payload: die once part of the payload has been written
        calls = []
        def wrap(fn):
            def inner(*a, **k):
                calls.append(1)
                if len(calls) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*a, **k)
            return inner
        base.copy_hashed = wrap(base.copy_hashed)
        store.S3Store.put_file = wrap(store.S3Store.put_file)
    store.publish(src, uri)
    print("publish finished", flush=True)
    """
)


@pytest.mark.parametrize("point", ["mid-payload", "before-manifest"])
def test_killed_publish_leaves_nothing_readable(root, tmp_path, point):
    """A publisher SIGKILLed part-way leaves either the complete old version or nothing readable."""
    fresh, old = store.join(root, "fresh"), store.join(root, "old")
    v1 = {f"f{i}.bin": b"v1-%d" % i * 100 for i in range(6)}
    v2 = {f"f{i}.bin": b"v2-%d" % i * 100 for i in range(6)}
    store.publish(_write_tree(tmp_path / "v1", v1), old)
    src2 = _write_tree(tmp_path / "v2", v2)
    for uri in (fresh, old):
        proc = subprocess.run(
            [sys.executable, "-c", _KILLER, point, str(src2), uri], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr

    assert not store.is_published(fresh)
    with pytest.raises(ArtifactNotFound, match="MANIFEST.json is missing"):
        store.fetch(fresh)
    # The new version was never switched in: the old one is whole and still the one readers get.
    assert {k: v for k, v in _tree(store.fetch(old)).items() if k != MANIFEST} == v1
    assert store.list_artifacts(root) == [old]
    # A retry completes normally.
    store.publish(src2, old)
    assert {k: v for k, v in _tree(store.fetch(old, dest=tmp_path / "o")).items() if k != MANIFEST} == v2
    if root.startswith("file://"):
        # The killed writer's flock died with it: the retry swept its half-written version at once.
        v = store.read_manifest(old)["version"]
        assert {p.split("/")[1] for p in _layout(old) if p.startswith(".v/") and "/" in p[3:]} == {v}


def test_corruption_and_truncation_are_detected(root, tmp_path):
    files = {"a.bin": b"A" * 1000, "b.bin": b"B" * 1000}
    uri = store.join(root, "art")
    m = store.publish(_write_tree(tmp_path / "src", files), uri)

    _raw_put(_payload(uri, "b.bin"), b"B" * 999 + b"X")  # same size, different content
    assert store.is_published(uri)  # sizes still match; only hashing can tell
    with pytest.raises(ArtifactCorrupt, match=r"'b\.bin' has sha256 [0-9a-f]{16}\.\.\., MANIFEST\.json says") as e:
        store.fetch(uri)
    assert m["files"]["b.bin"]["sha256"][:16] in str(e.value)

    _raw_put(_payload(uri, "b.bin"), b"B" * 10)
    with pytest.raises(ArtifactCorrupt, match=r"'b\.bin' is 10 bytes, MANIFEST\.json says 1000"):
        store.read_manifest(uri)
    assert not store.is_published(uri)

    st, key = store.open_store(_payload(uri, "a.bin"))
    st.delete(key)
    with pytest.raises(ArtifactCorrupt, match=r"incomplete: 'a\.bin' is listed in MANIFEST\.json but missing"):
        store.fetch(uri)

    _raw_put(store.join(uri, MANIFEST), b"{not json")
    with pytest.raises(ArtifactCorrupt, match="MANIFEST.json is not valid JSON"):
        store.read_manifest(uri)


@pytest.mark.parametrize("root", ["moto"], indirect=True)
def test_tampered_cache_is_redownloaded(root, tmp_path):
    uri = store.join(root, "art")
    store.publish(_write_tree(tmp_path / "src", SMALL), uri)
    first = store.fetch(uri)
    (first / "config.json").write_bytes(b'{"a": 2}')  # someone edits the cached copy
    again = store.fetch(uri)
    assert (again / "config.json").read_bytes() == SMALL["config.json"]


def test_wrong_credentials_give_one_clear_line(s3rver, clean_env, tmp_path, caplog):
    root = use_s3(clean_env, s3rver, key=S3RVER_KEY, secret=S3RVER_KEY)
    uri = store.join(root, "art")
    store.publish(_write_tree(tmp_path / "src", SMALL), uri)

    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY0000")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    calls = [
        lambda: store.publish(tmp_path / "src", store.join(root, "other")),
        lambda: store.read_manifest(uri),
        lambda: store.fetch(uri),
        lambda: store.is_published(uri),
        lambda: store.open_store(uri)[0].exists("art/config.json"),
    ]
    for call in calls:
        with pytest.raises(DGError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith("S3 authentication failed (InvalidAccessKeyId) at " + s3rver.url), msg
        assert "AKIA***" in msg and "AKIAWRONGKEY0000" not in msg and SECRET not in msg and "\n" not in msg
    assert SECRET not in caplog.text and "AKIAWRONGKEY0000" not in caplog.text

    clean_env.setenv("AWS_ACCESS_KEY_ID", S3RVER_KEY)
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", S3RVER_KEY)
    assert store.list_artifacts(root) == [uri]  # the failed publish wrote nothing


def test_permission_and_signature_errors(moto_iam, clean_env, tmp_path, caplog):
    """With IAM enforced: a read-only key can fetch but not publish; a wrong secret is a clear auth error."""
    admin, reader = moto_iam.keys["admin"], moto_iam.keys["reader"]
    root = use_s3(clean_env, moto_iam, *admin)
    uri = store.join(root, "art")
    store.publish(_write_tree(tmp_path / "src", SMALL), uri)

    use_s3(clean_env, moto_iam, *reader)
    assert {k: v for k, v in _tree(store.fetch(uri)).items() if k != MANIFEST} == SMALL
    with pytest.raises(DGError) as e:
        store.publish(tmp_path / "src", store.join(root, "new"))
    assert re.match(rf"S3 access denied: cannot (delete|upload) {root}/new/\S+ at http://127", str(e.value)), e.value
    assert f"with access key {reader[0][:4]}***" in str(e.value) and reader[1] not in str(e.value)
    assert store.list_artifacts(root) == [uri]  # nothing of the refused publish is visible

    use_s3(clean_env, moto_iam, admin[0], "not-the-secret")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DGError, match=r"^S3 authentication failed \(SignatureDoesNotMatch\) at http://127"):
        store.read_manifest(uri)
    assert admin[1] not in caplog.text and "not-the-secret" not in caplog.text


@pytest.mark.parametrize("root", ["moto", "s3rver"], indirect=True)
def test_missing_bucket_reported_or_created(root, tmp_path, clean_env):
    src = _write_tree(tmp_path / "src", SMALL)
    uri = store.join(root, "art")
    bucket = store.parse_uri(root)[1]
    clean_env.setenv("DG_S3_CREATE_BUCKET", "0")
    expected = f"S3 bucket '{bucket}' does not exist at .*: create it, or set DG_S3_CREATE_BUCKET=1"
    with pytest.raises(DGError, match=expected):
        store.publish(src, uri)
    with pytest.raises(DGError, match=expected):
        store.read_manifest(uri)
    clean_env.setenv("DG_S3_CREATE_BUCKET", "1")
    store.publish(src, uri)
    assert store.list_artifacts(root) == [uri]


def test_transient_errors_are_retried(moto, clean_env, tmp_path, caplog):
    """503 SlowDown answers from a real proxy in front of moto are retried with backoff, then succeed."""
    clean_env.setenv("DG_S3_BACKOFF_S", "0.01")
    with FlakyProxy(moto, fail_first=3, methods=("PUT",)) as proxy:
        root = use_s3(clean_env, proxy, secret=SECRET)
        caplog.set_level(logging.WARNING, logger="dg_core.store")
        m = store.publish(_write_tree(tmp_path / "src", SMALL), store.join(root, "art"))
        assert proxy.failed == 3 and proxy.requests > 3
        assert caplog.text.count("transient error") == 3 and "SlowDown" in caplog.text
        assert SECRET not in caplog.text
        assert store.read_manifest(store.join(root, "art"))["files"] == m["files"]

    with FlakyProxy(moto, fail_first=10**6, status=500, code="InternalError") as proxy:
        clean_env.setenv("AWS_ENDPOINT_URL", proxy.url)
        clean_env.setenv("DG_S3_RETRIES", "3")
        with pytest.raises(DGError, match=r"S3 endpoint http://127\.0\.0\.1:\d+ failed after 3 attempts") as e:
            store.read_manifest(store.join(root, "art"))
        assert proxy.requests == 3 and "\n" not in str(e.value)


def test_tls_endpoint_verification(s3rver_tls, clean_env, tmp_path):
    """https endpoints: a self-signed server is refused by default, accepted with its CA bundle or verify off."""
    root = use_s3(clean_env, s3rver_tls, key=S3RVER_KEY, secret=S3RVER_KEY)
    assert s3rver_tls.url.startswith("https://")
    src = _write_tree(tmp_path / "src", SMALL)
    with pytest.raises(
        DGError, match=r"TLS with https://127\.0\.0\.1:\d+ failed \(.*CERTIFICATE_VERIFY_FAILED.*S3_VERIFY_SSL"
    ):
        store.publish(src, store.join(root, "a"))
    clean_env.setenv("S3_VERIFY_SSL", str(s3rver_tls.cert))
    store.publish(src, store.join(root, "a"))
    clean_env.setenv("S3_VERIFY_SSL", "0")
    assert {k: v for k, v in _tree(store.fetch(store.join(root, "a"))).items() if k != MANIFEST} == SMALL


def test_unreachable_endpoint(clean_env, tmp_path):
    from servers import free_port

    clean_env.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    clean_env.setenv("AWS_ACCESS_KEY_ID", "k")
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clean_env.setenv("DG_S3_RETRIES", "2")
    clean_env.setenv("DG_S3_BACKOFF_S", "0.01")
    with pytest.raises(DGError, match=r"cannot read s3://bkt/a/MANIFEST\.json: S3 endpoint .* failed after 2 attempts"):
        store.fetch("s3://bkt/a")


# ---------------------------------------------------------------------------------------------- URIs, config


def test_uris_and_default_root(clean_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store.default_root() == (tmp_path / ".dg" / "store").as_uri()
    clean_env.setenv("DG_STORE_ROOT", "s3://my-bucket/pre/")
    assert store.default_root() == "s3://my-bucket/pre"
    assert store.join("s3://b12/x/", "r1", "/model/") == "s3://b12/x/r1/model"
    assert store.join("file:///tmp/s", "a/b") == "file:///tmp/s/a/b"
    assert store.join("rel/dir", "a") == str(Path("rel/dir/a"))
    assert store.parse_uri("s3://b12/x/y") == ("s3", "b12", "x/y")
    assert store.parse_uri("file:///tmp/s/") == ("file", None, "/tmp/s")
    assert store.parse_uri("plain/dir") == ("file", None, str(tmp_path / "plain" / "dir"))
    for bad, why in [
        ("gs://b/x", "unsupported scheme 'gs'"),
        ("s3://B_ad/x", "not a valid S3 bucket name"),
        ("file://host/x", "names host 'host'"),
        ("s3://b12/a/../b", "'..' is not allowed"),
        ("", "is empty"),
    ]:
        with pytest.raises(DGError, match=why):
            store.parse_uri(bad)
    with pytest.raises(DGError, match="'..' is not allowed"):
        store.join("s3://b12/x", "../y")


def test_s3_settings_from_env(clean_env):
    clean_env.setenv("MINIO_ENDPOINT", "minio-service.kubeflow:9000")
    clean_env.setenv("S3_USE_SSL", "false")
    clean_env.setenv("MINIO_ACCESS_KEY", "minio")
    clean_env.setenv("MINIO_SECRET_KEY", SECRET)
    s = store.S3Settings.from_env()
    assert (s.endpoint, s.secure, s.access_key, s.masked_key) == (
        "minio-service.kubeflow:9000",
        False,
        "minio",
        "mini***",
    )
    assert SECRET not in repr(s)
    clean_env.setenv("AWS_ENDPOINT_URL", "https://s3.example.com")
    clean_env.setenv("S3_VERIFY_SSL", "0")
    s = store.S3Settings.from_env()
    assert (s.endpoint, s.secure, s.verify) == ("s3.example.com", True, False)
    clean_env.delenv("MINIO_SECRET_KEY")
    with pytest.raises(DGError, match=r"secret key \(AWS_SECRET_ACCESS_KEY\) is not set"):
        store.S3Settings.from_env()
    clean_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    clean_env.setenv("DG_S3_WORKERS", "0")
    with pytest.raises(DGError, match="DG_S3_WORKERS=0 is out of range"):
        store.S3Settings.from_env()
    clean_env.setenv("DG_S3_WORKERS", "4")
    clean_env.setenv("S3_VERIFY_SSL", "/no/such/ca.pem")
    with pytest.raises(DGError, match="S3_VERIFY_SSL='/no/such/ca.pem': expected 1/0 or the path"):
        store.S3Settings.from_env()


def test_publish_bad_input(store_root, tmp_path):
    with pytest.raises(DGError, match="not a directory"):
        store.publish(tmp_path / "missing", store.join(store_root, "a"))
    src = _write_tree(tmp_path / "src", SMALL)
    with pytest.raises(DGError, match="metadata is not JSON-serialisable"):
        store.publish(src, store.join(store_root, "a"), metadata={"x": object()})
    with pytest.raises(DGError, match="one directory contains the other"):
        store.publish(src, (src / "inner").as_uri())
    assert store.list_artifacts(store_root) == []
    blocker = Path(store.parse_uri(store_root)[2]) / "blocker"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"x")
    with pytest.raises(DGError, match="a file is in the way"):
        store.publish(src, blocker.as_uri())
    assert store.list_artifacts(store_root) == []


# ---------------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize(
    "endpoint",
    [
        f"http://AKIAURLKEY:{SECRET}@127.0.0.1:9/path",  # credentials and a path
        f"ftp://AKIAURLKEY:{SECRET}@127.0.0.1:9",  # a bad scheme
        f"AKIAURLKEY:{SECRET}@127.0.0.1:9",  # no scheme at all
        f"http://AKIAURLKEY:{SECRET}@127.0.0.1:9",  # a well-formed URL carrying credentials
    ],
)
def test_endpoint_credentials_are_never_printed(clean_env, tmp_path, caplog, endpoint):
    """A secret written into the endpoint URL is refused with a one-line error that does not echo it."""
    clean_env.setenv("AWS_ENDPOINT_URL", endpoint)
    clean_env.setenv("DG_S3_RETRIES", "1")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DGError) as e:
        store.read_manifest("s3://bkt/a")
    msg = str(e.value)
    assert SECRET not in msg and "AKIAURLKEY" not in msg and "***@127.0.0.1" in msg, msg
    assert SECRET not in caplog.text
    proc = subprocess.run(
        [sys.executable, "-m", "dg_core.cli", "prep", "source=synthetic", "n=4", "output=s3://bkt/ds"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AWS_ENDPOINT_URL": endpoint, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == 2, proc.stderr
    assert SECRET not in proc.stdout + proc.stderr and "AKIAURLKEY" not in proc.stderr, proc.stderr


def test_uri_credentials_are_never_printed(clean_env):
    for uri in (f"s3://KEY:{SECRET}@bkt/x", f"file://KEY:{SECRET}@host/x", f"gs://KEY:{SECRET}@b/x"):
        with pytest.raises(DGError) as e:
            store.parse_uri(uri)
        assert SECRET not in str(e.value) and "***@" in str(e.value), str(e.value)
    assert store.redact_url(f"https://h/o?X-Amz-Signature={SECRET}&a=1") == "https://h/o?X-Amz-Signature=***&a=1"


# ---------------------------------------------------------------------------------------------- concurrency

_WRITER = textwrap.dedent(
    """
    import sys, tempfile, time
    from pathlib import Path
    from dg_core import store
    from dg_core.errors import DGError
    name, uri, t0, rounds, nfiles, sync = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
    time.sleep(max(0.0, t0 - time.time()))
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as d:
            for i in range(nfiles):
                (Path(d) / f"f{i:02d}.txt").write_text(f"{name}:{r}:{i}|" * (50 + 37 * i))
            # A barrier: both writers start round r together, once both finished round r - 1.
            while r and len(list(sync.glob(f"done-*-{r - 1}"))) < 2:
                time.sleep(0.002)
            try:
                store.publish(d, uri, metadata={"writer": name, "round": r})
                print(f"{r} ok", flush=True)
            except DGError as e:
                print(f"{r} error {type(e).__name__}: {e}", flush=True)
            (sync / f"done-{name}-{r}").touch()
    """
)

_READER = textwrap.dedent(
    """
    import json, sys, time, tempfile
    from dg_core import store
    import os
    uri, start, stop = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    time.sleep(max(0.0, start - time.time()))
    last = False
    while not last:
        last = os.path.exists(stop)  # the writers are done: one more read, then stop
        try:
            with tempfile.TemporaryDirectory() as d:
                got = store.fetch(uri, dest=d)
                tags = {p.read_text().split("|")[0].rsplit(":", 1)[0] for p in got.glob("f*.txt")}
                print(json.dumps({"tags": sorted(tags), "n": len(list(got.glob("f*.txt")))}), flush=True)
        except store.ArtifactNotFound as e:  # includes ArtifactBusy
            print(json.dumps({"busy": type(e).__name__, "msg": str(e)}), flush=True)
        except Exception as e:
            print(json.dumps({"bad": type(e).__name__, "msg": str(e)}), flush=True)
    """
)


def test_concurrent_publishes_one_whole_version(root, tmp_path):
    """Two real processes publish different versions of one URI at the same instants while a third reads.

    Every read sees one whole version (all files from one writer and round) or a clear not-yet/busy error;
    a losing writer says it lost (the CLI turns that into a non-zero exit); the URI ends holding the
    version of a writer that reported success.
    """
    import time

    uri = store.join(root, "ds")
    rounds, nfiles = 4, 12
    t0 = time.time() + 3.0  # both writers are imported and waiting by then
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    writers = {
        name: subprocess.Popen(
            [sys.executable, "-c", _WRITER, name, uri, str(t0), str(rounds), str(nfiles), str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("a", "b")
    }
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, uri, str(t0), str(tmp_path / "writers-done")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    outs = {}
    for name, p in writers.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs[name] = dict(line.split(" ", 1) for line in out.splitlines())
    (tmp_path / "writers-done").touch()
    rout, rerr = reader.communicate(timeout=120)
    assert reader.returncode == 0, rerr

    lost = 0
    for r in range(rounds):
        results = {name: outs[name][str(r)] for name in writers}
        assert "ok" in results.values(), results  # somebody always wins
        for res in results.values():
            if res != "ok":
                lost += 1
                assert res.startswith("error PublishConflict: publish to ") and "lost to a concurrent publish" in res
    final = store.read_manifest(uri)["metadata"]
    assert outs[final["writer"]][str(rounds - 1)] == "ok" and final["round"] == rounds - 1
    reads = [json.loads(line) for line in rout.splitlines()]
    first = next(i for i, x in enumerate(reads) if "tags" in x)
    for x in reads:
        assert "bad" not in x, x  # never a corrupted or mixed read
        if "tags" in x:
            assert len(x["tags"]) == 1 and x["n"] == nfiles, x  # one writer, one round, every file
    # Once a version exists, republishes never hide it: readers keep getting a whole version.
    after = reads[first:]
    assert all("tags" in x or x["busy"] == "ArtifactBusy" for x in after), [x for x in after if "tags" not in x][:3]
    busy = sum("tags" not in x for x in after)
    print(f"{root.split(':')[0]}: {lost}/{rounds} rounds had a loser; {len(after) - busy}/{len(after)} reads whole")


_PAUSED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dg_core import store
    from dg_core.store import base
    src, uri, flag = sys.argv[1:4]
    real = base.copy_hashed
    def slow(a, b):
        out = real(a, b)
        Path(flag).touch()  # part of the payload is written: the test may look now
        time.sleep(60)
        return out
    base.copy_hashed = slow
    store.publish(src, uri)
    """
)


def _start_paused_writer(src: Path, uri: str, flag: Path) -> subprocess.Popen:
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "DG_S3_WORKERS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_WRITER, str(src), uri, str(flag)], env=env)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the writer did not start"
        time.sleep(0.05)
    return proc


def test_local_publish_in_flight_killed_and_failed(clean_env, tmp_path, monkeypatch):
    """file://: readers during a publish get the old version or 'being published'; nothing lingers after a
    killed or failed publish once the next publish ran."""
    root = tmp_path / "store"
    old, fresh = (root / "old").as_uri(), (root / "fresh").as_uri()
    v1 = {f"f{i}.bin": b"v1-%d" % i * 100 for i in range(4)}
    store.publish(_write_tree(tmp_path / "v1", v1), old)
    src2 = _write_tree(tmp_path / "v2", {f"f{i}.bin": b"v2-%d" % i * 100 for i in range(4)})

    w_old = _start_paused_writer(src2, old, tmp_path / "flag-old")
    w_fresh = _start_paused_writer(src2, fresh, tmp_path / "flag-fresh")
    try:
        # A republish in flight: readers keep the old version, whole.
        assert {k: v for k, v in _tree(store.fetch(old)).items() if k != MANIFEST} == v1
        # A first publish in flight: a clear "being published, retry", not "corrupted" or "missing".
        with pytest.raises(store.ArtifactBusy, match=r"is being published by another process.*retry"):
            store.fetch(fresh)
        assert not store.is_published(fresh)
    finally:
        for w in (w_old, w_fresh):
            w.send_signal(signal.SIGKILL)
            w.wait()
    with pytest.raises(ArtifactNotFound, match="MANIFEST.json is missing") as e:
        store.fetch(fresh)  # the writer is dead: no longer "being published"
    assert not isinstance(e.value, store.ArtifactBusy)

    # A publish that fails part-way removes what it wrote before raising.
    calls = []

    def failing(a, b):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(a, b)

    from dg_core.store import base

    real = base.copy_hashed
    monkeypatch.setattr(base, "copy_hashed", failing)
    with pytest.raises(DGError, match="No space left on device"):
        store.publish(src2, old)
    monkeypatch.setattr(base, "copy_hashed", real)

    # The next publishes sweep what the killed writers left; nothing but the current versions remains.
    for uri in (old, fresh):
        store.publish(src2, uri)
        v = store.read_manifest(uri)["version"]
        assert {p.split("/")[1] for p in _layout(uri) if p.count("/") >= 2} == {v}
        assert {p for p in _layout(uri) if p.count("/") == 1} == {".v/.switch.lock"}  # no stale locks
    assert sorted(p.name for p in root.iterdir()) == ["fresh", "old"]  # no temp siblings either


# ---------------------------------------------------------------------------------------------- buckets, uploads


def test_create_bucket_flag_is_honoured_on_every_path(moto, clean_env, tmp_path):
    """DG_S3_CREATE_BUCKET=1: reads of a missing bucket find nothing (instead of failing), so stages that
    look before they write go on and create it; the message never asks to set the variable that is set."""
    use_s3(clean_env, moto)
    bucket = f"dg-new-{os.urandom(4).hex()}"
    uri = f"s3://{bucket}/zoo/x"
    assert not store.is_published(uri)
    assert store.list_artifacts(f"s3://{bucket}") == []
    with pytest.raises(store.BucketNotFound) as e:
        store.read_manifest(uri)
    assert "creates it on the first write" in str(e.value) and "or set DG_S3_CREATE_BUCKET" not in str(e.value)
    proc = subprocess.run(
        [sys.executable, "-m", "dg_core.cli", "zoo", "names=proxy", f"root=s3://{bucket}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from dg_core.models.zoo import zoo_uri

    assert store.list_artifacts(f"s3://{bucket}") == [zoo_uri("proxy", root=f"s3://{bucket}")]
    clean_env.setenv("DG_S3_CREATE_BUCKET", "0")
    with pytest.raises(store.BucketNotFound, match=r"does not exist at .*: create it, or set DG_S3_CREATE_BUCKET=1"):
        store.read_manifest(f"s3://dg-none-{os.urandom(4).hex()}/a")


def _incomplete_uploads(uri: str) -> list[str]:
    st, _ = store.open_store(uri)
    return [u.object_name for u in st.client._list_multipart_uploads(st.bucket).uploads]


_MULTIPART_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import minio
    from dg_core import store
    real = minio.Minio._upload_part
    parts = []
    def upload_part(self, *a, **k):
        parts.append(1)
        if len(parts) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *a, **k)
    minio.Minio._upload_part = upload_part
    store.publish(sys.argv[1], sys.argv[2])
    """
)


def test_interrupted_multipart_uploads_are_aborted(moto, clean_env, tmp_path, monkeypatch):
    """No orphaned parts: an interrupted upload aborts its multipart uploads; one killed outright is
    aborted by the next publish of that URI once its writer's lease has gone stale."""
    import time

    import minio

    root = use_s3(clean_env, moto)
    clean_env.setenv("DG_S3_PART_SIZE_MB", "5")
    clean_env.setenv("DG_S3_WORKERS", "1")
    clean_env.setenv("DG_S3_LEASE_S", "1")
    src = _write_tree(tmp_path / "src", {"big.bin": os.urandom(12 << 20), "small.txt": b"s"})
    uri = store.join(root, "m")

    real = minio.Minio._upload_part
    parts = []

    def interrupted(self, *a, **k):
        parts.append(1)
        if len(parts) == 2:
            raise KeyboardInterrupt  # Ctrl-C: the SDK only aborts its upload on Exception
        return real(self, *a, **k)

    monkeypatch.setattr(minio.Minio, "_upload_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.publish(src, uri)
    monkeypatch.setattr(minio.Minio, "_upload_part", real)
    assert _incomplete_uploads(root) == []
    assert _layout(uri) == set()

    proc = subprocess.run(
        [sys.executable, "-c", _MULTIPART_KILLER, str(src), uri],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(_incomplete_uploads(root)) == 1  # what a killed writer leaves: nothing can abort it then
    time.sleep(2.5)  # the killed writer's lease (DG_S3_LEASE_S=1) goes stale
    m = store.publish(src, uri)
    assert _incomplete_uploads(root) == []
    assert {p.split("/")[1] for p in _layout(uri) if p.startswith(".v/")} == {m["version"]}


# ---------------------------------------------------------------------------------------------- unlisted files


def test_unlisted_files_are_never_used(clean_env, tmp_path):
    """A file dropped into a published model folder (a chat template here) is never read by loaders:
    beside the version it is invisible, inside the directory readers use it makes the artifact refused."""
    from dg_core.models.io import load_tokenizer
    from dg_core.models.zoo import ensure

    root = (tmp_path / "store").as_uri()
    uri = ensure("proxy", root=root)
    art = Path(store.parse_uri(uri)[2])
    template = "INJECTED {% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert load_tokenizer(uri).chat_template is None

    (art / "chat_template.jinja").write_text(template)  # where a user sees the model files
    assert load_tokenizer(uri).chat_template is None
    assert load_tokenizer(str(art)).chat_template is None  # named by its path, too
    assert "chat_template.jinja" not in {p.name for p in store.fetch(uri).iterdir()}

    version_dir = store.fetch(uri)
    assert store.fetch(str(version_dir)) == version_dir  # a fetched directory is itself readable by path
    (version_dir / "chat_template.jinja").write_text(template)  # inside the directory loaders read
    with pytest.raises(ArtifactCorrupt, match=r"holds 'chat_template\.jinja', which its MANIFEST\.json does not list"):
        load_tokenizer(uri)
    assert store.is_published(uri)  # the listed files are intact; only in-place use is refused
    copy = store.fetch(uri, dest=tmp_path / "copy")  # a copy takes only the listed files
    assert not (copy / "chat_template.jinja").exists()
    assert store.fetch(str(copy)) == copy  # and is itself an artifact, read by its path
    (version_dir / "chat_template.jinja").unlink()
    assert load_tokenizer(uri).chat_template is None

    # Artifacts published before versions existed (flat folders) get the same check.
    flat = _write_tree(tmp_path / "store" / "flat", {"config.json": b"{}", "sub/w.bin": b"w"})
    store.publish(flat, flat.as_uri())  # in place: a flat manifest beside the files
    assert "version" not in store.read_manifest(flat.as_uri())
    store.fetch(flat.as_uri())
    (flat / "sub" / "chat_template.jinja").write_text(template)
    with pytest.raises(ArtifactCorrupt, match=r"holds 'sub/chat_template\.jinja'"):
        store.fetch(flat.as_uri())


@pytest.mark.parametrize("root", ["moto"], indirect=True)
def test_cache_is_verified_by_sha(root, tmp_path):
    """A cached download edited in place with its size, mtime and inode kept is still caught and replaced."""
    uri = store.join(root, "art")
    store.publish(_write_tree(tmp_path / "src", SMALL), uri)
    first = store.fetch(uri)
    p = first / "config.json"
    st = p.stat()
    with open(p, "r+b") as f:  # same inode, same size
        f.write(b'{"a": 2}')
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    again = store.fetch(uri)
    assert (again / "config.json").read_bytes() == SMALL["config.json"]
    (again / "chat_template.jinja").write_text("INJECTED")  # an extra file in the cache
    third = store.fetch(uri)
    assert not (third / "chat_template.jinja").exists()
    assert {k: v for k, v in _tree(third).items() if k != MANIFEST} == SMALL


# ---------------------------------------------------------------------------------------------- fault injection

_FAULT_WRITER = textwrap.dedent(
    """
    import sys
    from dg_core import store
    from dg_core.errors import DGError
    print("start", flush=True)
    try:
        store.publish(sys.argv[1], sys.argv[2])
    except DGError as e:
        print("error", e, flush=True)
        sys.exit(2)
    print("done", flush=True)
    """
)


def test_s3_server_killed_at_random_points_of_a_publish(clean_env, tmp_path):
    """The S3 server (s3rver, objects on disk) is SIGKILLed at a random moment of a multi-file republish,
    a few times: after each restart readers get the old version or the new one, whole, never a mix or
    a corrupted file; a retry then succeeds."""
    import time

    from servers import free_port, s3rver_server

    rng = random.Random(int(os.environ.get("DG_FAULT_SEED", "20261201")))
    data, port = tmp_path / "s3data", free_port()
    data.mkdir()
    clean_env.setenv("DG_S3_RETRIES", "2")
    clean_env.setenv("DG_S3_BACKOFF_S", "0.05")

    def version(n: int) -> Path:
        return _write_tree(tmp_path / f"v{n}", {f"f{i}.bin": (b"v%d-%d|" % (n, i)) * 40000 for i in range(8)})

    def read(uri: str, where: Path) -> int:
        got = store.fetch(uri, dest=where)
        tags = {p.read_bytes().split(b"|", 1)[0].split(b"-")[0] for p in got.glob("f*.bin")}
        assert len(tags) == 1 and len(list(got.glob("f*.bin"))) == 8, tags  # one whole version
        return int(tags.pop()[1:])

    with s3rver_server(data_dir=data, port=port) as server:
        root = use_s3(clean_env, server, key=S3RVER_KEY, secret=S3RVER_KEY)
        uri = store.join(root, "model")
        t = time.monotonic()
        store.publish(version(0), uri)
        took = time.monotonic() - t
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    current, outcomes, finished = 0, [], True
    for n in range(1, 5):  # each server lifetime: check the last kill, retry it, then kill a new publish
        with s3rver_server(data_dir=data, port=port) as server:
            if n > 1:
                try:
                    got = read(uri, tmp_path / f"read{n}")
                    # Finished: the new version. Killed: the old one, or the new one if its switch landed.
                    assert got == n - 1 if finished else got in (current, n - 1), (got, current, n - 1)
                    outcomes.append("new" if got == n - 1 else "old")
                except ArtifactCorrupt as e:
                    # s3rver writes objects non-atomically: killed during the pointer's PUT it keeps a torn
                    # pointer, and nothing is readable (S3 and MinIO PUTs are atomic: old or new there).
                    assert not finished and "MANIFEST.json is not valid JSON" in str(e), e
                    outcomes.append("nothing")
                store.publish(version(n - 1), uri)  # the retry
                assert read(uri, tmp_path / f"retry{n}") == n - 1
                current = n - 1
            if n == 4:
                break
            w = subprocess.Popen(
                [sys.executable, "-c", _FAULT_WRITER, str(version(n)), uri],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            assert w.stdout.readline().strip() == "start"
            time.sleep(rng.uniform(0.0, took * 1.5))
            server.proc.kill()
            server.proc.wait()
            out, err = w.communicate(timeout=120)
        finished = "done" in out
        assert finished or (w.returncode == 2 and "error " in out), (out, err)  # a one-line DGError
    print(f"outcomes after kills: {outcomes}")


@pytest.mark.slow
@pytest.mark.parametrize("root", ["moto", "file"], indirect=True)
def test_concurrent_prep_runs_as_in_the_issue(root, tmp_path):
    """The repro as users ran it: two `dguard prep` with different seeds into one output, started together,
    a few times. Each exits 0 or 2 saying it lost; the dataset then reads whole, from a run that won."""
    from dg_core.data.artifact import load_split

    uri = store.join(root, "ds")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for _ in range(3):
        procs = {
            seed: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dg_core.cli",
                    "prep",
                    "source=synthetic",
                    "task=synthetic_math",
                    "n=3000",
                    f"seed={seed}",
                    f"output={uri}",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=tmp_path,
            )
            for seed in (1, 2)
        }
        codes = {}
        for seed, p in procs.items():
            _, err = p.communicate(timeout=300)
            codes[seed] = p.returncode
            assert p.returncode in (0, 2), err[-2000:]
            if p.returncode == 2:
                assert "lost to a concurrent publish" in err and "Traceback" not in err, err[-2000:]
        assert 0 in codes.values(), codes
        winners = {seed for seed, c in codes.items() if c == 0}
        rows = load_split(uri, "train") + load_split(uri, "test") + load_split(uri, "validation")
        assert len(rows) == 3000
        seed = json.loads((store.fetch(uri) / "dataset.json").read_text())["seed"]
        assert seed in winners, (seed, codes)


# ---------------------------------------------------------------------------------------------- cloud credentials


def _signing_keys(proxy) -> set[str]:
    return {m.group(1) for a in proxy.auth if (m := re.search(r"Credential=([^/]+)/", a))}


def test_credentials_from_instance_metadata(moto, clean_env, tmp_path):
    """No keys, DG_S3_CREDENTIALS=iam: the minio SDK's chain gets a role's credentials from the instance
    metadata service (moto's) and every S3 request is signed with them."""
    with FlakyProxy(moto, fail_first=0) as proxy:
        root = use_s3(clean_env, proxy)
        clean_env.delenv("AWS_ACCESS_KEY_ID")
        clean_env.delenv("AWS_SECRET_ACCESS_KEY")
        clean_env.setenv("DG_S3_CREDENTIALS", "iam")
        clean_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto.url)
        uri = store.join(root, "art")
        store.publish(_write_tree(tmp_path / "src", SMALL), uri)
        assert {k: v for k, v in _tree(store.fetch(uri)).items() if k != MANIFEST} == SMALL
        assert _signing_keys(proxy) == {"test-key"}  # moto's instance-role key, on every signed request
        assert "" not in proxy.auth  # nothing went out anonymous

        clean_env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{free_port_()}")
        with pytest.raises(DGError, match=r"^S3 credentials: none found for http://127\.0\.0\.1:\d+ .*instance role"):
            store.read_manifest(uri)


def free_port_() -> int:
    from servers import free_port

    return free_port()


def test_credentials_from_web_identity(moto, clean_env, tmp_path):
    """IRSA: a projected service-account token (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN) is exchanged at
    STS (moto's) for temporary credentials, picked without any setting beyond those Kubernetes injects."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6a3ViZWZsb3c6ZGcifQ.c2ln")
    with FlakyProxy(moto, fail_first=0, host_for_action={"AssumeRoleWithWebIdentity": "sts.amazonaws.com"}) as proxy:
        root = use_s3(clean_env, proxy)
        clean_env.delenv("AWS_ACCESS_KEY_ID")
        clean_env.delenv("AWS_SECRET_ACCESS_KEY")
        clean_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        clean_env.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/dguard")
        clean_env.setenv("AWS_ENDPOINT_URL_STS", proxy.url)
        assert store.S3Settings.from_env().credentials == "iam"
        uri = store.join(root, "art")
        store.publish(_write_tree(tmp_path / "src", SMALL), uri)
        assert store.read_manifest(uri)["files"].keys() == SMALL.keys()
        keys = _signing_keys(proxy)
        assert len(keys) == 1 and keys.pop().startswith("ASIA"), proxy.auth[:3]  # STS temporary credentials
    clean_env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(DGError, match="AWS_WEB_IDENTITY_TOKEN_FILE=.*does not exist"):
        store.S3Settings.from_env()


# ---------------------------------------------------------------------------------------------- plain folders


def test_plain_folder_is_pinned_and_imported(root, tmp_path):
    """A model folder uploaded as is (no MANIFEST.json, e.g. `aws s3 sync`) is copied with the sha256 of each
    file recorded, and imported as a published artifact pinned to that content."""
    st, key = store.open_store(store.join(root, "releases", "m1"))
    st.put_dir(_write_tree(tmp_path / "hf", SMALL), key)  # the raw upload
    plain = store.join(root, "releases", "m1")
    assert not store.is_published(plain)
    snap = store.snapshot_dir(plain, tmp_path / "snap")
    assert {rel: f["sha256"] for rel, f in snap["files"].items()} == {
        rel: hashlib.sha256(data).hexdigest() for rel, data in SMALL.items()
    }
    m = store.import_dir(plain, store.join(root, "imported", "m1"))
    assert m["metadata"]["source"] == plain and len(m["metadata"]["source_sha256"]) == 64
    got = store.fetch(store.join(root, "imported", "m1"), dest=tmp_path / "out")
    assert {k: v for k, v in _tree(got).items() if k != MANIFEST} == SMALL
    again = store.import_dir(plain, store.join(root, "imported", "m1b"))
    assert again["metadata"]["source_sha256"] == m["metadata"]["source_sha256"]  # same content, same pin


def test_plain_folder_still_uploading_is_left_for_later(clean_env, tmp_path):
    import threading

    src = _write_tree(tmp_path / "hf", {f"shard{i}.bin": os.urandom(1 << 20) for i in range(8)})
    stop = threading.Event()

    def uploader() -> None:  # another process still writing the release
        n = 0
        while not stop.is_set():
            n += 1
            (src / "shard7.bin").write_bytes(os.urandom((1 << 20) + n))

    t = threading.Thread(target=uploader)
    t.start()
    try:
        with pytest.raises(store.ArtifactBusy, match="still being uploaded"):
            store.snapshot_dir(src.as_uri(), tmp_path / "snap")
    finally:
        stop.set()
        t.join()
    assert len(store.snapshot_dir(src.as_uri(), tmp_path / "snap2")["files"]) == 8  # settled: pinned
