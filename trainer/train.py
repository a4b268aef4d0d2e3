"""`imgprep train`: the paper's recipe (section 5) on the bundled loader.

SGD with momentum 0.9 and weight decay 5e-4, batch 128, learning rate 0.01 divided by 10 when the
validation error stops improving (at most three times). One process drives one or two devices
(the two-tower model-parallel split); `torchrun` adds data parallelism (DDP) across processes
and machines. A checkpoint after every epoch makes `--resume` exact.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import IO

import torch
from torch import nn

from imgprep._mp import InterruptGuard
from imgprep.config import flag
from imgprep.errors import ImgprepError
from imgprep.fileio import FolderLock, is_utf8, write_json_atomic
from imgprep.geometry import train_crop
from imgprep.loader_base import PAD_LABEL

from .config import RESUME_MAY_CHANGE, AlexNetConfig, TrainConfig, may_change
from .evaluate import evaluate, topk_hits
from .model import TwoTowerAlexNet
from .runtime import (
    AUTO_NORMALIZE,
    CHECKPOINT,
    autocast,
    build_model,
    check_input_size,
    load_checkpoint,
    maybe_compile,
    parse_devices,
    remove_leftovers,
    save_checkpoint,
)

__all__ = ["TrainConfig", "train", "setup", "train_one_epoch", "end_of_epoch", "save_run", "Run", "Preempted"]


def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


@dataclass
class Run:
    """A training run, set up: what the epoch loop needs, passed explicitly."""

    cfg: TrainConfig
    resolved: dict  # the configuration as run (saved in config.json and every checkpoint)
    model_config: AlexNetConfig
    devices: tuple[torch.device, torch.device]
    rank: int
    world: int
    model: TwoTowerAlexNet
    net: nn.Module  # the model, or its DDP wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    train_loader: object
    val_loader: object | None
    start_epoch: int = 0
    step: int = 0
    metrics: IO | None = None  # metrics.jsonl (rank 0 only)
    lock: FolderLock | None = None  # RUN_DIR's writer lock (rank 0 only)
    guard: InterruptGuard = field(default_factory=InterruptGuard)  # Ctrl-C, even one swallowed in a callback
    tb: object | None = None  # a TensorBoard SummaryWriter on RUN_DIR/tensorboard (rank 0, where installed)
    forward: nn.Module | None = None  # what a training step calls: `net` compiled, or `net` itself
    compile_mode: str | None = None  # torch.compile's mode when compiled
    resume_at: dict | None = None  # a checkpoint written inside epoch `start_epoch`: its position there

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def gpu(self) -> bool:
        return self.devices[0].type == "cuda"

    @property
    def channels_last(self) -> bool:
        return self.gpu and self.cfg.channels_last

    def autocast(self):
        return autocast(self.devices[0], self.cfg.bf16)

    def log_metrics(self, rec: dict) -> None:
        """A line of metrics.jsonl, and its numbers as TensorBoard scalars (step/... or epoch/...)."""
        if self.metrics is not None:
            self.metrics.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            x = rec["step"] if rec["type"] == "step" else rec["epoch"]
            for k, v in rec.items():
                if k not in ("type", "epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{rec['type']}/{k}", v, x)


def _check_resume(cfg: TrainConfig, mcfg: AlexNetConfig, resume: bool) -> dict | None:
    """The checkpoint to resume from (None for a new run); refuses a mismatch or a used RUN_DIR."""
    ckpt_path = os.path.join(cfg.run_dir, CHECKPOINT)
    if not resume:
        if os.path.exists(ckpt_path):
            raise ImgprepError(
                f"{cfg.run_dir}: already holds a run; pass --resume to continue it, or choose another RUN_DIR"
            )
        return None
    ckpt = load_checkpoint(cfg.run_dir)
    changed = resume_differences(ckpt["config"], cfg)
    if changed:
        raise ImgprepError(
            f"{ckpt_path}: --resume with other settings than the run's ({'; '.join(changed)}); "
            f"resume with the run's settings (only {may_change()} may change), "
            "or start a new run in another RUN_DIR"
        )
    if ckpt["model_config"] != asdict(mcfg):
        diff = [k for k in asdict(mcfg) if ckpt["model_config"].get(k) != asdict(mcfg)[k]]
        raise ImgprepError(
            f"{ckpt_path}: checkpoint of another architecture ({', '.join(diff)} differ); "
            "use the run's settings or another RUN_DIR"
        )
    return ckpt


def normalize_of(cfg: TrainConfig) -> str:
    """The pixel normalization a run uses: `--normalize`, or for auto the one that fits its init."""
    return AUTO_NORMALIZE.get(cfg.init, "mean_image") if cfg.normalize == "auto" else cfg.normalize


def resume_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """'--lr was 0.01, now 0.5' for each setting of `cfg` that differs from the run's saved
    configuration, except those that may change on resume. A setting the run predates counts as
    its default."""
    out = []
    for f in fields(cfg):
        if f.name in RESUME_MAY_CHANGE:
            continue
        now = normalize_of(cfg) if f.name == "normalize" else getattr(cfg, f.name)  # saved resolved
        was = saved.get(f.name, f.default if f.default is not MISSING else None)
        if isinstance(now, tuple):
            was = tuple(was) if isinstance(was, (list, tuple)) else was
        if was != now:
            out.append(f"{flag(f.name)} was {was!r}, now {now!r}")
    return out


def _init_distributed(world: int, devices) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if devices[0].type == "cuda" else "gloo")
        if devices[0].type == "cuda":
            torch.cuda.set_device(devices[0])


def _loaders(cfg: TrainConfig, dataset, normalize: str, rank: int, world: int, gpu: bool):
    """The training and validation loaders of one rank (each loads its share of the global batch)."""
    from imgprep.loaders import make_loader

    kw = dict(
        rank=rank,
        world_size=world,
        device="gpu" if gpu else "cpu",
        seed=cfg.seed,
        normalize=normalize,
        **cfg.loader_settings(),
    )
    if gpu:  # the loader's last op writes the model's input as it wants it: no conversion pass per step
        kw.update(dtype="bfloat16" if cfg.bf16 else "float32", channels_last=cfg.channels_last)
    train_loader = make_loader(dataset, "train", cfg.batch_size, "train", lighting_std=cfg.lighting_std, **kw)
    val_batch = dataset.batch_within("val", cfg.batch_size // world, world) * world  # global, like --batch-size
    val_loader = make_loader(dataset, "val", val_batch, "eval", **kw) if "val" in dataset.splits else None
    for loader in (train_loader, val_loader):  # their start-up here, so that epoch 1 runs as fast as the rest
        if loader is not None:
            loader.warm_up()
    return train_loader, val_loader


def setup(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> Run:
    """Check the settings and the dataset, build the model, optimizer, scheduler and loaders, and
    restore the checkpoint when resuming. Rank 0 holds RUN_DIR's lock until the run ends: one
    writer per run folder."""
    if _dist_env()[0] != 0:
        return _build_run(cfg, resume, log)
    if os.path.exists(cfg.run_dir) and not os.path.isdir(cfg.run_dir):
        raise ImgprepError(f"{cfg.run_dir}: exists and is not a folder; choose another --run")
    created = not os.path.exists(cfg.run_dir)
    os.makedirs(cfg.run_dir, exist_ok=True)
    lock = None
    try:
        lock = FolderLock(cfg.run_dir, "RUN_DIR")
        remove_leftovers(cfg.run_dir)  # ours, from a run killed mid-write; safe under the lock
        run = _build_run(cfg, resume, log)
        run.lock = lock
        return run
    except BaseException:
        if lock is not None:
            lock.release()
        if created and not os.listdir(cfg.run_dir):  # refused before anything was written
            os.rmdir(cfg.run_dir)
        raise


def _build_run(cfg: TrainConfig, resume: bool, log: Callable[[str], None]) -> Run:
    from imgprep.dataset import open_dataset

    rank, world, local_rank = _dist_env()
    dataset = open_dataset(cfg.data, cfg.retry())  # the manifest and statistics, read once for the whole run
    info = dataset.info("train")  # errors on a missing split or statistics
    devices = parse_devices(cfg.devices, local_rank, shift=world > 1)
    if cfg.batch_size % world:
        raise ImgprepError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
    normalize = normalize_of(cfg)
    mcfg = cfg.model_config(len(info.classes))
    try:
        mcfg.validate()
    except ValueError as exc:
        raise ImgprepError(str(exc)) from None
    ckpt = _check_resume(cfg, mcfg, resume)
    model = build_model(mcfg, cfg.init, devices, cfg.seed, cfg.channels_last)
    check_input_size(model, train_crop(info.size), cfg.data, devices[0])  # the loader's crop
    model.train()
    _init_distributed(world, devices)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.1, patience=cfg.lr_patience, min_lr=cfg.base_lr * 0.1**cfg.lr_drops * 0.999
    )
    net = model
    if world > 1:
        same = devices[0] == devices[1] and devices[0].type == "cuda"
        net = nn.parallel.DistributedDataParallel(model, device_ids=[devices[0]] if same else None)
    train_loader, val_loader = _loaders(cfg, dataset, normalize, rank, world, devices[0].type == "cuda")
    resolved = {
        **asdict(cfg),
        "num_classes": mcfg.num_classes,
        "normalize": normalize,
        "devices_resolved": [str(d) for d in devices],
        "world_size": world,
        "batch_per_rank": train_loader.cfg.rank_batch,
        "size": info.size,  # the dataset's stored size and class names: `eval` checks its data against them
        "class_names": [c["name"] for c in info.classes],
    }
    run = Run(cfg, resolved, mcfg, devices, rank, world, model, net, opt, sched, train_loader, val_loader)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        run.start_epoch, run.step = ckpt["epoch"], ckpt["step"]
        run.resume_at = _position(ckpt, world, rank, cfg.run_dir)
        if run.resume_at is None:
            torch.set_rng_state(ckpt["rng"]["torch"])
            log(f"resuming {cfg.run_dir} after epoch {run.start_epoch}")
        else:  # the RNG state is restored once the loader has replayed the epoch's first batches
            log(f"resuming {cfg.run_dir} in epoch {run.start_epoch + 1} after batch {run.resume_at['batch']}")
    _compile(run, log)
    if run.main:
        write_json_atomic(os.path.join(cfg.run_dir, "config.json"), resolved)
        # an append-only log, open for the whole run and closed by train()
        run.metrics = open(os.path.join(cfg.run_dir, "metrics.jsonl"), "a", encoding="utf-8")  # noqa: SIM115
        run.tb = _tensorboard(cfg.run_dir)
    return run


def _position(ckpt: dict, world: int, rank: int, run_dir: str) -> dict | None:
    """Where inside an epoch a checkpoint was written ({"batch", "sums" of this rank, "rng"}), or None
    for one written at an epoch's end."""
    pos = ckpt.get("position")
    if not pos:
        return None
    ok = (
        isinstance(pos, dict)
        and isinstance(pos.get("batch"), int)
        and pos["batch"] >= 0
        and isinstance(pos.get("world_size"), int)
        and isinstance(pos.get("sums"), list)
        and len(pos["sums"]) == pos["world_size"]
        and all(isinstance(r, list) and len(r) == 4 and all(isinstance(v, float) for v in r) for r in pos["sums"])
    )
    if not ok:
        raise ImgprepError(
            f"{os.path.join(run_dir, CHECKPOINT)}: its position inside the epoch is damaged or crafted; "
            "start a new run in another RUN_DIR"
        )
    if pos["world_size"] != world:
        raise ImgprepError(
            f"checkpoint written inside epoch {ckpt['epoch'] + 1} by {pos['world_size']} processes; "
            f"resume it with {pos['world_size']} (the epoch's plan depends on it), or after the epoch ends"
        )
    return {"batch": int(pos["batch"]), "sums": pos["sums"][rank], "rng": ckpt["rng"]["torch"]}


