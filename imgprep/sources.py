"""Where images come from: a source lists (reference, label) items per split and reads bytes.

Class index = position of the class name in sorted order (the torchvision/ImageNet convention),
taken from the training split and shared by every split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import ImgprepError

__all__ = ["Item", "FolderSource", "SourceIndex", "discover"]


@dataclass(frozen=True)
class Item:
    """One source file: a reference the source can read, and its class index."""

    ref: str
    label: int


class FolderSource:
    """Files under a root folder, referenced by their POSIX path relative to it."""

    kind = "folders"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def read(self, ref: str) -> bytes:
        """The bytes of one file."""
        with open(os.path.join(self.root, ref), "rb") as f:
            return f.read()


@dataclass
class SourceIndex:
    """Everything `prepare` needs to plan: classes, items per split, what was skipped."""

    source: FolderSource
    layout: str
    classes: list[str]
    splits: dict[str, list[Item]]
    skipped: dict[str, int] = field(default_factory=dict)  # hidden/stray files per split


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


def _class_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and _visible(e.name))


def _walk_class(root: str, split_dir: str, cls: str) -> tuple[list[str], int]:
    """Relative paths of the visible files under one class folder (recursively), and hidden count."""
    refs, hidden = [], 0
    base = os.path.join(root, split_dir, cls) if split_dir else os.path.join(root, cls)
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        hidden += sum(1 for d in dirnames if not _visible(d))
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in sorted(filenames):
            if not _visible(name):
                hidden += 1
                continue
            refs.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return refs, hidden


def discover(src: str, split: str = "train") -> SourceIndex:
    """Index a folder holding `train/<class>/...` (and optionally `val/<class>/...`), or a
    folder of class folders whose split is `split`.

    Raises:
        ImgprepError: SRC missing, not a folder, empty, or without class folders or files.
    """
    if not os.path.exists(src):
        raise ImgprepError(f"{src}: no such folder; give the folder that holds your images")
    if not os.path.isdir(src):
        raise ImgprepError(f"{src}: not a folder; give the folder that holds train/<class>/ or <class>/ folders")
    entries = [e for e in os.listdir(src) if _visible(e)]
    if not entries:
        raise ImgprepError(f"{src}: folder is empty; it should hold train/<class>/ or <class>/ folders of images")
    has_splits = any(os.path.isdir(os.path.join(src, s)) for s in ("train", "val"))
    root = os.path.abspath(src)
    if has_splits:
        split_dirs = {s: s for s in ("train", "val") if os.path.isdir(os.path.join(src, s))}
        layout = "split-folders"
    else:
        split_dirs = {split: ""}
        layout = "class-folders"
    per_split_classes = {s: _class_dirs(os.path.join(root, d)) for s, d in split_dirs.items()}
    class_split = "train" if "train" in split_dirs else next(iter(split_dirs))
    classes = per_split_classes[class_split]
    if not classes:
        where = os.path.join(src, split_dirs[class_split]) if split_dirs[class_split] else src
        raise ImgprepError(f"{where}: no class folders found; expected one sub-folder of images per class")
    index = {c: i for i, c in enumerate(classes)}
    splits, skipped = {}, {}
    for s, d in split_dirs.items():
        unknown = [c for c in per_split_classes[s] if c not in index]
        if unknown:
            raise ImgprepError(
                f"{os.path.join(src, d)}: class folder {unknown[0]!r} is not a class of the {class_split} split "
                f"({len(unknown)} unknown); every split must use the {class_split} classes"
            )
        split_root = os.path.join(root, d) if d else root
        stray = sum(1 for e in os.scandir(split_root) if not e.is_dir() or not _visible(e.name))
        items, hidden = [], stray
        for c in per_split_classes[s]:
            refs, h = _walk_class(root, d, c)
            hidden += h
            items += [Item(r, index[c]) for r in refs]
        splits[s] = items
        skipped[s] = hidden
    if not any(splits.values()):
        raise ImgprepError(f"{src}: the class folders hold no files")
    return SourceIndex(FolderSource(root), layout, classes, splits, skipped)
