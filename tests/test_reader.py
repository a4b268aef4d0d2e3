"""The Python sample reader that feeds the DALI backend (and the torch one): index-based reads,
labels, the shuffle buffer."""

import itertools
import os

import numpy as np
import pytest

from imgprep.errors import ImgprepError
from imgprep.loader_base import PAD_LABEL
from imgprep.reader import (
    BatchReader,
    EpochPositions,
    IndexCache,
    LocalShards,
    ShardIndex,
    buffer_shuffle,
    epoch_samples,
    read_segment,
)
from imgprep.shards import ShardWriter, iter_samples


def _shard(tmp_path, n=1000, label=str):
    path = str(tmp_path / "l-000000.tar")
    w = ShardWriter(path)
    for i in range(n):
        w.write(f"{i:06d}", {"cls": label(i).encode(), "jpg": bytes([i % 256]) * (i % 7 + 1)})
    w.close()
    return path


def test_every_label_0_to_999_and_every_jpg_read_by_index(tmp_path):
    path = _shard(tmp_path)
    index = ShardIndex.of_shard(path)
    got = list(read_segment(path, index, 0, 1000))
    want = [(k, c["jpg"], int(c["cls"])) for k, c in iter_samples(path)]  # the tar read member by member
    assert got == want and [y for _, _, y in got] == list(range(1000))
    assert list(read_segment(path, index, 990, 5)) == want[990:995]


@pytest.mark.parametrize("chunk", [1, 3000, 1 << 30])
def test_reads_spanning_several_samples_give_the_same_samples(tmp_path, monkeypatch, chunk):
    """One sample per read (chunk 1), a few (3000 bytes), or the whole segment in one read."""
    from imgprep import reader

    path = _shard(tmp_path)
    index = ShardIndex.of_shard(path)
    want = [(k, c["jpg"], int(c["cls"])) for k, c in iter_samples(path)]
    monkeypatch.setattr(reader, "READ_CHUNK", chunk)
    assert list(read_segment(path, index, 0, 1000)) == want
    assert list(read_segment(path, index, 17, 400)) == want[17:417]


def test_a_label_that_is_not_a_number_is_one_line(tmp_path):
    path = _shard(tmp_path, 3, label=lambda i: "x" if i == 2 else str(i))
    with pytest.raises(ImgprepError, match="000002 has a label that is not a number"):
        list(read_segment(path, ShardIndex.of_shard(path), 0, 3))


def test_a_shard_cut_short_is_one_line(tmp_path):
    path = _shard(tmp_path, 10)
    index = ShardIndex.of_shard(path)
    with open(path, "r+b") as f:
        f.truncate(int(index.table[8, 0]))
    with pytest.raises(ImgprepError, match="ends inside sample 00000"):
        list(read_segment(path, index, 0, 10))


def test_epoch_samples_follow_the_segments_and_mark_left_out(tmp_path):
    path = _shard(tmp_path, 20)
    source = LocalShards([path], {0: {"000003", "000016"}})
    out = list(epoch_samples([(0, 15, 5), (0, 2, 3)], source))
    assert [(k, left) for k, _, _, left in out] == [
        ("000015", False), ("000016", True), ("000017", False), ("000018", False), ("000019", False),
        ("000002", False), ("000003", True), ("000004", False),
    ]  # fmt: skip


def test_buffer_shuffle_is_a_permutation_and_mixes_beyond_the_buffer():
    rng = np.random.default_rng(0)
    out = list(buffer_shuffle(range(1000), 100, rng))
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    assert list(buffer_shuffle(range(1000), 100, np.random.default_rng(0))) == out  # seeded
    assert max(abs(v - i) for i, v in enumerate(out[:500])) > 100  # moved further than the buffer's span


def test_buffer_shuffle_starts_after_initial_items_and_grows_to_its_size():
    """The first item comes after `initial` items were read (not a whole buffer's); the buffer then
    grows to `size`, so later items come from up to `size` back."""
    read = []

    def source():
        for i in range(5000):
            read.append(i)
            yield i

    it = buffer_shuffle(source(), 1000, np.random.default_rng(1), initial=50)
    first = next(it)
    assert len(read) <= 51 and 0 <= first < 51
    out, held = [first], []
    for v in it:
        out.append(v)
        held.append(len(read) - len(out))  # items read and not yet yielded: the buffer's fill
    assert sorted(out) == list(range(5000))
    assert held[:5] == [50, 51, 52, 53, 54]  # growing by one per item out...
    assert set(held[1000:3900]) == {999}  # ...to the whole buffer (the item just taken is out)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _as_samples(jpgs, labels, n):
    """[(jpg bytes, label)] of the first n samples of a feed, read the way a decoder sees them:
    a dense row up to its zeros (the test JPEGs hold no zero byte), or a view."""
    out = []
    for k in range(n):
        row = bytes(jpgs[k])
        if isinstance(jpgs, np.ndarray):
            assert row.rstrip(b"\0") + bytes(len(row) - len(row.rstrip(b"\0"))) == row
            row = row.rstrip(b"\0")
        out.append((row, int(labels[k])))
    return out


