"""Datasets at a URL, against real servers the tests start: SeaweedFS (`weed mini`) for S3, an HTTP
server that honours Range requests, and a fault-injecting proxy in front of either."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from servers import FaultProxy, range_http_server

from helpers import cli_argv
from imgprep.errors import ImgprepError
from imgprep.loaders import make_loader
from imgprep.remote import RemoteError, Store

BUCKET = "imgprep-test"


@pytest.fixture(autouse=True)
def _aws(aws_env):
    """Every test here talks to the test server (where it uses one) with its credentials only."""


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    """28 train samples in 7 shards of 4 (and 7 val in 2), stored at 128 px (big enough to train on)."""
    from imgprep.prepare import PrepareConfig, prepare
    from imgprep.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("seven")
    src, out = str(root / "src"), str(root / "out")
    synthesize(SynthConfig(src, classes=7, per_class=4, val_per_class=1, seed=2, min_side=130, max_side=200))
    prepare(PrepareConfig(src, out, size=128, shard_size=4, workers=1), progress=False, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def bucket(seven, s3):
    """`seven` uploaded to s3://imgprep-test/seven; its URL."""
    from imgprep.upload import UploadConfig, upload

    sw = s3
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update({**env, **sw.env()})
    try:
        upload(UploadConfig(out=seven, url=f"s3://{BUCKET}/seven"), log=lambda s: None)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return f"s3://{BUCKET}/seven"


def epochs(loader, n=2):
    out = []
    for _ in range(n):
        out.append([(x.numpy().copy(), y.numpy().copy()) for x, y in loader])
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b, strict=True):
        assert len(ea) == len(eb)
        for (xa, ya), (xb, yb) in zip(ea, eb, strict=True):
            np.testing.assert_array_equal(ya, yb)
            np.testing.assert_array_equal(xa, xb)


def test_client_puts_gets_ranges_heads_lists_and_names_a_404(s3):
    st = Store(f"s3://{BUCKET}/client")
    st.put("a/b.bin", bytes(range(256)) * 40)
    assert st.head("a/b.bin").size == 10240 and st.head("a/b.bin").etag
    assert st.get("a/b.bin") == bytes(range(256)) * 40
    assert st.get("a/b.bin", 10, 20) == bytes(range(10, 20))
    assert ("a/b.bin", 10240) in st.list("a/")
    with pytest.raises(RemoteError, match=r"client/nope: GET failed: HTTP 404 \(NoSuchKey.*check the URL") as e:
        st.get("nope")
    assert "\n" not in str(e.value)


def test_a_large_file_is_put_in_parts_checked_by_its_multipart_etag(s3, tmp_path, monkeypatch):
    """Parts of MULTIPART_PART bytes (5 MiB, S3's smallest), the last one shorter: the object equals
    the file, its ETag is the one `file_etag` predicts, and a file within one part is a plain put."""
    from imgprep import remote

    monkeypatch.setattr(remote, "MULTIPART_PART", 5 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).integers(0, 256, (11 << 20) + 123, dtype=np.uint8).tobytes())
    st = Store("s3://imgprep-test/multipart")
    etag = st.put_file_checked("big.bin", str(big))
    assert etag == remote.file_etag(str(big)) and etag.endswith("-3")
    assert st.get("big.bin") == big.read_bytes() and st.head("big.bin").etag.strip('"') == etag
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 1000)
    assert st.put_file_checked("small.bin", str(small)) == remote.file_etag(str(small)) and "-" not in remote.file_etag(
        str(small)
    )


def test_wrong_or_missing_credentials_are_one_line(s3, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(RemoteError, match=r"HTTP 403.*check the AWS credentials"):
        Store(f"s3://{BUCKET}/x").get("y")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ImgprepError, match="AWS_SECRET_ACCESS_KEY is not set"):
        Store(f"s3://{BUCKET}/x")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ImgprepError, match="no AWS credentials found.*AWS_NO_SIGN_REQUEST"):
        Store(f"s3://{BUCKET}/x")


