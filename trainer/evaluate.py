"""Top-1 / top-5 error, centre crop or the paper's ten views (softmax averaged): pure functions of a
model and batches; loading a run to evaluate it is `runtime.evaluate_run`."""

from __future__ import annotations

import contextlib

import torch

from imgprep.loader_base import PAD_LABEL

__all__ = ["topk_hits", "topk_correct", "predict", "evaluate"]


def topk_hits(logits_or_probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """(len(ks),) int64 on the outputs' device: samples whose label is among the top-k outputs, for
    each k; a padding label never counts. No host read: the training loop sums these on the device."""
    valid = labels != PAD_LABEL
    kmax = min(max(ks), logits_or_probs.shape[1])  # fewer than 5 classes: top-5 is every class
    top = logits_or_probs.topk(kmax, dim=1).indices  # (N, kmax)
    hit = top == labels[:, None]
    return torch.stack([(hit[:, :k].any(1) & valid).sum() for k in ks])


def topk_correct(logits_or_probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> list[int]:
    """`topk_hits` read to the host, as ints."""
    return topk_hits(logits_or_probs, labels, ks).tolist()


def predict(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax of one view (N, 3, H, W), or the mean of the softmaxes of ten
    views (N, 10, 3, H, W)."""
    if images.dim() == 5:
        n, v = images.shape[:2]
        probs = torch.softmax(model(images.flatten(0, 1)).float(), dim=1)
        return probs.view(n, v, -1).mean(1)
    return torch.softmax(model(images).float(), dim=1)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    device: torch.device,
    ctx=None,
    channels_last: bool = False,
    distributed: bool = False,
) -> dict:
    """Top-1/top-5 error over one epoch of `loader` (padding labels are skipped).

    Args:
        ctx: context for the forward pass (bf16 autocast on a GPU); none by default.
        distributed: sum the counts over the DDP ranks.
    """
    model.eval()
    counts = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, samples, summed loss
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with ctx if ctx is not None else contextlib.nullcontext():
            probs = predict(model, images)
        labels = labels.to(probs.device)
        c1, c5 = topk_correct(probs, labels)
        valid = labels != PAD_LABEL
        # cross-entropy of the (view-averaged) softmax: -log p[label], padding left out
        nll = -probs[valid].gather(1, labels[valid, None]).clamp(min=1e-12).log().sum()
        counts += torch.tensor([c1, c5, int(valid.sum()), float(nll)], dtype=torch.float64)
    if distributed:
        import torch.distributed as dist

        c = counts.to(device)
        dist.all_reduce(c)
        counts = c.cpu()
    c1, c5, n, nll = counts.tolist()
    return {
        "top1_error": 1 - c1 / n if n else None,
        "top5_error": 1 - c5 / n if n else None,
        "loss": nll / n if n else None,
        "images": int(n),
    }
