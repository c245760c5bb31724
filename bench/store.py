"""Benchmark: dg_core.store vs the raw MinIO SDK on the same moto server, same run.

A model-like directory (~500 MB: a few large safetensors shards + many small files) goes up and down:

- raw:   ``fput_object`` / ``fget_object`` per file, one after another, SDK defaults (what a script would do)
- store: ``store.publish`` (sha256 manifest, parallel + multipart upload) / ``store.fetch`` into an empty
         cache (parallel ranged downloads + sha256 verification of every file)

Runs alternate raw/store ``--reps`` times; each figure is the median MB/s (MB = 1e6 bytes). moto is a Python
server sharing the machine's cores with the client, so absolute figures say little about a real MinIO; the
ratios compare the two client paths under the same conditions. On a small shared machine the server is
CPU-bound and parallel transfers have nothing to gain: expect ratios near 1 that move with the load
(the store also pays one sha256 pass each way, printed separately). Usage::

    .venv/bin/python bench/store.py [--size-mb 500] [--reps 3] [--workers 8]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import moto_server  # noqa: E402  (loopback server helpers shared with the tests)

from dg_core import store  # noqa: E402


def make_model_dir(d: Path, size_mb: int, seed: int = 0) -> int:
    """~size_mb MB: 3 shards holding 90% of the bytes, ~10% in 200 small files (tokenizer, configs, ...)."""
    rng = random.Random(seed)
    total = size_mb * 10**6
    big = int(total * 0.9)
    for i, frac in enumerate((0.45, 0.35, 0.20)):
        (d / f"model-{i + 1:05d}-of-00003.safetensors").write_bytes(os.urandom(int(big * frac)))
    small = total - big
    (d / "extra").mkdir()
    for i in range(200):
        (d / "extra" / f"part-{i:03d}.bin").write_bytes(os.urandom(max(1, int(small / 200 * rng.uniform(0.5, 1.5)))))
    (d / "config.json").write_text('{"model_type": "llama"}')
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def raw_upload(client, bucket: str, prefix: str, src: Path) -> None:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            client.fput_object(bucket, f"{prefix}/{p.relative_to(src).as_posix()}", str(p))


def raw_download(client, bucket: str, prefix: str, dest: Path) -> None:
    for o in client.list_objects(bucket, prefix=prefix + "/", recursive=True):
        client.fget_object(bucket, o.object_name, str(dest / o.object_name[len(prefix) + 1 :]))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8, help="DG_S3_WORKERS for dg_core.store")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="dg-bench-store-"))
    try:
        src = work / "model"
        src.mkdir()
        nbytes = make_model_dir(src, args.size_mb)
        nfiles = sum(1 for p in src.rglob("*") if p.is_file())
        with moto_server() as moto:
            os.environ.update(
                AWS_ENDPOINT_URL=moto.url,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench-secret",
                AWS_REGION="us-east-1",
                DG_S3_CREATE_BUCKET="1",
                DG_S3_WORKERS=str(args.workers),
            )
            bucket = "bench"
            st, _ = store.open_store(f"s3://{bucket}/x")
            st.ensure_bucket()
            client = st.client
            res: dict[str, list[float]] = {k: [] for k in ("raw_up", "raw_down", "store_up", "store_down")}
            hash_s = timed(lambda: store.build_manifest(src))
            for rep in range(args.reps):
                dl = work / f"dl-{rep}"
                res["raw_up"].append(timed(lambda rep=rep: raw_upload(client, bucket, f"raw{rep}", src)))
                res["raw_down"].append(timed(lambda rep=rep, dl=dl: raw_download(client, bucket, f"raw{rep}", dl)))
                shutil.rmtree(dl)
                st.delete_prefix(f"raw{rep}")
                os.environ["DG_CACHE_DIR"] = str(work / f"cache-{rep}")
                uri = f"s3://{bucket}/store{rep}"
                res["store_up"].append(timed(lambda uri=uri: store.publish(src, uri)))
                res["store_down"].append(timed(lambda uri=uri: store.fetch(uri)))
                shutil.rmtree(work / f"cache-{rep}")
                st.delete_prefix(f"store{rep}")
                print(
                    f"rep {rep}: " + ", ".join(f"{k} {nbytes / 1e6 / v[-1]:.0f} MB/s" for k, v in res.items()),
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mbps = {k: nbytes / 1e6 / statistics.median(v) for k, v in res.items()}
    print(
        f"\n{nbytes / 1e6:.0f} MB in {nfiles} files, moto on loopback, {args.reps} reps (median), "
        f"store workers={args.workers}, cpus={os.cpu_count()}"
    )
    print(f"sha256 of the directory alone (manifest build): {nbytes / 1e6 / hash_s:.0f} MB/s")
    print(f"{'':10}{'raw SDK':>12}{'dg store':>12}{'ratio':>8}")
    for d, name in (("up", "upload"), ("down", "download")):
        raw, ours = mbps[f"raw_{d}"], mbps[f"store_{d}"]
        print(f"{name:10}{raw:>9.0f} MB/s{ours:>7.0f} MB/s{ours / raw:>7.2f}x")


if __name__ == "__main__":
    main()