def test_credentials_and_endpoint_from_the_profile_files(tmp_path, s3, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(k)
    env = s3.env()
    key, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    (tmp_path / "credentials").write_text(f"[ci]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    (tmp_path / "config").write_text(f"[profile ci]\nregion = us-east-1\nendpoint_url = {s3.endpoint}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_PROFILE", "ci")
    st = Store(f"s3://{BUCKET}/profile")
    st.put("k", b"v")
    assert st.get("k") == b"v"


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_bucket_gives_the_batches_of_local_disk_7_shards_over_3_ranks(seven, bucket, tmp_path, backend):
    """Same seed: every rank's batches from the bucket equal its batches from disk, over two epochs
    (train mode: shuffled shards, random windows, lighting), and all ranks have equally many."""
    lengths = set()
    seen = []
    for rank in range(3):
        kw = dict(backend=backend, rank=rank, world_size=3, workers=1, seed=5)
        local = make_loader(seven, "train", 6, "train", **kw)
        remote = make_loader(bucket, "train", 6, "train", cache_dir=str(tmp_path / "cache"), **kw)
        a, b = epochs(local), epochs(remote)
        assert_same(a, b)
        lengths.add(len(remote))
        seen += [int(v) for _, y in b[0] for v in y if v >= 0]
    assert len(lengths) == 1
    assert len(seen) == 28  # every sample exactly once in the epoch, over the ranks


def test_https_dataset_equals_local(seven, tmp_path):
    with range_http_server(seven) as url:
        for mode in ("train", "eval"):
            kw = dict(backend="dali", workers=1, seed=1)
            a = epochs(make_loader(seven, "train", 8, mode, **kw), 1)
            b = epochs(make_loader(url, "train", 8, mode, cache_dir=str(tmp_path / "c"), **kw), 1)
            assert_same(a, b)


@pytest.fixture
def proxied(s3, monkeypatch):
    """A FaultProxy in front of the S3 server; AWS_ENDPOINT_URL points at it."""
    host, port = s3.endpoint.rsplit(":", 1)
    proxy = FaultProxy((host.split("//")[1], int(port)))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    yield proxy
    proxy.close()


def test_503s_resets_stalls_and_slow_bodies_are_retried_and_the_batches_hold(seven, bucket, proxied, tmp_path):
    local = epochs(make_loader(seven, "train", 6, "train", backend="dali", workers=1), 1)
    proxied.fail(3)  # the manifest's first three tries
    lo = make_loader(bucket, "train", 6, "train", backend="dali", workers=1, cache_dir=str(tmp_path / "c"),
                     remote_timeout=0.5, cache_ahead=0)  # fmt: skip
    assert proxied.pending() == 0 and proxied.requests == 4 + 2  # the manifest (4 tries), the statistics
    proxied.reset_after(3000, 2, match=b".tar ")  # two shards' bodies cut (reset) after 3000 bytes
    proxied.stall(1.5, 1, match=b".tar ")  # longer than the timeout: abandoned and tried again
    proxied.fail(2, 500)
    t = time.monotonic()
    assert_same(local, epochs(lo, 1))  # every sample once, bytes checked on arrival
    assert time.monotonic() - t < 60
    assert proxied.pending() == 0  # every fault was met (and the epoch still came out right)
    assert proxied.requests > 6 + 7 * 2  # 7 shards x (index, shard), and the tries the faults cost


def test_a_server_that_keeps_failing_is_one_line_naming_the_url(bucket, proxied, tmp_path):
    proxied.fail(1000)
    t = time.monotonic()
    with pytest.raises(ImgprepError, match=r"seven/manifest.json: GET failed after 3 tries: HTTP 503") as e:
        make_loader(bucket, "train", 6, "train", backend="dali", cache_dir=str(tmp_path / "c"), remote_attempts=3)
    assert "\n" not in str(e.value) and time.monotonic() - t < 30
    proxied.clear()
    lo = make_loader(bucket, "train", 6, "train", backend="dali", workers=1, cache_dir=str(tmp_path / "c"),
                     remote_attempts=2, remote_timeout=0.3)  # fmt: skip
    proxied.stall(5, 1000)  # every response stalls: each try abandoned after 0.3 s
    t = time.monotonic()
    with pytest.raises(
        ImgprepError, match=r"seven/train/train-\d+\.(tar|idx): (HEAD|GET) failed after 2 tries: no answer"
    ):
        next(iter(lo))
    assert time.monotonic() - t < 30  # never hangs


def test_cache_stays_within_its_limit_and_a_full_cache_makes_later_epochs_local(seven, bucket, proxied, tmp_path):
    shard = max(os.path.getsize(os.path.join(seven, "train", f)) for f in os.listdir(os.path.join(seven, "train")))
    limit = 2.5 * shard  # bytes: two and a half shards (with their index files)
    lo = make_loader(bucket, "train", 4, "train", backend="dali", workers=1, cache_dir=str(tmp_path / "small"),
                     cache_limit=limit / 1e9, cache_ahead=3)  # fmt: skip
    local = epochs(make_loader(seven, "train", 4, "train", backend="dali", workers=1), 3)
    remote = []
    for _ in range(3):
        remote += epochs(lo, 1)
        assert lo.cache.used() <= limit + shard + 4096
    assert_same(local, remote)
    assert lo.cache.fetched > 7  # evicted shards came back in later epochs
    big = make_loader(bucket, "train", 4, "train", backend="dali", workers=1, cache_dir=str(tmp_path / "big"))
    epochs(big, 1)
    assert big.cache.fetched == 7
    before = proxied.requests
    epochs(big, 2)
    assert big.cache.fetched == 7 and proxied.requests - before == 2 * 7  # one HEAD per shard and epoch


def _flip_a_byte_in_the_bucket(seven, bucket) -> tuple[str, str]:
    """Flip one byte inside the first JPEG of train shard 0, in the bucket: (shard key, sample key)."""
    from imgprep.shards import read_dali_index

    rel = "train/train-000000.tar"
    data = bytearray(open(os.path.join(seven, rel), "rb").read())
    first = read_dali_index(os.path.join(seven, "train", "train-000000.idx"))[0]
    jpg = next(e for e in first if e[0] == "jpg")
    data[jpg[1] + jpg[2] // 2] ^= 0xFF
    Store(bucket).put(rel, bytes(data))
    return rel, jpg[3].split(".")[0]


def test_a_byte_flipped_in_the_bucket_is_caught_refetched_once_then_named_or_skipped(seven, s3, tmp_path):
    from imgprep.upload import UploadConfig, upload

    url = f"s3://{BUCKET}/flipped"
    upload(UploadConfig(out=seven, url=url), log=lambda s: None)
    rel, key = _flip_a_byte_in_the_bucket(seven, url)
    lo = make_loader(url, "train", 28, "eval", backend="dali", workers=1, cache_dir=str(tmp_path / "c"))
    with pytest.raises(ImgprepError, match=f"{url}/{rel}: sample {key} changed since"):
        list(lo)
    assert lo.cache.refetched == 1  # fetched once more before giving up
    lo = make_loader(url, "train", 28, "eval", backend="dali", workers=1, cache_dir=str(tmp_path / "c"),
                     on_corrupt="skip")  # fmt: skip
    (x, y), = list(lo)  # fmt: skip
    assert (y >= 0).sum() == 27 and lo.corrupt_skipped == 1


def test_a_stale_or_half_written_entry_is_refetched_and_leftovers_of_dead_processes_go(bucket, tmp_path):
    cache_dir = str(tmp_path / "c")
    lo = make_loader(bucket, "train", 28, "eval", backend="dali", workers=1, cache_dir=cache_dir)
    first = epochs(lo, 1)
    c = lo.cache
    meta = c._file(0, "json")
    m = json.load(open(meta))
    json.dump({**m, "etag": '"something-else"'}, open(meta, "w"))  # the object changed in the bucket
    os.unlink(c._file(1, "json"))  # a fetch killed before its entry was committed
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = os.path.join(cache_dir, f"{c.key(2)}.tmp-{dead.stdout.strip()}-1.tar")
    open(leftover, "wb").write(b"half")
    lo2 = make_loader(bucket, "train", 28, "eval", backend="dali", workers=1, cache_dir=cache_dir)
    assert_same(first, epochs(lo2, 1))
    assert lo2.cache.fetched == 2 and not os.path.exists(leftover)


def test_a_changed_shard_refetched_into_a_full_cache_evicts_nothing(bucket, tmp_path):
    """The cache holds the whole split (its default limit) and one entry is stale: fetching it anew
    must not count the stale copy against the limit (it is replaced), so no good shard is evicted
    and fetched again later in the epoch."""
    cache_dir = str(tmp_path / "c")
    lo = make_loader(bucket, "train", 28, "eval", backend="dali", workers=1, cache_dir=cache_dir)
    first = epochs(lo, 1)
    meta = lo.cache._file(0, "json")
    json.dump({**json.load(open(meta)), "etag": '"something-else"'}, open(meta, "w"))
    lo2 = make_loader(bucket, "train", 28, "eval", backend="dali", workers=1, cache_dir=cache_dir)
    assert_same(first, epochs(lo2, 1))
    assert lo2.cache.fetched == 1
    assert len([f for f in os.listdir(cache_dir) if f.endswith(".json")]) == 7


def test_torch_workers_share_the_cache_and_give_the_local_batches(seven, bucket, tmp_path):
    kw = dict(backend="torch", workers=2, seed=4)
    a = epochs(make_loader(seven, "train", 6, "train", **kw), 1)
    b = epochs(make_loader(bucket, "train", 6, "train", cache_dir=str(tmp_path / "c"), **kw), 1)
    assert_same(a, b)
    assert len([f for f in os.listdir(tmp_path / "c") if f.endswith(".json")]) == 7


def test_train_from_the_bucket_resumes_exactly(seven, bucket, tmp_path):
    import torch

    from imgprep.trainer.config import TrainConfig
    from imgprep.trainer.train import train

    kw = dict(epochs=2, batch_size=7, width_mult=0.125, init="kaiming", workers=1, seed=3)
    cache = str(tmp_path / "cache")
    train(TrainConfig(seven, str(tmp_path / "local"), **kw), progress=False, log=lambda s: None)
    train(TrainConfig(bucket, str(tmp_path / "remote"), **{**kw, "epochs": 1}, cache_dir=cache),
          progress=False, log=lambda s: None)  # fmt: skip
    train(TrainConfig(bucket, str(tmp_path / "remote"), **kw, cache_dir=cache), resume=True,
          progress=False, log=lambda s: None)  # fmt: skip
    a = torch.load(tmp_path / "local" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "remote" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_cli_load_and_verify_read_a_bucket(bucket, tmp_path):
    argv = cli_argv()
    r = subprocess.run([*argv, "load", bucket, "--steps", "2", "--batch-size", "4", "--json", "--workers", "1",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batches"] == 2
    r = subprocess.run([*argv, "verify", bucket, "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok: 9 shards, 35 samples match the manifest")
    r = subprocess.run([*argv, "load", f"s3://{BUCKET}/nothing-here"], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "nothing-here/manifest.json: not found; not a prepared dataset" in r.stderr


def test_what_a_hostile_store_hands_over_is_bounded(seven, bucket, tmp_path, monkeypatch):
    """Objects larger than such a file can be are refused unread (one line), and so is a shard that
    could never fit the cache; a manifest path leading outside the dataset's prefix is refused."""
    from imgprep import dataset

    with monkeypatch.context() as mp:
        mp.setattr(dataset, "MAX_MANIFEST_BYTES", 100)
        with pytest.raises(ImgprepError, match=r"manifest.json: [\d,]+ bytes, more than the 100 such a file can"):
            make_loader(bucket, "train", 4)
    with pytest.raises(ImgprepError, match=r"--cache-limit 1e-09: less than two of s3://.*/seven's train shards"):
        make_loader(bucket, "train", 4, backend="dali", cache_dir=str(tmp_path / "c"), cache_limit=1e-9)
    m = json.load(open(os.path.join(seven, "manifest.json")))
    m["splits"]["train"]["shards"][0]["path"] = "../other/train-000000.tar"
    Store(f"s3://{BUCKET}/crafted").put("manifest.json", json.dumps(m).encode())
    with pytest.raises(ImgprepError, match=r"'../other/train-000000.tar' is not a relative path inside the dataset"):
        make_loader(f"s3://{BUCKET}/crafted", "train", 4)


def test_a_rank_never_waits_forever_on_another_processes_download(bucket, tmp_path):
    """Another process holds a shard's fetch lock and never finishes: the wait has a deadline and
    ends in one line naming the shard."""
    cache_dir = str(tmp_path / "c")
    lo = make_loader(bucket, "train", 28, "eval", backend="dali", workers=1, cache_dir=cache_dir,
                     remote_timeout=0.2, remote_attempts=1)  # fmt: skip
    lock = lo.cache._file(0, "lock")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import fcntl,time; f=open({lock!r},'w'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        t = time.monotonic()
        with pytest.raises(ImgprepError, match=r"train-000000.tar: another process has been fetching it for"):
            list(lo)
        assert time.monotonic() - t < 20
    finally:
        holder.kill()


def test_eval_and_stats_read_a_bucket(seven, bucket, tmp_path):
    from imgprep.trainer.config import EvalConfig, TrainConfig
    from imgprep.trainer.runtime import evaluate_run
    from imgprep.trainer.train import train
    from imgprep.verify import recompute_stats

    run = str(tmp_path / "run")
    train(TrainConfig(seven, run, epochs=1, batch_size=7, width_mult=0.125, init="kaiming", workers=1),
          progress=False, log=lambda s: None)  # fmt: skip
    local = evaluate_run(EvalConfig(run, seven, workers=1))
    remote = evaluate_run(EvalConfig(run, bucket, workers=1, cache_dir=str(tmp_path / "c")))
    assert remote == local
    a, b = recompute_stats(seven), recompute_stats(bucket, cache_dir=str(tmp_path / "c"))
    assert a == {**b}


def test_bench_load_reads_a_bucket_with_the_cache_settings(bucket, tmp_path):
    cache = tmp_path / "c"
    argv = [*cli_argv("bench", "load", bucket), "--loaders", "dali", "--batch-sizes", "4", "--workers", "1",
            "--steps", "1", "--repeats", "1", "--cache-dir", str(cache)]  # fmt: skip
    r = subprocess.run(argv, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(f.endswith(".json") for f in os.listdir(cache))  # its shards came through that cache
    r = subprocess.run([*cli_argv("bench", "load", bucket), "--loaders", "baseline"], capture_output=True, text=True)
    assert r.returncode == 1 and "the baseline loader reads local files only" in r.stderr
