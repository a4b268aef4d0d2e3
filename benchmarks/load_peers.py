"""The loaders a user would pick instead of imgprep's, run by `bench_load.py --peers-python PY` in
an environment that has them (they pin other torch versions than imgprep): over an ImageFolder of
the very JPEGs of the prepared train shards (256x256, extracted by bench_load.py), train-mode
batches as each library's users write them, steady state after `--warmup` batches:

  timm             timm.data.create_loader(ImageDataset, is_training=True): RandomResizedCrop 224,
                   horizontal flip, normalize (timm's training defaults, no extra augmentation)
  litdata          litdata.optimize of the same JPEG bytes (not timed), then StreamingDataset +
                   StreamingDataLoader; PIL decode, random 224 crop, flip, normalize per sample

Prints one JSON line: {name: images/s} (a peer whose package is missing is left out, with a note).

Usage: PY benchmarks/load_peers.py FOLDER --batch-size 128 --workers 2 --warmup 5 --steps 45
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rate(loader, warmup: int, steps: int) -> float:
    done, n, t = 0, 0, None
    while True:
        for images, _ in loader:
            done += 1
            if done == warmup:
                t = time.perf_counter()
            elif done > warmup:
                n += len(images)
            if done >= warmup + steps:
                return n / (time.perf_counter() - t)


def timm_rate(folder: str, a) -> float:
    from timm.data import ImageDataset, create_loader

    ds = ImageDataset(folder)
    loader = create_loader(ds, input_size=(3, 224, 224), batch_size=a.batch_size, is_training=True,
                           num_workers=a.workers, use_prefetcher=False, persistent_workers=True)  # fmt: skip
    return _rate(loader, a.warmup, a.steps)


def _to_sample(path: str) -> dict:
    with open(path, "rb") as f:
        return {"jpg": f.read(), "cls": int(os.path.basename(os.path.dirname(path)).lstrip("c") or 0)}


class _Train:
    """PIL decode, random 224 crop, flip, normalize: what a litdata user writes per sample."""

    def __init__(self):
        self.t = None

    def __call__(self, sample):
        if self.t is None:
            import torchvision.transforms as T

            self.t = T.Compose([T.RandomCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
        import io

        from PIL import Image

        return self.t(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")), sample["cls"]


_TRAIN = _Train()


def litdata_rate(folder: str, a) -> float:
    import litdata as ld

    out = os.path.join(tempfile.mkdtemp(prefix="litdata-"), "optimized")
    files = sorted(glob.glob(os.path.join(folder, "*", "*.jpg")))
    ld.optimize(fn=_to_sample, inputs=files, output_dir=out, chunk_bytes="64MB", num_workers=1)
    loader = ld.StreamingDataLoader(TrainStream(out, shuffle=True), batch_size=a.batch_size, num_workers=a.workers)
    return _rate(loader, a.warmup, a.steps)


try:  # at import: spawned DataLoader workers unpickle the dataset by its module-level name
    import litdata as _ld
except ImportError:
    _ld = None

if _ld is not None:

    class TrainStream(_ld.StreamingDataset):
        """A StreamingDataset applying `_Train` per sample."""

        def __getitem__(self, index):
            return _TRAIN(super().__getitem__(index))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=45)
    a = ap.parse_args()
    out = {}
    for name, fn, module in (("timm", timm_rate, "timm"), ("litdata", litdata_rate, "litdata")):
        try:
            __import__(module)
        except ImportError:
            print(f"note: no {module} here (pip install {module}); skipped", file=sys.stderr)
            continue
        out[name] = fn(a.folder, a)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
