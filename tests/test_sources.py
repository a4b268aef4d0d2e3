"""Reading ImageNet as users hold it: the ILSVRC2012 archives, the Kaggle layout, flat val folders."""

import json
import os
import shutil

import numpy as np
import pytest

from imagenet_fixtures import IDS, WNIDS, WORDS, build_ilsvrc, build_kaggle, images, val_set
from imgprep.errors import ImgprepError
from imgprep.prepare import PrepareConfig, prepare
from imgprep.shards import iter_samples
from imgprep.sources import Source, detect_layout, discover, parse_devkit, read_val_labels

QUIET = dict(progress=False, log=lambda s: None)
N_TRAIN, N_VAL = 3, 10


@pytest.fixture(scope="module")
def data():
    return images(N_TRAIN), val_set(N_VAL)


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory, data):
    root = str(tmp_path_factory.mktemp("ilsvrc"))
    build_ilsvrc(root, *data)
    return root


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory, data):
    root = str(tmp_path_factory.mktemp("kaggle"))
    build_kaggle(root, *data)
    return root


def samples(out, split):
    m = json.load(open(os.path.join(out, "manifest.json")))
    for sh in m["splits"][split]["shards"]:
        for _, comp in iter_samples(os.path.join(out, sh["path"])):
            yield int(comp["cls"].decode()), json.loads(comp["json"]), comp


def check_val_labels(out, val):
    seen = 0
    for label, meta, _ in samples(out, "val"):
        i = int(meta["source"].rsplit("_", 1)[1].split(".")[0]) - 1  # ILSVRC2012_val_0000000i
        assert label == WNIDS.index(val[i][0]) == meta["label"], meta  # sorted-WNID index
        assert meta["wnid"] == val[i][0]
        seen += 1
    assert seen == len(val)


def test_devkit_parsing(ilsvrc):
    leaves, truth = parse_devkit(os.path.join(ilsvrc, "ILSVRC2012_devkit_t12.tar.gz"))
    assert {i: w for i, (w, _) in leaves.items()} == {v: k for k, v in IDS.items()}  # internal synsets dropped
    assert len(truth) == N_VAL


def test_ilsvrc_archives_detected_and_indexed_in_place(ilsvrc, data):
    assert detect_layout(ilsvrc) == "ilsvrc"
    idx = discover(ilsvrc)
    assert [c.wnid for c in idx.classes] == WNIDS and idx.classes[0].words == WORDS[WNIDS[0]]
    assert len(idx.splits["train"]) == 4 * N_TRAIN and len(idx.splits["val"]) == N_VAL
    train, _ = data
    for item in idx.splits["train"]:
        wnid = item.ref.split("/")[1][:-4]
        n = int(item.ref.rsplit("_", 1)[1].split(".")[0]) - 10
        assert item.label == WNIDS.index(wnid)
        assert idx.source.read(item) == train[wnid][n]  # the exact bytes, read at their offset
    assert not [f for f in os.listdir(ilsvrc) if not f.startswith("ILSVRC2012_")]  # nothing extracted


def test_prepare_from_ilsvrc_archives(ilsvrc, data, tmp_path):
    out = str(tmp_path / "out")
    prepare(PrepareConfig(ilsvrc, out, size=32, shard_size=4, workers=2), **QUIET)
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["source_layout"] == "ilsvrc"
    assert m["classes"] == [{"index": i, "name": WORDS[w], "wnid": w} for i, w in enumerate(WNIDS)]
    assert m["splits"]["train"]["count"] == 4 * N_TRAIN and m["splits"]["val"]["count"] == N_VAL
    for label, meta, _ in samples(out, "train"):
        assert WNIDS[label] == meta["wnid"] and meta["source"].startswith(
            f"ILSVRC2012_img_train.tar/{meta['wnid']}.tar/"
        )
    check_val_labels(out, data[1])


def test_prepare_from_kaggle(kaggle, data, tmp_path):
    assert detect_layout(kaggle) == "kaggle"
    out = str(tmp_path / "out")
    prepare(PrepareConfig(kaggle, out, size=32, shard_size=4, workers=1), **QUIET)
    m = json.load(open(os.path.join(out, "manifest.json")))
    assert m["source_layout"] == "kaggle" and m["classes"][1] == {"index": 1, "name": WORDS[WNIDS[1]], "wnid": WNIDS[1]}
    check_val_labels(out, data[1])


