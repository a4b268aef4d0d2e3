"""Top-1 / top-5 error, centre crop or the paper's ten views (softmax averaged)."""

from __future__ import annotations

import torch

__all__ = ["topk_correct", "predict", "evaluate"]


def topk_correct(logits_or_probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k outputs, for each k; label -1 (padding)
    never counts."""
    valid = labels >= 0
    kmax = min(max(ks), logits_or_probs.shape[1])  # fewer than 5 classes: top-5 is every class
    top = logits_or_probs.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]
    return [int((hit[:, :k].any(1) & valid).sum()) for k in ks]


def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax of one view (N, 3, H, W), or the mean of the softmaxes of ten
    views (N, 10, 3, H, W)."""
    if images.dim() == 5:
        n, v = images.shape[:2]
        probs = torch.softmax(model(images.flatten(0, 1)).float(), dim=1)
        return probs.view(n, v, -1).mean(1)
    return torch.softmax(model(images).float(), dim=1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, autocast=None, channels_last: bool = False,
             distributed: bool = False) -> dict:
    """Top-1/top-5 error over one epoch of `loader` (labels -1 are padding and skipped)."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last) if images.dim() == 4 else images
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            probs = predict(model, images)
        c1, c5 = topk_correct(probs, labels.to(probs.device))
        counts += torch.tensor([c1, c5, int((labels >= 0).sum())], dtype=torch.float64)
    if distributed:
        import torch.distributed as dist

        c = counts.to(device)
        dist.all_reduce(c)
        counts = c.cpu()
    c1, c5, n = counts.tolist()
    return {"top1_error": 1 - c1 / n if n else None, "top5_error": 1 - c5 / n if n else None, "images": int(n)}


def evaluate_run(run_dir: str, data: str, ten_crop: bool = False, backend: str = "dali", devices: str = "auto",
                 batch_size: int = 64, workers: int = 0) -> dict:
    """Top-1/top-5 error of a run's last checkpoint on the validation split of `data`."""
    from imgprep.errors import ImgprepError
    from imgprep.loaders import make_loader

    from .model import AlexNetConfig, TwoTowerAlexNet
    from .train import load_checkpoint, parse_devices

    ckpt = load_checkpoint(run_dir)
    mcfg = AlexNetConfig(**{**ckpt["model_config"], "remove": tuple(ckpt["model_config"]["remove"])})
    devs = parse_devices(devices)
    model = TwoTowerAlexNet(mcfg)
    model.load_state_dict(ckpt["model"])
    model.place(*devs)
    loader = make_loader(data, "val", batch_size, "ten_crop" if ten_crop else "eval", backend=backend,
                         device="gpu" if devs[0].type == "cuda" else "cpu", workers=workers,
                         normalize=ckpt["config"]["normalize"])
    n_classes = len(loader.info.classes)
    if n_classes != mcfg.num_classes:
        raise ImgprepError(f"{data}: {n_classes} classes, but the model of {run_dir} has {mcfg.num_classes}")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if devs[0].type == "cuda" else None
    r = evaluate(model, loader, devs[0], autocast)
    r.update(ten_crop=ten_crop, epoch=ckpt["epoch"])
    return r
