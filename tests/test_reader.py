"""The Python sample reader that feeds the DALI backend (and the torch one): index-based reads,
labels, the shuffle buffer."""

import numpy as np
import pytest

from imgprep.errors import ImgprepError
from imgprep.reader import LocalShards, ShardIndex, buffer_shuffle, epoch_samples, read_segment
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