def _tensorboard(run_dir: str):
    """A SummaryWriter on RUN_DIR/tensorboard where the [tensorboard] extra is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    if not is_utf8(run_dir):
        print("note: RUN_DIR's name is not UTF-8; no TensorBoard scalars (metrics.jsonl has them)", file=sys.stderr)
        return None
    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def _compile(run: Run, log: Callable[[str], None]) -> None:
    """Set `run.forward`: the model compiled (`--compile`, by default on CUDA), or as it is."""
    lo = run.train_loader
    example = torch.zeros(lo.cfg.rank_batch, 3, lo.cfg.crop, lo.cfg.crop, device=run.devices[0], dtype=lo.dtype)
    if run.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    quiet = log if run.main else lambda s: None
    run.forward, run.compile_mode = maybe_compile(
        run.net, example, run.devices, run.world, run.cfg.compile, run.autocast, quiet
    )
    if run.compile_mode is not None and run.main:
        log(f"compiled the model ({run.compile_mode}) in {time.perf_counter() - t0:.0f} s")
    run.resolved["compiled"] = run.compile_mode


def train_one_epoch(run: Run, epoch: int, progress: bool = True, on_step: Callable | None = None) -> torch.Tensor:
    """One epoch of SGD steps; returns the sums (loss, top-1 hits, top-5 hits, samples) of this rank.

    The step never waits for the host: the sums stay on the device and are read only at log points
    (every `log_every` steps and the epoch's last), so the GPU runs ahead of Python.
    """
    cfg, dev = run.cfg, run.devices[0]
    loader = run.train_loader
    loader.set_epoch(epoch)
    run.net.train()
    n_batches = min(cfg.steps_per_epoch, len(loader)) if cfg.steps_per_epoch else len(loader)
    bar = _bar(n_batches, f"epoch {epoch + 1}/{cfg.epochs}", progress and run.main)
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_LABEL, reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss, top1 hits, top5 hits, samples
    # the same sums since the last log point, and the first step whose loss was not finite (-1: none)
    since_log = torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64, device=dev)
    batches, skip = iter(loader), 0
    if run.resume_at is not None and epoch == run.start_epoch:  # a checkpoint from inside this epoch
        skip = min(run.resume_at["batch"], n_batches)
        for _ in range(skip):  # replayed, not trained: the loader draws its windows and flips as before
            next(batches)
        sums += torch.tensor(run.resume_at["sums"], dtype=torch.float64, device=dev)
        torch.set_rng_state(run.resume_at["rng"])  # dropout continues where it stopped
        bar.update(skip)
    t_log = time.perf_counter()
    for i, (images, labels) in enumerate(batches, start=skip):
        run.guard.check()
        if i >= n_batches:
            break
        if epoch < cfg.warmup_epochs:  # linear warm-up, per step: (step + 1) / warm-up steps of the lr
            run.opt.param_groups[0]["lr"] = cfg.base_lr * (run.step + 1) / (cfg.warmup_epochs * n_batches)
        if run.compile_mode == "reduce-overhead":  # a new step: the last one's graph outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        valid = (labels != PAD_LABEL).sum()  # a device scalar
        with run.autocast():
            logits = run.forward(images)
            loss = loss_fn(logits.float(), labels) / valid.clamp(min=1)
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        run.opt.step()
        run.step += 1
        if on_step is not None:
            on_step(run.step, run.model, images, labels)
        step_sums = torch.cat([(loss.detach() * valid).reshape(1), topk_hits(logits.detach(), labels), valid[None]])
        sums += step_sums
        since_log[:4] += step_sums
        # on the device, no host read: remember the first step whose loss was NaN or infinite
        since_log[4] = torch.where((since_log[4] < 0) & ~torch.isfinite(loss.detach()), run.step, since_log[4])
        bar.update(1)
        log_point = run.step % cfg.log_every == 0 or i == n_batches - 1
        if log_point:
            t_log = _log_step(run, epoch, since_log, t_log, bar)
        if i < n_batches - 1 and _stop_or_save(run, epoch, i + 1, sums, log_point):
            bar.close()
            raise Preempted(epoch, i + 1)
    bar.close()
    return sums


class Preempted(Exception):
    """SIGTERM: the run saved its position inside epoch `epoch` (after `batch` batches) and stops."""

    def __init__(self, epoch: int, batch: int):
        super().__init__(epoch, batch)
        self.epoch, self.batch = epoch, batch


def _stop_or_save(run: Run, epoch: int, batch: int, sums: torch.Tensor, log_point: bool) -> bool:
    """After a step: write a checkpoint of the position when SIGTERM came or `--checkpoint-every`
    steps have passed; True to stop (SIGTERM). One process decides alone; data-parallel ranks agree
    at log points (a read they make anyway), so all stop after the same step."""
    stop = (log_point or run.world == 1) and _agreed(run, run.guard.terminated)
    every = run.cfg.checkpoint_every
    if stop or (every and run.step % every == 0):
        save_run(run, epoch, position=(batch, sums))
    return stop


def _log_step(run: Run, epoch: int, since_log: torch.Tensor, t_log: float, bar) -> float:
    """One metrics.jsonl line for the steps since the last one (the one host read of them); resets the
    sums. A loss that was not finite stops the run here, before any checkpoint holds its weights."""
    loss_sum, h1, h5, n, bad_step = since_log.tolist()
    since_log[:4].zero_()
    if bad_step >= 0:
        raise non_finite_error(run, epoch, int(bad_step), "the loss is")
    now = time.perf_counter()
    if not run.main:
        return now
    rec = {
        "type": "step",
        "epoch": epoch + 1,
        "step": run.step,
        "loss": round(loss_sum / max(1, n), 5),
        "top1_error": round(1 - h1 / max(1, n), 4),
        "top5_error": round(1 - h5 / max(1, n), 4),
        "lr": run.opt.param_groups[0]["lr"],
        "images_per_second": round(n * run.world / (now - t_log), 1),
    }
    run.log_metrics(rec)
    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.0e}")
    return now


def non_finite_error(run: Run, epoch: int, step: int, what: str) -> ImgprepError:
    """The one line for a run whose loss or weights stopped being finite: no checkpoint is written."""
    kept = os.path.join(run.cfg.run_dir, CHECKPOINT)
    kept = f"the last good checkpoint {kept} is kept" if os.path.exists(kept) else "no checkpoint was written"
    return ImgprepError(
        f"epoch {epoch + 1}, step {step}: {what} not finite (NaN or infinite); the run stops and {kept}; "
        "lower --lr (or raise --warmup-epochs) and train again"
    )


def _weights_finite(model: nn.Module) -> bool:
    """Whether every parameter is finite (a host read per parameter: once an epoch)."""
    return all(bool(p.detach().isfinite().all()) for p in model.parameters())


def end_of_epoch(run: Run, epoch: int, sums: torch.Tensor, seconds: float, log: Callable[[str], None]) -> dict:
    """Sum the epoch's counts over ranks, validate, step the lr schedule, write metrics and the checkpoint."""
    if not _weights_finite(run.model):  # the epoch's last update can break the weights after its loss
        raise non_finite_error(run, epoch, run.step, "the weights after the update are")
    if run.world > 1:
        import torch.distributed as dist

        s = sums.to(run.devices[0])
        dist.all_reduce(s)
        sums = s.cpu()
    loss_sum, h1, h5, n = sums.tolist()
    last = {
        "type": "epoch",
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(1, n),
        "train_top1_error": 1 - h1 / max(1, n),
        "train_top5_error": 1 - h5 / max(1, n),
        "lr": run.opt.param_groups[0]["lr"],
        "seconds": round(seconds, 2),
        "corrupt_skipped": run.train_loader.corrupt_skipped,
        "images_per_second": round(n / seconds, 1) if seconds else None,
    }
    if run.val_loader is not None:
        v = evaluate(run.model, run.val_loader, run.devices[0], run.autocast(), run.channels_last, run.world > 1)
        last.update(
            val_top1_error=v["top1_error"], val_top5_error=v["top5_error"], val_loss=v["loss"], val_images=v["images"]
        )
    if epoch + 1 > run.cfg.warmup_epochs:  # the plateau schedule starts after the warm-up
        run.sched.step(last.get("val_top1_error", last["train_loss"]))
    if run.main:
        run.log_metrics(last)
        run.metrics.flush()
        if run.tb is not None:
            run.tb.flush()
        save_run(run, epoch + 1)
        log(_epoch_line(last))
    return last


def _agreed(run: Run, local: bool) -> bool:
    """`local` in one process; under DDP, whether any rank says so (every rank must call this)."""
    if run.world == 1:
        return local
    import torch.distributed as dist

    vote = torch.tensor([float(local)], device=run.devices[0])
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def save_run(run: Run, epochs_done: int, position: tuple[int, torch.Tensor] | None = None) -> None:
    """The checkpoint: model, optimizer, scheduler, RNG, configuration, and, inside an epoch, the
    position there (batches done and every rank's sums so far). Written by rank 0; every rank takes part
    in gathering the sums."""
    pos = None
    if position is not None:
        batch, sums = position
        if not _weights_finite(run.model):  # inside an epoch the loss was last read at a log point
            raise non_finite_error(run, epochs_done, run.step, "the weights after the update are")
        all_sums = [sums]
        if run.world > 1:
            import torch.distributed as dist

            all_sums = [torch.zeros_like(sums) for _ in range(run.world)]
            dist.all_gather(all_sums, sums)
        pos = {"batch": batch, "world_size": run.world, "sums": [s.tolist() for s in all_sums]}
    if not run.main:
        return
    save_checkpoint(
        run.cfg.run_dir,
        {
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict(),
            "epoch": epochs_done,
            "step": run.step,
            "position": pos,
            "config": run.resolved,
            "model_config": asdict(run.model_config),
            "rng": {"torch": torch.get_rng_state()},
        },
    )


def train(
    cfg: TrainConfig,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_step: Callable | None = None,
) -> dict:
    """Train (or resume) a run; returns the last epoch's metrics.

    Under torchrun (WORLD_SIZE > 1) each process is one data-parallel rank: it reads its own part
    of every epoch, gradients are all-reduced (DDP), and only rank 0 writes the run folder.
    `on_step(step, model, images, labels)` is called after every optimizer step (for tools and
    tests).
    """
    guard = InterruptGuard(terminate=True)
    with guard:
        run = setup(cfg, resume, log)
        run.guard = guard
        last = {}
        guard.check()
        try:
            for epoch in range(run.start_epoch, cfg.epochs):
                t0 = time.perf_counter()
                sums = train_one_epoch(run, epoch, progress, on_step)
                guard.check()  # a Ctrl-C swallowed anywhere in the epoch stops the run before its checkpoint
                last = end_of_epoch(run, epoch, sums, time.perf_counter() - t0, log)
                if _agreed(run, guard.terminated) and epoch + 1 < cfg.epochs:  # during validation or the checkpoint
                    raise Preempted(epoch + 1, 0)
        except Preempted as p:
            where = f"after batch {p.batch} of epoch {p.epoch + 1}" if p.batch else f"after epoch {p.epoch}"
            log(f"stopped by SIGTERM {where}; checkpoint saved: run the same command with --resume to continue")
            return {"preempted": True, "epoch": p.epoch, "batch": p.batch}
        finally:
            _close(run)
    return last


def _close(run: Run) -> None:
    if run.metrics is not None:
        run.metrics.close()
    if run.tb is not None:
        run.tb.close()
    if run.lock is not None:
        run.lock.release()


def _epoch_line(m: dict) -> str:
    s = (
        f"epoch {m['epoch']}: train loss {m['train_loss']:.3f}, train top-1 error {m['train_top1_error']:.1%}, "
        f"{m['images_per_second'] or 0:,.0f} img/s"
    )
    if "val_top1_error" in m:
        s += f"; val top-1/top-5 error {m['val_top1_error']:.1%} / {m['val_top5_error']:.1%}"
    return s + f"; lr {m['lr']:.0e}"


def _bar(total: int, desc: str, enabled: bool):
    from imgprep.progress import progress_bar

    return progress_bar(total, desc, "batch", enabled, leave=False)
