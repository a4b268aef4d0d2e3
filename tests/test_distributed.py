"""Data-parallel training with torchrun on the CPU (gloo): two ranks against one process."""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from helpers import DDP_RUN
from imgprep.trainer.config import AlexNetConfig, TrainConfig
from imgprep.trainer.model import TwoTowerAlexNet, init_kaiming
from imgprep.trainer.runtime import CHECKPOINT
from imgprep.trainer.train import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.fixture(scope="module")
def data(prepared128):
    return prepared128


def _torchrun(data, run, record, mode="record", port=29517, backend="auto"):
    record.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "IMGPREP_TEST_BACKEND": backend}
    script = os.path.join(ROOT, "tests", "ddp_script.py")
    args = [TORCHRUN, "--nproc-per-node", "2", "--master-port", str(port), script, data, str(run), str(record), mode]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_equal_one_process_at_the_same_global_batch(data, tmp_path):
    run, record = tmp_path / "run", tmp_path / "rec"
    r = _torchrun(data, run, record)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = torch.load(record / "rank0.pt", weights_only=False), torch.load(record / "rank1.pt", weights_only=False)
    assert len(r0) == len(r1) == 3
    # identical weights on both ranks after every step
    assert [s["checksum"] for s in r0] == [s["checksum"] for s in r1]
    # the ranks read different samples (4 each of the global batch of 8)
    for a, b in zip(r0, r1, strict=True):
        assert a["images"].shape[0] == b["images"].shape[0] == 4
        d = (a["images"][:, None] - b["images"][None]).abs().flatten(2).mean(2)
        assert d.min() > 1e-3
    # one process, same initial weights, each step on the union of the two ranks' batches
    torch.manual_seed(5)
    model = TwoTowerAlexNet(AlexNetConfig(num_classes=4, width_mult=0.125, dropout=0.0))
    init_kaiming(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1, reduction="sum")
    for a, b in zip(r0, r1, strict=True):
        x, y = torch.cat([a["images"], b["images"]]), torch.cat([a["labels"], b["labels"]])
        loss = loss_fn(model(x), y) / (y >= 0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ck = torch.load(run / CHECKPOINT, weights_only=True)
    assert ck["config"]["world_size"] == 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, atol=1e-5, rtol=1e-4)
    # only rank 0 wrote the run folder; and the run resumes in one process (another world size)
    tb = importlib.util.find_spec("tensorboard") is not None  # the [tensorboard] extra adds RUN_DIR/tensorboard
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "config.json", "metrics.jsonl"] + ["tensorboard"] * tb
    assert not tb or len(os.listdir(run / "tensorboard")) == 1  # one writer: rank 0
    last = train(
        TrainConfig(data, str(run), epochs=2, **DDP_RUN),
        resume=True,
        progress=False,
        log=lambda s: None,
    )
    assert last["epoch"] == 2


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_sigterm_stops_both_ranks_after_the_same_step_and_resume_is_exact(data, tmp_path, backend):
    """Rank 0 gets SIGTERM after step 1, rank 1 after step 2: both stop after step 2 (the ranks agree
    at log points), rank 0 saves the position with both ranks' sums, and a resumed 2-rank run ends
    with the weights of one that was never stopped."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    port = 29518 if backend == "dali" else 29528
    assert _torchrun(data, straight, tmp_path / "rec0", "plain", port, backend).returncode == 0
    r = _torchrun(data, stopped, tmp_path / "rec1", "sigterm", port + 1, backend)
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        assert torch.load(tmp_path / "rec1" / f"result{rank}.pt") == {"preempted": True, "epoch": 0, "batch": 2}
    ck = torch.load(stopped / CHECKPOINT, weights_only=True)
    assert (ck["epoch"], ck["step"], ck["position"]["batch"], len(ck["position"]["sums"])) == (0, 2, 2, 2)
    r = _torchrun(data, stopped, tmp_path / "rec2", "resume", port + 2, backend)
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(straight / CHECKPOINT, weights_only=True)
    b = torch.load(stopped / CHECKPOINT, weights_only=True)
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (1, 3)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