def test_archives_and_folders_give_the_same_pixels(ilsvrc, kaggle, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare(PrepareConfig(ilsvrc, a, size=32, workers=1), **QUIET)
    prepare(PrepareConfig(kaggle, b, size=32, workers=1), **QUIET)
    assert json.load(open(os.path.join(a, "stats", "stats.json"))) == json.load(
        open(os.path.join(b, "stats", "stats.json"))
    )
    assert np.array_equal(np.load(os.path.join(a, "stats", "mean.npy")), np.load(os.path.join(b, "stats", "mean.npy")))


@pytest.mark.parametrize("fmt", ["lines", "csv"])
def test_flat_val_folder_with_label_file(kaggle, data, tmp_path, fmt):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(kaggle, "ILSVRC", "Data", "CLS-LOC"), src)
    val = data[1]
    labels = tmp_path / "labels.txt"
    if fmt == "lines":
        labels.write_text("".join(f"{w}\n" for w, _ in val))
    else:
        labels.write_text(
            "file,wnid\n" + "".join(f"ILSVRC2012_val_{i + 1:08d}.JPEG,{w}\n" for i, (w, _) in enumerate(val))
        )
    out = str(tmp_path / "out")
    prepare(PrepareConfig(str(src), out, size=32, val_labels=str(labels), workers=1), **QUIET)
    check_val_labels(out, val)


def test_flat_val_without_labels_is_an_error(kaggle, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(os.path.join(kaggle, "ILSVRC", "Data", "CLS-LOC"), src)
    with pytest.raises(ImgprepError, match="--val-labels"):
        discover(str(src))


def test_unknown_val_class_is_named(kaggle, tmp_path):
    src = tmp_path / "k"
    shutil.copytree(kaggle, src)
    sol = src / "LOC_val_solution.csv"
    sol.write_text(sol.read_text().replace(WNIDS[2], "n09999999"))
    with pytest.raises(ImgprepError, match="n09999999"):
        discover(str(src))


def test_val_tar_without_devkit_is_an_error(ilsvrc, tmp_path):
    src = tmp_path / "s"
    src.mkdir()
    shutil.copy(os.path.join(ilsvrc, "ILSVRC2012_img_val.tar"), src)
    shutil.copy(os.path.join(ilsvrc, "ILSVRC2012_img_train.tar"), src)
    with pytest.raises(ImgprepError, match="devkit"):
        discover(str(src))


def test_read_val_labels_mismatch(tmp_path):
    p = tmp_path / "l.txt"
    p.write_text("n01440764\n")
    with pytest.raises(ImgprepError, match="1 labels for 2"):
        read_val_labels(str(p), ["a.JPEG", "b.JPEG"])


def test_source_pickles_without_open_files(ilsvrc):
    import pickle

    idx = discover(ilsvrc)
    src = idx.source
    src.read(idx.splits["train"][0])
    clone = pickle.loads(pickle.dumps(src))
    assert isinstance(clone, Source) and clone.read(idx.splits["val"][0]) == src.read(idx.splits["val"][0])


def _devkit(path, meta: bytes, truth: bytes = b"1\n") -> str:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as t:
        for name, data in (("data/meta.mat", meta), ("data/ILSVRC2012_validation_ground_truth.txt", truth)):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return str(path)


def test_devkit_bombs_and_junk_are_one_line_within_bounded_memory(tmp_path):
    """A meta.mat whose compressed variable expands to 256 MiB (stored in a few hundred KB), a 1 MiB
    meta.mat of zeros, and a 32 MiB ground truth: each refused by what a real devkit holds."""
    import io
    import resource

    import numpy as np
    import scipy.io

    from imgprep.sources import parse_devkit

    b = io.BytesIO()
    scipy.io.savemat(b, {"synsets": np.zeros(256 << 20, np.uint8)}, do_compression=True)
    bomb = _devkit(tmp_path / "bomb.tar.gz", b.getvalue())
    del b
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImgprepError, match="its variables expand to more than 67,108,864 bytes"):
        parse_devkit(bomb)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # ru_maxrss: KiB on Linux
    assert grown < 64 << 20
    with pytest.raises(ImgprepError, match="not a MATLAB 5 MAT-file"):
        parse_devkit(_devkit(tmp_path / "zeros.tar.gz", bytes(1 << 20)))
    with pytest.raises(ImgprepError, match="ground_truth.txt is 33,554,432 bytes, more than a real devkit's"):
        from imagenet_fixtures import write_meta_mat

        write_meta_mat(str(tmp_path / "meta.mat"))
        real_meta = open(tmp_path / "meta.mat", "rb").read()
        parse_devkit(_devkit(tmp_path / "truth.tar.gz", real_meta, b"1\n" * (16 << 20)))
    with pytest.raises(ImgprepError, match="unreadable devkit"):
        parse_devkit(_devkit(tmp_path / "junk.tar.gz", b"MATLAB 5.0 MAT-file" + bytes(200)))


def test_train_tar_members_that_are_links_are_counted_as_skipped(tmp_path):
    import io
    import tarfile

    from helpers import jpeg_bytes, smooth_rgb

    root = tmp_path / "src"
    root.mkdir()
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for w in WNIDS[:2]:
            b = io.BytesIO()
            with tarfile.open(fileobj=b, mode="w") as inner:
                for i in range(2):
                    data = jpeg_bytes(smooth_rgb(40, 50, i))
                    info = tarfile.TarInfo(f"{w}_{i}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
                for kind, name in ((tarfile.SYMTYPE, "sym.JPEG"), (tarfile.LNKTYPE, "hard.JPEG")):
                    info = tarfile.TarInfo(name)
                    info.type, info.linkname = kind, f"{w}_0.JPEG"
                    inner.addfile(info)
            info = tarfile.TarInfo(f"{w}.tar")
            info.size = len(b.getvalue())
            outer.addfile(info, io.BytesIO(b.getvalue()))
    index = discover(str(root))
    assert len(index.splits["train"]) == 4 and index.skipped["train"] == 4  # 2 links in each class tar
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "a") as outer:
        info = tarfile.TarInfo("broken.tar")
        info.size = 5
        outer.addfile(info, io.BytesIO(b"junk!"))
    with pytest.raises(ImgprepError, match="its member broken.tar is not a readable tar"):
        discover(str(root))