def _shards(tmp_path, n=3, per=100):
    paths = []
    for s in range(n):
        path = str(tmp_path / f"l-{s:06d}.tar")
        w = ShardWriter(path)
        for i in range(per):
            w.write(
                f"{s}{i:05d}",
                {"cls": str(s * per + i).encode(), "jpg": bytes([1 + (s * per + i) % 250]) * (5 + i % 37)},
            )
        w.close()
        paths.append(path)
    return paths


@pytest.mark.parametrize("dense", [True, False])
def test_batches_of_shuffled_positions_hold_the_samples_the_byte_stream_held(tmp_path, dense):
    """Positions through the shuffle buffer, read per batch, give the batches that the samples'
    bytes through the same buffer gave: same samples, order, labels; the last batch padded with
    its last sample; dense rows zero after each JPEG."""
    paths = _shards(tmp_path)
    segments = [(2, 10, 90), (0, 0, 100), (1, 0, 55)]
    b = 32
    want = [
        (jpg, y)
        for _, jpg, y, _ in buffer_shuffle(
            epoch_samples(segments, LocalShards(paths, {})), 64, np.random.default_rng(5), initial=8
        )
    ]
    reader, got, fds = BatchReader(b, 3, dense), [], _open_fds()
    with EpochPositions(segments, LocalShards(paths, {})) as positions:
        stream = buffer_shuffle(iter(positions), 64, np.random.default_rng(5), initial=8)
        while items := list(itertools.islice(stream, b)):
            jpgs, labels = reader.read(items, None)
            assert len(jpgs) == b and labels.shape == (b,) and labels.dtype == np.int32
            assert isinstance(jpgs, np.ndarray) == dense
            batch = _as_samples(jpgs, labels, b)
            assert batch[len(items) :] == [batch[len(items) - 1]] * (b - len(items))
            got += batch[: len(items)]
    assert got == want and len(got) == 245
    assert _open_fds() == fds  # every shard's file closed once its last sample was read


def test_left_out_samples_get_the_previous_good_one_and_the_pad_label(tmp_path):
    paths = _shards(tmp_path, 1, 20)
    skip = {0: {"000000", "000001", "000007", "000008", "000009", "000010"}}
    reader = BatchReader(4, 2, True)
    with EpochPositions([(0, 0, 20)], LocalShards(paths, skip)) as positions:
        stream = iter(positions)
        out = []
        while items := list(itertools.islice(stream, 4)):
            jpgs, labels = reader.read(items, lambda: b"first-good")
            out += _as_samples(jpgs, labels, len(items))
    jpg = [bytes([1 + i]) * (5 + i) for i in range(20)]
    assert out[:2] == [(b"first-good", PAD_LABEL)] * 2  # none came before: the stand-in's stand-in
    assert out[2:7] == [(jpg[i], i) for i in range(2, 7)]
    assert out[7:11] == [(jpg[6], PAD_LABEL)] * 4  # across a batch boundary (7 | 8 9 10)
    assert out[11:] == [(jpg[i], i) for i in range(11, 20)]


def test_batch_buffers_are_reused_and_an_odd_batch_is_packed(tmp_path):
    """The ring's buffers come back every `slots` batches (no fresh memory per batch); a batch
    whose longest JPEG would make a dense array over twice its bytes is fed as packed views."""
    path = str(tmp_path / "odd-000000.tar")
    w = ShardWriter(path)
    for i in range(16):
        w.write(f"{i:06d}", {"cls": b"3", "jpg": bytes([7]) * (100_000 if i == 12 else 1000)})
    w.close()
    reader, bases = BatchReader(4, 2, True), []
    with EpochPositions([(0, 0, 16)], LocalShards([path], {})) as positions:
        stream = iter(positions)
        while items := list(itertools.islice(stream, 4)):
            jpgs, _ = reader.read(items, None)
            bases.append((isinstance(jpgs, np.ndarray), jpgs.base if isinstance(jpgs, np.ndarray) else jpgs[0].base))
    assert [d for d, _ in bases] == [True, True, True, False]
    assert [len(j) for j in jpgs] == [100_000, 1000, 1000, 1000]  # exact lengths, packed
    assert bases[2][1] is bases[0][1] and bases[1][1] is not bases[0][1]  # the first buffer again, two batches later


