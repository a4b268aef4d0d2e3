"""What every run of the model needs, shared by `train`, `eval`, `bench train` and `experiment`:
devices, building and initialising the model, mixed precision, and checkpoints."""

from __future__ import annotations

import contextlib
import os

import torch

from imgprep.errors import ImgprepError
from imgprep.fileio import atomic_file

from .config import INIT_NAMES, AlexNetConfig, EvalConfig
from .model import TwoTowerAlexNet, init_kaiming, init_paper

__all__ = [
    "CHECKPOINT",
    "INITS",
    "AUTO_NORMALIZE",
    "parse_devices",
    "build_model",
    "autocast",
    "save_checkpoint",
    "load_checkpoint",
    "model_config_from",
    "evaluate_run",
]

CHECKPOINT = "checkpoint.pt"
INITS = dict(zip(INIT_NAMES, (init_paper, init_kaiming), strict=True))
# With He init the first layer must see unit-scale inputs; the paper's init expects raw centred pixels.
AUTO_NORMALIZE = {"paper": "mean_image", "kaiming": "mean_image_std"}


def parse_devices(spec: str, local_rank: int = 0, shift: bool = False) -> tuple[torch.device, torch.device]:
    """(tower A device, tower B device) from auto, cpu, cuda:0 or cuda:0,cuda:1.

    With `shift` (several torchrun ranks on a machine) CUDA indices are offset by
    local_rank * (devices named): rank k of a node with "cuda:0,cuda:1" uses cuda:2k, cuda:2k+1.
    """
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        d = torch.device(f"cuda:{local_rank % n_gpu}") if n_gpu else torch.device("cpu")
        return d, d
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not 1 <= len(parts) <= 2:
        raise ImgprepError(f"--devices {spec!r}: give one device or two (tower A,tower B), e.g. cuda:0,cuda:1")
    devs = []
    for p in parts:
        try:
            d = torch.device(p)
        except RuntimeError:
            raise ImgprepError(f"--devices: {p!r} is not a device name (cpu, cuda:0, ...)") from None
        if d.type == "cuda":
            idx = (d.index or 0) + (local_rank * len(parts) if shift else 0)
            if idx >= n_gpu:
                raise ImgprepError(
                    f"--devices: {p} named (cuda:{idx} for this rank) but {n_gpu} CUDA GPU{'s' * (n_gpu != 1)} visible"
                )
            d = torch.device("cuda", idx)
        elif d.type != "cpu":
            raise ImgprepError(f"--devices: {p!r}: only cpu and cuda devices are supported")
        devs.append(d)
    return devs[0], devs[-1]


def build_model(mcfg: AlexNetConfig, init: str, devices, seed: int, channels_last: bool) -> TwoTowerAlexNet:
    """Model with the chosen initialisation, placed on (tower A, tower B) devices."""
    if init not in INITS:
        raise ImgprepError(f"--init {init!r}: one of {', '.join(INITS)}")
    torch.manual_seed(seed)
    model = TwoTowerAlexNet(mcfg)
    INITS[init](model)
    model.place(*devices)
    if channels_last and devices[0].type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, bf16: bool = True):
    """bf16 autocast on a CUDA device (when asked), else a no-op context."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_config_from(saved: dict) -> AlexNetConfig:
    """The AlexNetConfig stored in a checkpoint (`remove` back to a tuple)."""
    try:
        return AlexNetConfig(**{**saved, "remove": tuple(saved["remove"])})
    except (TypeError, KeyError) as exc:
        raise ImgprepError(f"checkpoint holds no usable model configuration ({exc})") from None


def save_checkpoint(run_dir: str, checkpoint: dict) -> None:
    """Write RUN_DIR/checkpoint.pt atomically: a crash leaves the previous one whole."""
    with atomic_file(os.path.join(run_dir, CHECKPOINT)) as f:
        torch.save(checkpoint, f)


def load_checkpoint(run_dir: str) -> dict:
    """The checkpoint of a run, or ImgprepError. Loaded with `weights_only=True`: tensors and plain
    containers only, so a crafted file cannot run code."""
    p = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(p):
        raise ImgprepError(f"{run_dir}: no {CHECKPOINT}; train first (or check the RUN_DIR)")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or damaged files
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImgprepError(
            f"{p}: not a checkpoint this version can read safely ({msg[:200]}); nothing in it was run"
        ) from None
    keys = {"model", "optimizer", "scheduler", "epoch", "step", "config", "model_config", "rng"}
    missing = sorted(keys - set(ckpt)) if isinstance(ckpt, dict) else sorted(keys)
    if missing:
        raise ImgprepError(f"{p}: not an imgprep checkpoint (no {', '.join(missing)})")
    return ckpt


def evaluate_run(cfg: EvalConfig) -> dict:
    """Top-1/top-5 error of a run's last checkpoint on the validation split of `data`."""
    from imgprep.dataset import batch_within
    from imgprep.loaders import make_loader

    from .evaluate import evaluate

    run_dir, data = cfg.run_dir, cfg.data
    ckpt = load_checkpoint(run_dir)
    mcfg = model_config_from(ckpt["model_config"])
    devs = parse_devices(cfg.devices)
    model = TwoTowerAlexNet(mcfg)
    model.load_state_dict(ckpt["model"])
    model.place(*devs)
    loader = make_loader(
        data,
        "val",
        batch_within(data, "val", cfg.batch_size),
        "ten_crop" if cfg.ten_crop else "eval",
        backend=cfg.backend,
        device="gpu" if devs[0].type == "cuda" else "cpu",
        workers=cfg.workers,
        normalize=ckpt["config"]["normalize"],
    )
    n_classes = len(loader.info.classes)
    if n_classes != mcfg.num_classes:
        raise ImgprepError(f"{data}: {n_classes} classes, but the model of {run_dir} has {mcfg.num_classes}")
    r = evaluate(model, loader, devs[0], autocast(devs[0]))
    r.update(ten_crop=cfg.ten_crop, epoch=ckpt["epoch"])
    return r
