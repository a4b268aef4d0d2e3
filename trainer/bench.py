"""`imgprep bench train`: AlexNet training images/s per placement, with the loader's rate beside
it, so a user sees whether the model or the data path limits training."""

from __future__ import annotations

import itertools
from dataclasses import asdict

import torch
from torch import nn

from imgprep.loader_base import PAD_LABEL
from imgprep.report import environment, summarize
from imgprep.timing import Throughput, real_samples

from .config import AlexNetConfig, TrainBenchConfig
from .model import forward_macs
from .runtime import autocast, build_model, maybe_compile, parse_devices

__all__ = ["TrainBenchConfig", "bench_train", "available_placements"]


# Peak dense bf16 tensor throughput, TFLOPS, from the vendors' data sheets (SXM parts).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0}


def peak_tflops(devices, override: float | None) -> float | None:
    """Peak TFLOPS of the devices of a placement (`override` per device), None where unknown (CPU)."""
    distinct = {d for d in devices}
    if override is not None:
        return override * len(distinct)
    if any(d.type != "cuda" for d in distinct):
        return None
    names = [torch.cuda.get_device_name(d) for d in distinct]
    peaks = [next((v for k, v in PEAK_BF16_TFLOPS.items() if k in n), None) for n in names]
    return None if None in peaks else sum(peaks)


def available_placements() -> list[str]:
    """cpu, and where GPUs exist cuda:0 (both towers) and cuda:0,cuda:1 (one tower each)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cpu"] + (["cuda:0"] if n >= 1 else []) + (["cuda:0,cuda:1"] if n >= 2 else [])


def _train_rate(model, opt, batches, steps: int, dev: torch.device, graphs: bool = False) -> float:
    """Images/s of forward+backward+step over `steps` batches after one warm-up step.
    graphs: `model` replays CUDA graphs (mark each step's start)."""
    gpu = dev.type == "cuda"
    loss_fn = nn.CrossEntropyLoss(ignore_index=PAD_LABEL)
    timer = Throughput(warmup=1, sync=(lambda: torch.cuda.synchronize(dev)) if gpu else None)
    for x, y in batches:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        if gpu:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(dev):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        timer.step(real_samples(y))
        if timer.steps > steps:
            break
    return timer.images_per_second


def _utilisation(mcfg: AlexNetConfig, crop: int, devs, override, model_rate: float, fed_rate: float) -> dict:
    """FLOPs per training image (3 x the forward's, 2 per multiply-add) and the model FLOPs
    utilisation of both rates against the placement's peak (None where the peak is unknown)."""
    flops = 3 * 2 * forward_macs(mcfg, crop)
    peak = peak_tflops(devs, override)
    return {
        "flops_per_image": flops,
        "peak_tflops": peak,
        "mfu_model": model_rate * flops / (peak * 1e12) if peak else None,
        "mfu_with_loader": fed_rate * flops / (peak * 1e12) if peak else None,
    }


def _loader_batches(loader):
    while True:
        yield from loader


def bench_train(cfg: TrainBenchConfig, log=print) -> dict:
    """Per placement: model-only (synthetic tensors), training fed by the loader, loader-only."""
    from imgprep.bench import loader_rate
    from imgprep.loaders import make_loader

    rows = []
    for placement in cfg.placements or available_placements():
        devs = parse_devices(placement)
        gpu = devs[0].type == "cuda"
        loader = make_loader(
            cfg.data,
            "train",
            cfg.batch_size,
            device="gpu" if gpu else "cpu",
            normalize="mean_image_std",
            **cfg.loader_settings(),
            **({"dtype": "bfloat16", "channels_last": True} if gpu else {}),
        )
        n_cls, crop = len(loader.info.classes), loader.cfg.crop
        model = build_model(cfg.model_config(n_cls), "kaiming", devs, seed=0, channels_last=True)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(cfg.batch_size, 3, crop, crop, device=devs[0]).to(loader.dtype)
        y = torch.randint(0, n_cls, (cfg.batch_size,), device=devs[0])
        example = x.contiguous(memory_format=torch.channels_last) if gpu else x  # as _train_rate feeds it
        net, mode = maybe_compile(model, example, devs, 1, cfg.compile, lambda d=devs[0]: autocast(d), log)
        graphs = mode == "reduce-overhead"
        synthetic = summarize(
            [_train_rate(net, opt, itertools.repeat((x, y)), cfg.steps, devs[0], graphs) for _ in range(cfg.repeats)]
        )
        fed = summarize(
            [_train_rate(net, opt, _loader_batches(loader), cfg.steps, devs[0], graphs) for _ in range(cfg.repeats)]
        )
        only = summarize([loader_rate(loader, cfg.steps) for _ in range(cfg.repeats)])
        row = {
            "placement": placement,
            "model_synthetic": synthetic["median"],
            "model_synthetic_min": synthetic["min"],
            "model_synthetic_max": synthetic["max"],
            "training_with_loader": fed["median"],
            "training_with_loader_min": fed["min"],
            "training_with_loader_max": fed["max"],
            "loader_only": only["median"],
            "loader_only_min": only["min"],
            "loader_only_max": only["max"],
            "limited_by": "data" if only["median"] < synthetic["median"] else "model",
            **_utilisation(model.cfg, crop, devs, cfg.peak_tflops, synthetic["median"], fed["median"]),
            "loader_device": loader.device,
            "compiled": mode,
        }
        rows.append(row)
        log(
            f"  {placement}: model {synthetic['median']:.0f} img/s, with loader {fed['median']:.0f} img/s, "
            f"loader alone {only['median']:.0f} img/s -> limited by {row['limited_by']}"
        )
    return {"benchmark": "train", "config": asdict(cfg), "environment": environment(), "results": rows}
