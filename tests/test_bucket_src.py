"""`prepare s3://... OUT`: SRC in a bucket, in every layout read locally (the real S3 server of the
test suite): the shards of a local run over the same files, byte for byte."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from helpers import bucket_tree, tree
from imagenet_fixtures import build_ilsvrc, build_kaggle, images, val_set
from imgprep.errors import ImgprepError
from imgprep.prepare import PrepareConfig, prepare
from imgprep.remote import Store

QUIET = dict(progress=False, log=lambda s: None)
SETTINGS = dict(size=48, shard_size=3, seed=5)


@pytest.fixture(autouse=True)
def _aws(aws_env):
    pass


def _upload_tree(folder: str, url: str) -> None:
    st = Store(url)
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            st.put(os.path.relpath(path, folder), open(path, "rb").read())


def test_src_in_a_bucket_gives_the_shards_of_the_same_folders_on_disk(synth_src, s3, tmp_path):
    """The class folders uploaded as they are (a hidden file added on both sides): prepare from the
    bucket writes the shards, statistics and rejects of a local run over the folders; the manifest
    differs in config.src only. Bucket to bucket works too."""
    src = str(tmp_path / "src")
    shutil.copytree(synth_src, src)
    open(os.path.join(src, "train", ".DS_Store"), "wb").write(b"junk")
    here = str(tmp_path / "here")
    prepare(PrepareConfig(src, here, workers=2, **SETTINGS), **QUIET)
    url = "s3://imgprep-test/raw"
    _upload_tree(src, url)
    out = str(tmp_path / "from-bucket")
    prepare(PrepareConfig(url, out, workers=2, **SETTINGS), **QUIET)
    a, b = tree(here), tree(out)
    ma, mb = json.loads(a.pop("manifest.json")), json.loads(b.pop("manifest.json"))
    assert a == b
    assert mb["config"].pop("src") == url and ma["config"].pop("src") == os.path.abspath(src)
    assert ma == mb and mb["splits"]["train"]["skipped"] == 1
    both = "s3://imgprep-test/bucket-to-bucket"
    prepare(PrepareConfig(url, both, workers=2, **SETTINGS), **QUIET)
    assert {k: v for k, v in bucket_tree(both).items() if k != "manifest.json"} == b


def test_src_bucket_errors_are_one_line(s3, tmp_path):
    with pytest.raises(ImgprepError, match="nothing under this prefix"):
        prepare(PrepareConfig("s3://imgprep-test/empty-prefix", str(tmp_path / "o"), **SETTINGS), **QUIET)
    Store("s3://imgprep-test/folders-only").put("train/a/x.jpg", b"x")
    with pytest.raises(ImgprepError, match="folders-only: found neither ILSVRC2012_img_train.tar nor"):
        prepare(
            PrepareConfig("s3://imgprep-test/folders-only", str(tmp_path / "o"), layout="ilsvrc", **SETTINGS), **QUIET
        )
    with pytest.raises(ImgprepError, match="--layout 'tars': one of auto"):
        prepare(
            PrepareConfig("s3://imgprep-test/folders-only", str(tmp_path / "o"), layout="tars", **SETTINGS), **QUIET
        )


def _same_as_local(src: str, url: str, tmp_path, **kw) -> dict:
    """Prepare `src` locally and from its copy at `url`: equal objects, manifests equal but for
    config.src; the bucket run's manifest."""
    here, there = str(tmp_path / "here"), str(tmp_path / "there")
    prepare(PrepareConfig(src, here, workers=2, **SETTINGS, **kw), **QUIET)
    _upload_tree(src, url)
    prepare(PrepareConfig(url, there, workers=2, **SETTINGS, **kw), **QUIET)
    a, b = tree(here), tree(there)
    ma, mb = json.loads(a.pop("manifest.json")), json.loads(b.pop("manifest.json"))
    assert a == b and len([k for k in a if k.endswith(".tar")]) >= 4
    assert mb["config"].pop("src") == url and ma["config"].pop("src") == os.path.abspath(src)
    assert ma == mb
    return mb


