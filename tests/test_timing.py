"""imgprep.timing: what the throughput figures of `imgprep load`, `imgprep bench` and benchmarks/ count."""

import os

import numpy as np
import pytest

from imgprep.timing import Throughput, cores_busy, machine_ticks, real_samples, time_loader


def test_warmup_steps_are_counted_but_not_timed():
    t = Throughput(warmup=2)
    for n in (8, 8, 8, 5):
        t.step(n)
    r = t.result()
    assert (r["images"], r["batches"]) == (29, 4)
    assert t.timed_images == 13 and len(t.latencies) == 2  # the two steps after the warm-up
    assert r["images_per_second"] > 0 and r["batch_latency_ms"]["median"] >= 0


def test_no_timed_step_gives_no_rate():
    t = Throughput(warmup=3)
    t.step(4)
    r = t.result()
    assert r["images_per_second"] is None and r["batch_latency_ms"] is None and r["cores_busy"] is None


def test_padding_labels_are_not_samples():
    assert real_samples(np.array([3, 1, -1, -1])) == 2
    assert real_samples([0, 1, 2]) == 3


class _Loader:
    """Two epochs' worth of batches of 4 (the last one padded), recording set_epoch calls."""

    def __init__(self):
        self.epochs = []

    def set_epoch(self, e):
        self.epochs.append(e)

    def __iter__(self):
        for labels in ([0, 1, 2, 3], [1, 1, 0, 0], [2, -1, -1, -1]):
            yield None, np.array(labels)


def test_time_loader_runs_whole_epochs_or_stops_at_steps():
    lo = _Loader()
    r = time_loader(lo, epochs=2, warmup=1)
    assert lo.epochs == [0, 1] and (r["batches"], r["images"]) == (6, 18)
    lo = _Loader()
    r = time_loader(lo, steps=4, warmup=1)  # into the second epoch, stopped after its first batch
    assert lo.epochs == [0, 1] and (r["batches"], r["images"]) == (4, 13)
    assert r["first_batch_seconds"] >= 0


def test_machine_ticks_reads_busy_and_all_from_proc_stat(tmp_path):
    # user nice system idle iowait irq softirq steal guest guest_nice
    f = tmp_path / "stat"
    f.write_text("cpu  100 5 20 300 10 1 2 7 40 0\ncpu0 50 2 10 150 5 0 1 3 20 0\n")
    assert machine_ticks(str(f)) == (100 + 5 + 20 + 1 + 2 + 7, 445)  # guest is already inside user
    f.write_text("nothing here\n")
    assert machine_ticks(str(f)) is None
    assert machine_ticks(str(tmp_path / "missing")) is None


def test_cores_busy_is_the_busy_share_of_all_cores():
    assert cores_busy((100, 1000), (190, 1200), cores=2) == 0.9  # 90 of 200 ticks busy
    assert cores_busy((100, 1000), (100, 1000), cores=2) is None  # no tick between the readings
    assert cores_busy(None, (1, 2)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="no /proc/stat on this system")
def test_a_timed_run_reports_the_machines_busy_cores():
    t = Throughput(warmup=1)
    t.step(1)
    x = 0
    for _ in range(3):  # keep one core busy across a few clock ticks
        for j in range(400_000):
            x += j
        t.step(1)
    busy = t.result()["cores_busy"]
    assert busy is not None and 0 < busy <= (os.cpu_count() or 1), busy
    assert x > 0
