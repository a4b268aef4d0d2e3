"""`imgprep train`: the paper's recipe (section 5) on the bundled loader.

SGD with momentum 0.9 and weight decay 5e-4, batch 128, learning rate 0.01 divided by 10 when the
validation error stops improving (at most three times). One process drives one or two devices
(the two-tower model-parallel split); `torchrun` adds data parallelism (DDP) across processes
and machines. A checkpoint after every epoch makes `--resume` exact.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from imgprep.errors import ImgprepError

from .evaluate import evaluate, topk_correct
from .model import AlexNetConfig, TwoTowerAlexNet, init_kaiming, init_paper

__all__ = ["TrainConfig", "train", "build_model", "load_checkpoint", "parse_devices", "CHECKPOINT"]

CHECKPOINT = "checkpoint.pt"
INITS = {"paper": init_paper, "kaiming": init_kaiming}
# With He init the first layer must see unit-scale inputs; the paper's init expects raw centred pixels.
AUTO_NORMALIZE = {"paper": "mean_image", "kaiming": "mean_image_std"}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; saved in RUN_DIR/config.json and in every checkpoint."""

    data: str
    run_dir: str
    epochs: int = 90
    batch_size: int = 128  # global: divided over DDP ranks
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_patience: int = 1  # epochs without a better validation error before lr /= 10
    lr_drops: int = 3
    init: str = "paper"
    width_mult: float = 1.0
    dropout: float = 0.5
    activation: str = "relu"
    remove: tuple[str, ...] = field(default_factory=tuple)
    backend: str = "dali"
    devices: str = "auto"  # auto, cpu, cuda:0, or cuda:0,cuda:1 (tower A, tower B)
    workers: int = 0
    seed: int = 0
    normalize: str = "auto"
    lighting_std: float = 0.1
    bf16: bool = True  # autocast on GPU
    channels_last: bool = True  # on GPU
    steps_per_epoch: int = 0  # 0: whole epochs; N: at most N batches per epoch (smoke runs, benchmarks)
    log_every: int = 10

    def model_config(self, num_classes: int) -> AlexNetConfig:
        return AlexNetConfig(num_classes, self.width_mult, self.dropout, self.activation, tuple(self.remove))


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
                raise ImgprepError(f"--devices: {p} named (cuda:{idx} for this rank) but {n_gpu} CUDA "
                                   f"GPU{'s' * (n_gpu != 1)} visible")
            d = torch.device("cuda", idx)
        elif d.type != "cpu":
            raise ImgprepError(f"--devices: {p!r}: only cpu and cuda devices are supported")
        devs.append(d)
    return devs[0], devs[-1]


