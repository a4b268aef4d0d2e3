"""Run by torchrun in tests/test_distributed.py: `train()` as one DDP rank, recording every step's
batch and a checksum of the weights."""

import os
import sys

import torch

from helpers import DDP_RUN  # this script's folder (tests/) is first on sys.path
from imgprep.trainer.config import TrainConfig
from imgprep.trainer.train import train

data, run, record = sys.argv[1:4]
rank = int(os.environ["RANK"])
steps = []


def on_step(step, model, images, labels):
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    steps.append({"images": images.cpu(), "labels": labels.cpu(), "checksum": params.double().sum().item()})


cfg = TrainConfig(data, run, epochs=1, lighting_std=0.1, log_every=1, **DDP_RUN)
train(cfg, progress=False, log=lambda s: None, on_step=on_step)
torch.save(steps, os.path.join(record, f"rank{rank}.pt"))
