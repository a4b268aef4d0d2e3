"""Run by torchrun in tests/test_distributed.py: `train()` as one DDP rank, recording every step's
batch and a checksum of the weights. MODE (the 4th argument): record (default); sigterm, where each
rank sends itself SIGTERM after its own step (rank 0 after step 1, rank 1 after step 2), as a
scheduler's signals land at different moments; resume."""

import os
import signal
import sys

import torch

from helpers import DDP_RUN  # this script's folder (tests/) is first on sys.path
from imgprep.trainer.config import TrainConfig
from imgprep.trainer.train import train


def main() -> None:
    data, run, record = sys.argv[1:4]
    mode = sys.argv[4] if len(sys.argv) > 4 else "record"
    rank = int(os.environ["RANK"])
    steps = []

    def on_step(step, model, images, labels):
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        steps.append({"images": images.cpu(), "labels": labels.cpu(), "checksum": params.double().sum().item()})
        if mode == "sigterm" and step == rank + 1:
            os.kill(os.getpid(), signal.SIGTERM)

    log_every = 2 if mode != "record" else 1  # the ranks agree on stopping at log points: step 2 here
    backend = os.environ.get("IMGPREP_TEST_BACKEND", "auto")
    cfg = TrainConfig(data, run, epochs=1, lighting_std=0.1, log_every=log_every, backend=backend, **DDP_RUN)
    result = train(cfg, resume=mode == "resume", progress=False, log=lambda s: None, on_step=on_step)
    torch.save(steps, os.path.join(record, f"rank{rank}.pt"))
    torch.save(result, os.path.join(record, f"result{rank}.pt"))


if __name__ == "__main__":  # the torch backend's worker processes import this file as their main module
    main()