def test_ilsvrc_archives_in_a_bucket_are_scanned_by_range_reads_and_give_the_local_shards(tmp_path, s3, monkeypatch):
    """The train tar of per-class tars, the val tar and the devkit uploaded as they are: the headers
    are read in ranges (512-byte reads: a request per member, the most there can be), nothing whole."""
    from imgprep import bucket_src

    src = str(tmp_path / "ilsvrc")
    build_ilsvrc(src, images(5), val_set(7))
    monkeypatch.setattr(bucket_src, "SCAN_CHUNK", 512)
    spans, get = [], Store.get

    def seen(self, key, start=None, stop=None, **kw):
        spans.append((key, start, stop))
        return get(self, key, start, stop, **kw)

    monkeypatch.setattr(Store, "get", seen)  # this process: the scan (the workers read images)
    m = _same_as_local(src, "s3://imgprep-test/ilsvrc-raw", tmp_path)
    assert m["source_layout"] == "ilsvrc" and m["splits"]["train"]["count"] == 20 and m["splits"]["val"]["count"] == 7
    tars = [(k, a, b) for k, a, b in spans if k.endswith("_img_train.tar") or k.endswith("_img_val.tar")]
    assert tars and all(a is not None and b - a <= 1024 for _, a, b in tars)  # ranges of headers, nothing whole
    assert len(tars) >= 20 + 7 + 4  # a request per member: the headers chained one to the next


def test_kaggle_layout_in_a_bucket_gives_the_local_shards(tmp_path, s3):
    src = str(tmp_path / "kaggle")
    build_kaggle(src, images(4), val_set(6))
    m = _same_as_local(src, "s3://imgprep-test/kaggle-raw", tmp_path)
    assert m["source_layout"] == "kaggle" and m["splits"]["val"]["count"] == 6


def test_an_archive_replaced_in_the_bucket_mid_run_is_one_line_not_a_mixture(tmp_path, s3, monkeypatch):
    """Every image's range read carries the ETag the scan saw (If-Match): a train tar replaced
    after the scan stops the run with a line naming it; no manifest is written."""
    from imgprep import sources

    src = str(tmp_path / "ilsvrc")
    build_ilsvrc(src, images(3), val_set(4))
    url = "s3://imgprep-test/ilsvrc-replaced"
    _upload_tree(src, url)
    discover = sources.discover_ilsvrc

    def then_replaced(place, val_labels=None):
        index = discover(place, val_labels)
        tar = os.path.join(src, sources.TRAIN_TAR)
        Store(url).put(sources.TRAIN_TAR, open(tar, "rb").read() + bytes(1024))  # a new upload, a new ETag
        return index

    monkeypatch.setattr(sources, "discover_ilsvrc", then_replaced)
    out = tmp_path / "o"
    with pytest.raises(ImgprepError, match="ILSVRC2012_img_train.tar: replaced or removed in the bucket since"):
        prepare(PrepareConfig(url, str(out), workers=1, **SETTINGS), **QUIET)
    assert not (out / "manifest.json").exists()


class _Memory:
    """An object held in memory, read the way RangeFile reads a store (range GETs), counted."""

    def __init__(self, data: bytes):
        self.data, self.requests = data, 0

    def get(self, key, start, stop, if_match=""):
        self.requests += 1
        return self.data[start:stop]

    def url_of(self, key):
        return key


def test_range_file_reads_what_the_file_holds_and_refuses_a_giant_read():
    import io
    import random

    from imgprep.bucket_src import SCAN_READ_MAX, RangeFile

    data = random.Random(1).randbytes(20000)
    f, ref = RangeFile(_Memory(data), "k", 100, 9000, "", chunk=700), io.BytesIO(data[100:9100])
    rng = random.Random(0)
    for _ in range(300):
        pos, n = rng.randrange(0, 9300), rng.randrange(-1, 2500)
        f.seek(pos)
        ref.seek(pos)
        assert f.read(n) == ref.read(n) and f.tell() == ref.tell()
    big = RangeFile(_Memory(b""), "k", 0, SCAN_READ_MAX * 2, "")
    with pytest.raises(OSError, match="not an ImageNet archive"):
        big.read(SCAN_READ_MAX + 1)