def build_model(mcfg: AlexNetConfig, init: str, devices, seed: int, channels_last: bool) -> TwoTowerAlexNet:
    """Model with the chosen initialisation, placed on (tower A, tower B) devices."""
    torch.manual_seed(seed)
    model = TwoTowerAlexNet(mcfg)
    INITS[init](model)
    model.place(*devices)
    if channels_last and devices[0].type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _save_atomic(obj, path: str) -> None:
    tmp = path + ".partial"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str) -> dict:
    """The checkpoint of a run, or ImgprepError."""
    p = os.path.join(run_dir, CHECKPOINT)
    if not os.path.exists(p):
        raise ImgprepError(f"{run_dir}: no {CHECKPOINT}; train first (or check the RUN_DIR)")
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ImgprepError(f"{p}: unreadable checkpoint ({exc})") from None


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print,
          on_step: Callable | None = None) -> dict:
    """Train (or resume) a run; returns the last epoch's metrics.

    Under torchrun (WORLD_SIZE > 1) each process is one data-parallel rank: it reads its own part
    of every epoch, gradients are all-reduced (DDP), and only rank 0 writes the run folder.
    `on_step(step, model, images, labels)` is called after every optimizer step (for tools and
    tests).
    """
    from imgprep.loaders import DatasetInfo, make_loader
    from imgprep.verify import load_manifest

    if cfg.init not in INITS:
        raise ImgprepError(f"--init {cfg.init!r}: one of {', '.join(INITS)}")
    rank, world, local_rank = _dist_env()
    info = DatasetInfo.load(cfg.data, "train")  # errors on a missing dataset or statistics
    has_val = "val" in load_manifest(cfg.data)["splits"]
    devices = parse_devices(cfg.devices, local_rank, shift=world > 1)
    gpu = devices[0].type == "cuda"
    if cfg.batch_size % world:
        raise ImgprepError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    normalize = AUTO_NORMALIZE[cfg.init] if cfg.normalize == "auto" else cfg.normalize
    mcfg = cfg.model_config(len(info.classes))
    try:
        mcfg.validate()
    except ValueError as exc:
        raise ImgprepError(str(exc)) from None
    ckpt_path = os.path.join(cfg.run_dir, CHECKPOINT)
    ckpt = None
    if resume:
        ckpt = load_checkpoint(cfg.run_dir)
        if ckpt["model_config"] != asdict(mcfg):
            diff = [k for k in asdict(mcfg) if ckpt["model_config"].get(k) != asdict(mcfg)[k]]
            raise ImgprepError(f"{ckpt_path}: checkpoint of another architecture ({', '.join(diff)} differ); "
                               "use the run's settings or another RUN_DIR")
    elif os.path.exists(ckpt_path):
        raise ImgprepError(f"{cfg.run_dir}: already holds a run; pass --resume to continue it, or choose another RUN_DIR")
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if gpu else "gloo")
        if gpu:
            torch.cuda.set_device(devices[0])
    main = rank == 0
    if main:
        os.makedirs(cfg.run_dir, exist_ok=True)
    model = build_model(mcfg, cfg.init, devices, cfg.seed, cfg.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=cfg.lr_patience,
                                                       min_lr=cfg.lr * 0.1 ** cfg.lr_drops * 0.999)
    start_epoch, step = 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"], ckpt["step"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        log(f"resuming {cfg.run_dir} after epoch {start_epoch}")
    net = model
    if distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[devices[0]] if gpu and devices[0] == devices[1] else None)
    loader_kw = dict(rank=rank, world_size=world, backend=cfg.backend, device="gpu" if gpu else "cpu",
                     workers=cfg.workers, seed=cfg.seed, normalize=normalize)
    per_rank = cfg.batch_size // world
    train_loader = make_loader(cfg.data, "train", per_rank, "train", lighting_std=cfg.lighting_std, **loader_kw)
    val_loader = make_loader(cfg.data, "val", per_rank, "eval", **loader_kw) if has_val else None
    resolved = {**asdict(cfg), "num_classes": mcfg.num_classes, "normalize": normalize,
                "devices_resolved": [str(d) for d in devices], "world_size": world, "batch_per_rank": per_rank}
    if main:
        with open(os.path.join(cfg.run_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2, sort_keys=True)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if gpu and cfg.bf16 else None
    cl = gpu and cfg.channels_last
    loss_fn = nn.CrossEntropyLoss(ignore_index=-1, reduction="sum")
    metrics = open(os.path.join(cfg.run_dir, "metrics.jsonl"), "a") if main else None
    last = {}
    try:
        for epoch in range(start_epoch, cfg.epochs):
            train_loader.set_epoch(epoch)
            net.train()
            n_batches = len(train_loader) if not cfg.steps_per_epoch else min(cfg.steps_per_epoch, len(train_loader))
            bar = _bar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", progress and main)
            sums = torch.zeros(4, dtype=torch.float64)  # loss, top1 hits, top5 hits, samples
            t0 = t_log = time.perf_counter()
            seen_log = 0
            for i, (images, labels) in enumerate(train_loader):
                if i >= n_batches:
                    break
                images = images.to(devices[0], non_blocking=True)
                labels = labels.to(devices[0], non_blocking=True)
                if cl:
                    images = images.contiguous(memory_format=torch.channels_last)
                valid = int((labels >= 0).sum())
                with autocast() if autocast else torch.autocast("cpu", enabled=False):
                    logits = net(images)
                    loss = loss_fn(logits.float(), labels) / max(1, valid)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if on_step is not None:
                    on_step(step, model, images, labels)
                c1, c5 = topk_correct(logits.detach(), labels)
                sums += torch.tensor([loss.item() * valid, c1, c5, valid], dtype=torch.float64)
                seen_log += valid
                bar.update(1)
                if main and (step % cfg.log_every == 0 or i == n_batches - 1):
                    now = time.perf_counter()
                    rec = {"type": "step", "epoch": epoch + 1, "step": step, "loss": round(loss.item(), 5),
                           "top1_error": round(1 - c1 / max(1, valid), 4), "top5_error": round(1 - c5 / max(1, valid), 4),
                           "lr": opt.param_groups[0]["lr"], "images_per_second": round(seen_log * world / (now - t_log), 1)}
                    metrics.write(json.dumps(rec) + "\n")
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{rec['lr']:.0e}")
                    t_log, seen_log = now, 0
            bar.close()
            seconds = time.perf_counter() - t0
            if distributed:
                import torch.distributed as dist

                s = sums.to(devices[0])
                dist.all_reduce(s)
                sums = s.cpu()
            loss_sum, h1, h5, n = sums.tolist()
            last = {"type": "epoch", "epoch": epoch + 1, "train_loss": loss_sum / max(1, n),
                    "train_top1_error": 1 - h1 / max(1, n), "train_top5_error": 1 - h5 / max(1, n),
                    "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 2),
                    "images_per_second": round(n / seconds, 1) if seconds else None}
            if val_loader is not None:
                v = evaluate(model, val_loader, devices[0], autocast, cl, distributed)
                last.update(val_top1_error=v["top1_error"], val_top5_error=v["top5_error"], val_images=v["images"])
            sched.step(last.get("val_top1_error", last["train_loss"]))
            if main:
                metrics.write(json.dumps(last) + "\n")
                metrics.flush()
                _save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                              "epoch": epoch + 1, "step": step, "loader": {"seed": cfg.seed, "next_epoch": epoch + 1},
                              "config": resolved, "model_config": asdict(mcfg), "init": cfg.init,
                              "rng": {"torch": torch.get_rng_state()}}, ckpt_path)
                log(_epoch_line(last))
    finally:
        if metrics:
            metrics.close()
    return last


def _epoch_line(m: dict) -> str:
    s = (f"epoch {m['epoch']}: train loss {m['train_loss']:.3f}, train top-1 error {m['train_top1_error']:.1%}, "
         f"{m['images_per_second'] or 0:,.0f} img/s")
    if "val_top1_error" in m:
        s += f"; val top-1/top-5 error {m['val_top1_error']:.1%} / {m['val_top5_error']:.1%}"
    return s + f"; lr {m['lr']:.0e}"


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False, dynamic_ncols=True)
