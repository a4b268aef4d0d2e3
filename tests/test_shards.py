"""Shards round-trip through Python's tarfile, upstream webdataset, DALI's wds2idx and DALI's reader."""

import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from imgprep.shards import (
    Fragment,
    ShardWriter,
    dali_index_text,
    iter_samples,
    read_dali_index,
    sha256_file,
    split_key,
    tar_header,
)

SAMPLES = [
    (f"{i:08d}", {"cls": str(i * 7).encode(), "jpg": bytes([i]) * (300 + 517 * i), "json": b'{"i":%d}' % i})
    for i in range(5)
]


def write(tmp_path, samples=SAMPLES):
    w = ShardWriter(str(tmp_path / "s-000000.tar"))
    for k, c in samples:
        w.write(k, c)
    return w.close()


def test_tar_header_matches_tarfile():
    cases = [("00000001.jpg", 0), ("a.cls", 1), ("x" * 96 + ".jpg", 123456789), ("ü" * 48 + ".jpg", 8**11 - 1)]
    for name, size in cases:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o444, 0, 0, "", ""
        assert tar_header(name, size) == ti.tobuf(tarfile.USTAR_FORMAT, encoding="utf-8")
    for name, size in [("y" * 101, 1), ("a.jpg", 8**11), ("a.jpg", -1)]:
        with pytest.raises(ValueError):
            tar_header(name, size)


def test_shard_is_byte_identical_to_tarfile_and_complete(tmp_path):
    info = write(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for k, c in SAMPLES:
            for e, b in c.items():
                ti = tarfile.TarInfo(f"{k}.{e}")
                ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(b), 0, 0o444, 0, 0, "", ""
                t.addfile(ti, io.BytesIO(b))
    data = (tmp_path / "s-000000.tar").read_bytes()
    assert data == buf.getvalue()
    assert info.bytes == len(data) and info.count == 5 and info.sha256 == sha256_file(str(tmp_path / "s-000000.tar"))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".partial")]
    assert [(k, s) for k, s in iter_samples(str(tmp_path / "s-000000.tar"))] == SAMPLES


def test_index_offsets_point_at_the_data(tmp_path):
    write(tmp_path)
    data = (tmp_path / "s-000000.tar").read_bytes()
    index = read_dali_index(str(tmp_path / "s-000000.idx"))
    assert len(index) == 5
    for (key, comps), entry in zip(SAMPLES, index, strict=True):
        for ext, off, size, name in entry:
            assert name == f"{key}.{ext}" and data[off : off + size] == comps[ext]


