"""imgprep: ImageNet to training-ready WebDataset shards the AlexNet way, a DALI loader, a trainer.

The public API is imported lazily so that `import imgprep` stays cheap (no cv2, torch or DALI):
`imgprep.prepare(PrepareConfig(...))`, `imgprep.verify(out)`, `imgprep.synthesize(SynthConfig(...))`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "PrepareConfig": "prepare",
    "prepare": "prepare",
    "SynthConfig": "synth",
    "synthesize": "synth",
    "verify": "verify",
    "recompute_stats": "verify",
    "read_manifest": "dataset",
    "load_stats": "dataset",
    "DatasetInfo": "dataset",
    "Dataset": "dataset",
    "open_dataset": "dataset",
    "ImgprepError": "errors",
    "make_loader": "loaders",
    "LoaderConfig": "loader_base",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'imgprep' has no attribute {name!r}")