def test_a_tar_scanned_through_range_reads_lists_what_tarfile_lists_one_request_per_member(tmp_path):
    """512-byte reads (the fewest bytes): one request per member, not two (tarfile reads each
    member's last byte before the next header: both come in one read)."""
    import io
    import tarfile

    from imgprep.bucket_src import RangeFile
    from imgprep.sources import scan_tar

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for i in range(40):
            ti = tarfile.TarInfo(f"m{i}.JPEG")
            ti.size = 1 + i * 97
            t.addfile(ti, io.BytesIO(bytes(ti.size)))
    mem = _Memory(buf.getvalue())
    path = tmp_path / "t.tar"
    path.write_bytes(buf.getvalue())
    assert scan_tar("t.tar", RangeFile(mem, "k", 0, len(mem.data), "", chunk=512)) == scan_tar(str(path))
    assert 40 <= mem.requests <= 42


def test_a_scan_is_kept_so_a_rerun_does_not_read_the_archive_again_until_it_changes(tmp_path, s3, monkeypatch):
    from imgprep.bucket_src import discover_bucket

    src = str(tmp_path / "ilsvrc")
    build_ilsvrc(src, images(3), val_set(4))
    url = "s3://imgprep-test/ilsvrc-scan-kept"
    _upload_tree(src, url)
    spans, get = [], Store.get

    def seen(self, key, start=None, stop=None, **kw):
        spans.append(key)
        return get(self, key, start, stop, **kw)

    monkeypatch.setattr(Store, "get", seen)
    first = discover_bucket(url, "train", "auto", None)
    assert spans.count("ILSVRC2012_img_train.tar") > 0
    spans.clear()
    again = discover_bucket(url, "train", "auto", None)
    assert again.splits == first.splits and again.listing_digest() == first.listing_digest()
    assert "ILSVRC2012_img_train.tar" not in spans and "ILSVRC2012_img_val.tar" not in spans
    tar = os.path.join(src, "ILSVRC2012_img_train.tar")
    Store(url).put("ILSVRC2012_img_train.tar", open(tar, "rb").read() + bytes(10240))  # a new upload
    spans.clear()
    third = discover_bucket(url, "train", "auto", None)
    assert spans.count("ILSVRC2012_img_train.tar") > 0 and third.splits == first.splits
    assert third.listing_digest() != first.listing_digest()  # a resume starts over: another archive


def test_a_kept_scan_in_a_folder_others_can_write_to_is_not_trusted(tmp_path, s3, monkeypatch):
    """With imgprep's folder group/world-writable (another user could plant a scan there, and its
    offsets would pick the bytes read as images), the kept scan is neither read nor written."""
    import glob
    import gzip
    import json

    from imgprep.bucket_src import discover_bucket

    src = str(tmp_path / "ilsvrc")
    build_ilsvrc(src, images(2), val_set(3))
    url = "s3://imgprep-test/ilsvrc-scan-planted"
    _upload_tree(src, url)
    first = discover_bucket(url, "train", "auto", None)
    home = tmp_path / "xdg-cache" / "imgprep"  # the aws_env fixture's XDG_CACHE_HOME
    kept = glob.glob(str(home / "scans" / "*.json.gz"))
    assert len(kept) == 2  # the train tar's and the val tar's
    for path in kept:
        with gzip.open(path, "rt") as f:
            saved = json.load(f)
        planted = {t: [[m, o + 1, n] for m, o, n in ms] for t, ms in saved["tars"].items()}
        with gzip.open(path, "wt") as f:
            json.dump({"tars": planted, "skipped": saved["skipped"]}, f)
    os.chmod(home, 0o777)
    assert discover_bucket(url, "train", "auto", None).splits == first.splits  # scanned anew
    os.chmod(home, 0o700)
    assert discover_bucket(url, "train", "auto", None).splits != first.splits  # private again: the file is read