@pytest.mark.parametrize("spilled", [False, True])
def test_fragments_give_the_bytes_of_samples_written_one_by_one(tmp_path, spilled):
    """Samples built as fragments elsewhere (sent between processes: pickled; spilled: their bytes
    in a file, only its name pickled) and appended make the shard, index and checksums of writing
    each sample itself."""
    one = write(tmp_path)
    frags = [Fragment() for _ in range(3)]
    for i, (k, c) in enumerate(SAMPLES):
        frags[min(i // 2, 2)].add(k, c)
    frags.insert(1, Fragment())  # an empty piece changes nothing
    if spilled:
        for i, f in enumerate(frags):
            f.spill(str(tmp_path / f"piece-{i}"))
        assert all(len(pickle.dumps(f)) < 2000 for f in frags)  # the bytes stay in the file
    w = ShardWriter(str(tmp_path / "f-000000.tar"))
    for f in frags:
        w.write_fragment(pickle.loads(pickle.dumps(f)))
    two = w.close()
    assert (tmp_path / "f-000000.tar").read_bytes() == (tmp_path / "s-000000.tar").read_bytes()
    assert (tmp_path / "f-000000.idx").read_bytes() == (tmp_path / "s-000000.idx").read_bytes()
    assert (two.count, two.bytes, two.sha256, two.sample_crc32) == (one.count, one.bytes, one.sha256, one.sample_crc32)


@pytest.mark.parametrize("join, chunk", [(1, 1), (700, 300), (1 << 20, 1 << 20)])
def test_writes_joined_or_not_give_the_same_shard(tmp_path, monkeypatch, join, chunk):
    """The writer joins small writes (`_JOIN` bytes) and reads spilled fragments back in `_CHUNK`
    pieces of one reused buffer: samples, in-memory and spilled fragments mixed, at any of those
    sizes, make the bytes and checksums of writing each sample itself."""
    from imgprep import shards

    one = write(tmp_path)
    monkeypatch.setattr(shards, "_JOIN", join)
    monkeypatch.setattr(shards, "_CHUNK", chunk)
    w = ShardWriter(str(tmp_path / "m-000000.tar"))
    for i, (k, c) in enumerate(SAMPLES):
        if i % 3 == 0:
            w.write(k, c)
            continue
        frag = Fragment.of(k, c)
        if i % 3 == 2:
            frag.spill(str(tmp_path / f"piece-{i}"))
        w.write_fragment(frag)
    two = w.close()
    data = (tmp_path / "m-000000.tar").read_bytes()
    assert data == (tmp_path / "s-000000.tar").read_bytes() and hashlib.sha256(data).hexdigest() == two.sha256
    assert (two.count, two.bytes, two.sample_crc32) == (one.count, one.bytes, one.sample_crc32)


def test_a_shard_is_synced_in_the_background_as_it_grows_and_its_errors_are_raised(tmp_path, monkeypatch):
    """Every _SYNC_EVERY bytes a thread syncs what was written; the shard is the same, no thread
    outlives close() (the pool forks only a process with one thread), and a failed sync is the
    writer's error (at its next sync or at close), the partial file then removed by abort()."""
    import errno
    import threading

    from imgprep import shards

    one = write(tmp_path)
    monkeypatch.setattr(shards, "_SYNC_EVERY", 1500)
    monkeypatch.setattr(shards, "_JOIN", 500)  # written as it comes, not all at close
    real_sync, real_thread = shards.os.fdatasync, threading.Thread
    synced = []

    def syncing() -> int:
        return sum(t.name == "imgprep-shard-sync" for t in threading.enumerate())

    class Now:  # a thread that runs at start(): the sizes synced are those when each sync began
        def __init__(self, target, args, daemon, name):
            self.run = lambda: target(*args)

        def start(self):
            self.run()

        def is_alive(self):
            return False

        def join(self):
            pass

    monkeypatch.setattr(shards.os, "fdatasync", lambda fd: synced.append(os.fstat(fd).st_size) or real_sync(fd))
    for thread in (Now, real_thread):
        monkeypatch.setattr(shards.threading, "Thread", thread)
        synced.clear()
        w = ShardWriter(str(tmp_path / "y-000000.tar"))
        for k, c in SAMPLES:
            w.write(k, c)
        two = w.close()
        assert (tmp_path / "y-000000.tar").read_bytes() == (tmp_path / "s-000000.tar").read_bytes()
        assert (two.sha256, two.sample_crc32) == (one.sha256, one.sample_crc32) and syncing() == 0
        if thread is Now:
            assert len(synced) >= 3 and synced == sorted(synced) and synced[0] < two.bytes

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shards.os, "fdatasync", full)
    w = ShardWriter(str(tmp_path / "z-000000.tar"))
    with pytest.raises(OSError, match="No space left"):  # at the next write that syncs, or at close
        for k, c in SAMPLES:
            w.write(k, c)
        w.close()
    w.abort()
    assert not any(p.name.startswith((".z-", "z-")) for p in tmp_path.iterdir())
    assert syncing() == 0


@pytest.mark.skipif(shutil.which("tar") is None, reason="wds2idx needs GNU tar")
def test_index_equals_dalis_wds2idx(tmp_path):
    wds2idx = shutil.which("wds2idx") or os.path.join(os.path.dirname(sys.executable), "wds2idx")
    if not os.path.exists(wds2idx):
        pytest.skip("DALI's wds2idx not installed")
    write(tmp_path)
    subprocess.run(
        [wds2idx, str(tmp_path / "s-000000.tar"), str(tmp_path / "ref.idx")], check=True, stdout=subprocess.DEVNULL
    )
    assert (tmp_path / "ref.idx").read_text() == (tmp_path / "s-000000.idx").read_text()


def test_split_key():
    assert split_key("dir/00000001.jpg") == ("dir/00000001", "jpg")
    assert split_key("a.b.c") == ("a", "b.c")


def test_bad_key_rejected(tmp_path):
    w = ShardWriter(str(tmp_path / "x.tar"))
    with pytest.raises(ValueError):
        w.write("a.b", {"cls": b"1"})
    w.abort()
    assert not os.listdir(tmp_path)


def test_index_text_format():
    assert dali_index_text([[("cls", 512, 1, "k.cls")]]) == "v1.2 1\ncls 512 1 k.cls\n"


def test_prepared_shards_read_with_upstream_webdataset(prepared):
    import json

    import webdataset as wds

    m = json.load(open(os.path.join(prepared, "manifest.json")))
    urls = [os.path.join(prepared, s["path"]) for s in m["splits"]["train"]["shards"]]
    n = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        n += 1
        assert sample["jpg"].shape == (64, 64, 3)
        assert sample["cls"] == sample["json"]["label"]
        assert m["classes"][sample["cls"]]["name"] == sample["json"]["class"]
    assert n == m["splits"]["train"]["count"]


def test_prepared_shards_read_with_dali_cpu(prepared):
    import json

    from nvidia.dali import fn, pipeline_def, types

    m = json.load(open(os.path.join(prepared, "manifest.json")))
    tars = [os.path.join(prepared, s["path"]) for s in m["splits"]["train"]["shards"]]
    total = m["splits"]["train"]["count"]

    @pipeline_def(batch_size=total, num_threads=1, device_id=None)
    def pipe():
        jpg, cls, meta = fn.readers.webdataset(
            paths=tars,
            index_paths=[t[:-4] + ".idx" for t in tars],
            ext=["jpg", "cls", "json"],
            missing_component_behavior="error",
            random_shuffle=False,
            name="r",
        )
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), cls, meta

    p = pipe()
    p.build()
    assert p.epoch_size("r") == total
    imgs, cls, meta = p.run()
    for i in range(total):
        assert np.array(imgs.at(i)).shape == (64, 64, 3)
        label = int(bytes(np.array(cls.at(i))).decode())
        assert label == json.loads(bytes(np.array(meta.at(i))))["label"]


def test_a_spilled_fragment_replaces_what_lies_at_its_path_and_its_file_is_checked(tmp_path):
    """A file or link left at the piece's path (a worker that died) is replaced, the link's target
    untouched; a spilled file whose size changed before it was appended is an error, not a shard."""
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "piece").symlink_to(target)
    frag = Fragment()
    frag.add(*SAMPLES[0])
    frag.spill(str(tmp_path / "piece"))
    assert target.read_bytes() == b"keep" and not (tmp_path / "piece").is_symlink()
    with open(tmp_path / "piece", "ab") as f:
        f.write(b"x")
    w = ShardWriter(str(tmp_path / "g-000000.tar"))
    with pytest.raises(OSError, match="not the .* bytes its worker wrote"):
        w.write_fragment(frag)
    w.abort()