def _tar_bytes(add, fmt=None) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT if fmt is None else fmt) as t:
        add(t)
    return buf.getvalue()


def _file(t, name, n, kind=None):
    import io
    import tarfile

    ti = tarfile.TarInfo(name)
    ti.size = n
    if kind is not None:
        ti.type, ti.size = kind, 0
    t.addfile(ti, io.BytesIO(bytes(n)) if kind is None else None)


@pytest.mark.parametrize(
    "case",
    [
        "plain",
        "folders",
        "ustar prefix",
        "zero sizes",
        "long name",
        "pax",
        "symlink",
        "truncated",
        "bad checksum",
        "empty",
    ],
)
def test_plain_members_lists_what_tarfile_lists_or_leaves_it_to_tarfile(case):
    """The fast header walk of a class tar gives tarfile's listing exactly; where a tar needs
    tarfile's own rules it says so (None), and the scan then asks tarfile."""
    import io
    import tarfile

    from imgprep.sources import plain_members

    fast = case in ("plain", "folders", "ustar prefix", "zero sizes")
    if case in ("plain", "truncated", "bad checksum"):
        data = _tar_bytes(lambda t: [_file(t, f"n01_{i}.JPEG", 1 + 700 * i) for i in range(9)])
    elif case == "folders":
        data = _tar_bytes(lambda t: [_file(t, "d/", 0, tarfile.DIRTYPE), _file(t, "d/a.JPEG", 600), _file(t, "b", 3)])
    elif case == "ustar prefix":
        long_dir = "x" * 120
        data = _tar_bytes(lambda t: [_file(t, f"{long_dir}/img.JPEG", 1000)], tarfile.USTAR_FORMAT)
    elif case == "zero sizes":
        data = _tar_bytes(lambda t: [_file(t, f"e{i}", 0) for i in range(3)] + [_file(t, "f", 513)])
    elif case == "long name":
        data = _tar_bytes(lambda t: [_file(t, "y" * 150 + ".JPEG", 10)])
    elif case == "pax":
        data = _tar_bytes(lambda t: [_file(t, "é" * 120, 10)], tarfile.PAX_FORMAT)
    elif case == "symlink":
        data = _tar_bytes(lambda t: [_file(t, "a", 5), _file(t, "l", 0, tarfile.SYMTYPE)])
    else:
        data = b""
    if case == "truncated":
        data = data[: 512 * 6 + 100]
    if case == "bad checksum":
        data = data[: 512 * 2 + 10] + b"\x01" + data[512 * 2 + 11 :]
    got = plain_members(io.BytesIO(data))
    if not fast:
        assert got is None
        return
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        want = [(m.name, m.offset_data, m.size, m.isreg()) for m in t]
    assert got == want and len(want) >= 1


def test_a_plain_file_is_read_whole_as_it_is_when_read(tmp_path, monkeypatch):
    """One read where the file has the length fstat gave; a file that grew after fstat is read to
    its end, within the per-image limit; one that shrank gives what it holds; an empty one b''."""
    from imgprep import sources
    from imgprep.sources import Item

    data = os.urandom(3 << 20)  # over one read's chunk after the first
    (tmp_path / "a.jpg").write_bytes(data)
    (tmp_path / "e.jpg").write_bytes(b"")
    src = Source(str(tmp_path), [])
    item, empty = Item("a.jpg", 0), Item("e.jpg", 0)
    assert src.read(item) == data and src.read(empty) == b""
    real = os.fstat

    def fstat_says(delta):
        def fake(fd):
            st = real(fd)
            return os.stat_result((st.st_mode, *tuple(st)[1:6], st.st_size + delta, *tuple(st)[7:]))

        return fake

    monkeypatch.setattr(sources.os, "fstat", fstat_says(-(2 << 20)))  # it grew by 2 MiB after fstat
    assert src.read(item) == data and src.read(item, max_bytes=3 << 20) == data
    with pytest.raises(OSError, match="grew past the limit"):
        src.read(item, max_bytes=(3 << 20) - 1)
    monkeypatch.setattr(sources.os, "fstat", fstat_says(-1))  # one byte more, at the limit: the first read
    with pytest.raises(OSError, match="grew past the limit"):  # already holds the byte past it
        src.read(item, max_bytes=(3 << 20) - 1)
    monkeypatch.setattr(sources.os, "fstat", fstat_says(+100))  # it shrank after fstat
    assert src.read(item) == data
