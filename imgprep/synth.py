"""`imgprep synth`: a small labelled image set whose classes are learnable from content.

Each class is a coloured shape (its hue and its outline: circle, square, triangle, ring, cross,
star...) placed, scaled and rotated at random on a textured, photo-like background. Image sizes
vary like ImageNet's (shorter side 150-600, aspect 0.5-2), and the fine-grained texture gives
JPEG files of photo-like size. Every image is a function of (seed, split, class, number), so the
set is the same whatever the number of processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .config import SEED_MIN, Settings, setting
from .errors import ImgprepError
from .fileio import atomic_file

__all__ = ["SynthConfig", "class_names", "synth_image", "synthesize"]

SHAPES = ("circle", "square", "triangle", "ring", "cross", "star", "bar", "diamond")
_GOLDEN = 0.6180339887


@dataclass(frozen=True)
class SynthConfig(Settings):
    """Settings of `imgprep synth`."""

    out: str
    classes: int = setting(10, "Classes.", min=1)
    per_class: int = setting(50, "Training images per class.", min=1)
    val_per_class: int | None = setting(
        None, "Validation images per class [default: per-class / 5, at least 1].", min=0
    )
    seed: int = setting(0, "Seed: every image is a function of (seed, split, class, number).", min=SEED_MIN)
    min_side: int = setting(150, "Shortest shorter side of an image.", min=1)
    max_side: int = setting(600, "Longest shorter side of an image.", min=1)
    quality: int = setting(90, "JPEG quality.", min=1, max=100)

    @property
    def val_count(self) -> int:
        """Validation images per class."""
        return max(1, self.per_class // 5) if self.val_per_class is None else self.val_per_class


def _class_hue(c: int) -> float:
    return (c * _GOLDEN) % 1.0


def class_names(n: int) -> list[str]:
    """Readable, sortable class folder names (`00_circle_h000` ...)."""
    w = max(2, len(str(n - 1)))
    return [f"{c:0{w}d}_{SHAPES[c % len(SHAPES)]}_h{int(_class_hue(c) * 360):03d}" for c in range(n)]


def _shape_points(kind: str, r: float) -> list[np.ndarray]:
    """Polygon(s) of a shape of radius r centred at the origin."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    if kind in ("circle", "ring"):
        return [np.stack([np.cos(t), np.sin(t)], 1) * r]
    if kind == "square":
        return [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * r * 0.8]
    if kind == "diamond":
        return [np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]) * r]
    if kind == "triangle":
        a = np.array([90, 210, 330]) * np.pi / 180
        return [np.stack([np.cos(a), -np.sin(a)], 1) * r]
    if kind == "star":
        a = np.arange(10) * np.pi / 5
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        return [np.stack([np.cos(a) * rr, np.sin(a) * rr], 1)]
    if kind == "bar":
        return [np.array([[-1, -0.25], [1, -0.25], [1, 0.25], [-1, 0.25]]) * r]
    if kind == "cross":
        w = 0.3
        return [np.array([[-1, -w], [1, -w], [1, w], [-1, w]]) * r, np.array([[-w, -1], [w, -1], [w, 1], [-w, 1]]) * r]
    raise ValueError(kind)


def synth_image(rng: np.random.Generator, label: int, min_side: int = 150, max_side: int = 600) -> np.ndarray:
    """One RGB uint8 image of class `label`."""
    import cv2

    short = int(rng.integers(min_side, max_side + 1))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
    if aspect >= 1:
        h, w = short, int(round(short * aspect))
    else:
        w, h = short, int(round(short / aspect))
    # Background: smooth random colour field plus grain at two scales (photo-like entropy).
    grid = rng.uniform(30, 220, (int(rng.integers(3, 8)), int(rng.integers(3, 8)), 3)).astype(np.float32)
    grid = 0.55 * grid + 0.45 * grid.mean(axis=2, keepdims=True)  # muted, like most photos
    bg = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    coarse = cv2.resize(rng.normal(0, 18, (h // 4 + 1, w // 4 + 1, 3)).astype(np.float32), (w, h))
    bg += coarse + rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    # Object: class hue and shape; position near the centre so centre crops keep most of it.
    hue = (_class_hue(label) + rng.normal(0, 0.02)) % 1.0
    hsv = np.uint8([[[int(hue * 180) % 180, int(rng.uniform(170, 255)), int(rng.uniform(150, 255))]]])
    color = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(float).tolist()
    kind = SHAPES[label % len(SHAPES)]
    r = short * rng.uniform(0.18, 0.32)
    cx = w / 2 + rng.uniform(-0.15, 0.15) * short
    cy = h / 2 + rng.uniform(-0.15, 0.15) * short
    ang = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    mask = np.zeros((h, w), np.uint8)
    polys = [np.round((p @ rot.T + [cx, cy]) * 16).astype(np.int32) for p in _shape_points(kind, r)]
    for p in polys:  # one at a time: overlapping parts of a cross must stay filled
        cv2.fillPoly(mask, [p], 255, lineType=cv2.LINE_AA, shift=4)
    if kind == "ring":
        inner = [np.round((p * 0.55 @ rot.T + [cx, cy]) * 16).astype(np.int32) for p in _shape_points(kind, r)]
        cv2.fillPoly(mask, inner, 0, lineType=cv2.LINE_AA, shift=4)
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    shade = 1.0 + 0.15 * cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h))[:, :, None]
    obj = np.array(color, np.float32) * shade + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    img = bg * (1 - alpha) + obj * alpha
    return np.clip(img, 0, 255).astype(np.uint8)


def _write_one(args) -> None:
    path, seed_seq, label, cfg = args
    from PIL import Image

    rng = np.random.default_rng(seed_seq)
    img = synth_image(rng, label, cfg.min_side, cfg.max_side)
    with atomic_file(path, fsync=False) as f:  # a synthetic set is cheap to make again
        Image.fromarray(img).save(f, "JPEG", quality=cfg.quality)


def synthesize(cfg: SynthConfig, workers: int = 1, progress: bool = False) -> dict:
    """Write `OUT/{train,val}/<class>/<class>_<n>.jpg`. Returns counts per split."""
    if cfg.classes < 1 or cfg.per_class < 1 or cfg.val_count < 0:
        raise ImgprepError("--classes and --per-class must be at least 1, --val-per-class at least 0")
    if not 1 <= cfg.min_side <= cfg.max_side:
        raise ImgprepError("image side range is empty; need 1 <= min side <= max side")
    if os.path.exists(cfg.out) and os.listdir(cfg.out):
        raise ImgprepError(f"{cfg.out}: not empty; choose a new folder for the synthetic set")
    names = class_names(cfg.classes)
    jobs = []
    for split_no, (split, n) in enumerate((("train", cfg.per_class), ("val", cfg.val_count))):
        for c, name in enumerate(names):
            if n == 0:
                continue
            d = os.path.join(cfg.out, split, name)
            os.makedirs(d, exist_ok=True)
            for i in range(n):
                jobs.append((os.path.join(d, f"{name}_{i:05d}.jpg"), [cfg.seed, split_no, c, i], c, cfg))
    if workers > 1:
        from ._mp import init_worker, pool_context

        with pool_context().Pool(workers, initializer=init_worker, initargs=(os.getpid(),)) as pool:
            for _ in pool.imap_unordered(_write_one, jobs, chunksize=8):
                pass
    else:
        for j in jobs:
            _write_one(j)
    return {"train": cfg.classes * cfg.per_class, "val": cfg.classes * cfg.val_count, "classes": cfg.classes}