def test_a_shard_removed_after_its_positions_were_taken_is_still_read(tmp_path):
    """A cached shard evicted (unlinked) or replaced while its samples wait in the shuffle
    buffer: its file stays open until the last one is read."""
    paths = _shards(tmp_path, 2, 10)
    reader = BatchReader(20, 2, False)
    with EpochPositions([(0, 0, 10), (1, 0, 10)], LocalShards(paths, {})) as positions:
        items = list(positions)
        os.unlink(paths[0])
        with open(paths[1] + ".new", "wb") as f:  # a new file under the name (the cache renames)
            f.write(b"x")
        os.replace(paths[1] + ".new", paths[1])
        jpgs, labels = reader.read(items, None)
    assert labels.tolist() == list(range(20))


def test_reading_positions_of_a_cut_short_shard_or_a_bad_label_is_one_line(tmp_path):
    path = _shard(tmp_path, 10, label=lambda i: "x" if i == 3 else str(i))
    index = ShardIndex.of_shard(path)
    reader = BatchReader(2, 2, True)
    with EpochPositions([(0, 0, 10)], LocalShards([path], {})) as positions:
        items = list(positions)
        reader.read(items[:2], None)
        with pytest.raises(ImgprepError, match="000003 has a label that is not a number"):
            reader.read(items[2:4], None)
        with open(path, "r+b") as f:
            f.truncate(int(index.table[8, 0]) + 1)
        reader.read(items[4:6], None)
        with pytest.raises(ImgprepError, match="ends inside sample 000008"):
            reader.read(items[8:], None)


def test_an_index_with_a_negative_offset_or_a_sample_beyond_the_file_is_one_line(tmp_path):
    """A forged index: no read at a negative offset, no buffer sized by a sample the file cannot hold."""
    path = _shard(tmp_path, 3)
    idx = path[: -len(".tar")] + ".idx"
    text = open(idx).read()
    lines = text.splitlines()
    t = lines[2].split()
    t[t.index("jpg") + 1] = "-512"
    open(idx, "w").write("\n".join([*lines[:2], " ".join(t), *lines[3:]]) + "\n")
    with pytest.raises(ImgprepError, match="a negative offset or size"):
        ShardIndex.of_shard(path)
    t[t.index("jpg") + 1], t[t.index("jpg") + 2] = "2048", str(1 << 40)
    open(idx, "w").write("\n".join([*lines[:2], " ".join(t), *lines[3:]]) + "\n")
    with (
        EpochPositions([(0, 0, 3)], LocalShards([path], {})) as positions,
        pytest.raises(ImgprepError, match="ends inside sample 000001"),
    ):
        BatchReader(3, 2, True).read(list(positions), None)


def test_an_index_is_parsed_once_and_again_when_its_file_changes(tmp_path):
    """A loader's IndexCache keeps each parsed index while the file is unchanged; a shard written
    again (other samples) is parsed again, and its samples read right; pickled, it is empty."""
    import pickle

    path = _shard(tmp_path, 10)
    cache = IndexCache()
    first = cache.get(path)
    assert cache.get(path) is first and len(first.rows) == 10
    os.remove(path)
    w = ShardWriter(path)  # the same name, other samples
    for i in range(12):
        w.write(f"b{i:05d}", {"cls": b"7", "jpg": b"\xff" * (i + 3)})
    w.close()
    again = cache.get(path)
    assert again is not first and again.keys[0] == "b00000" and len(again.rows) == 12
    assert [(k, len(j), y) for k, j, y in read_segment(path, again, 10, 2)] == [("b00010", 13, 7), ("b00011", 14, 7)]
    with EpochPositions([(0, 0, 12)], LocalShards([path], {}, cache)) as positions:
        jpgs, labels = BatchReader(12, 2, dense=False).read(list(positions), None)
    assert [len(j) for j in jpgs] == list(range(3, 15)) and set(labels.tolist()) == {7}
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._got == {} and copy.get(path).keys == again.keys
