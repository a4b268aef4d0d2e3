"""`imgprep prepare s3://bucket/prefix OUT`: SRC in object storage, in the folder layouts.

The bucket's listing is read once (LIST, 1000 keys a page) and walked the way a local folder is
(`sources._SplitWalk`): each folder's files in name order, then its sub-folders; hidden names
(`.x`, `__x`) skipped and counted; `train/` and `val/` with one folder per class, or class folders
at the top, or a flat `val/` with --val-labels. Items keep their key relative to the prefix as
their reference, so the shards equal those of a local run over the same files (the manifest
differs in `config.src` only). Each worker (or Ray task) GETs its own images: nothing is
downloaded whole to one disk. The ILSVRC2012 archive layouts are not read from a bucket yet.
"""

from __future__ import annotations

import os

from .errors import ImgprepError
from .remote import RemoteError, Store

__all__ = ["BucketSource", "discover_bucket"]


class BucketSource:
    """Reads items (keys under the prefix) from the bucket; picklable, with the AWS_* settings of
    the process that listed it, for workers started before them or elsewhere."""

    archives: tuple = ()  # no archives (what `SourceIndex.listing_digest` walks)

    def __init__(self, url: str, aws_env: dict | None = None):
        self.root = url.rstrip("/")
        self.aws_env = dict(
            aws_env if aws_env is not None else {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        )
        self._store = None

    def __getstate__(self):
        return {"root": self.root, "aws_env": self.aws_env}

    def __setstate__(self, d):
        self.__init__(d["root"], d["aws_env"])

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root, env={**os.environ, **self.aws_env})
        return self._store

    def read(self, item, max_bytes: int | None = None) -> bytes:
        """An image's bytes. OSError (a reject) for one over `max_bytes` (by its listed size, so it
        is never fetched) or gone from the bucket; other failures after the retries are errors."""
        if max_bytes is not None and item.size > max_bytes:
            raise OSError(f"{item.size:,} bytes, over the limit of {max_bytes:,} for one image")
        try:
            return self.store.get(item.ref, limit=max_bytes)
        except RemoteError as exc:
            if exc.status == 404:
                raise OSError("no longer in the bucket") from None
            raise

    def reads(self, items, max_bytes: int | None, ahead: int = 8):
        """Per item, a call returning its bytes (or raising its error), in order, with up to
        `ahead` requests in flight on their own connections: a request's latency per image is
        paid `ahead` at a time, not one after another."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(ahead) as pool:
            futures = [pool.submit(self.read, it, max_bytes) for it in items[:ahead]]
            for i in range(len(items)):
                f = futures[i]
                if i + ahead < len(items):
                    futures.append(pool.submit(self.read, items[i + ahead], max_bytes))
                futures[i] = None  # its bytes go with the caller
                yield f.result


def _tree(keys: list[tuple[str, int]]) -> dict:
    """The listing as nested folders: {name: sub-tree dict, or the object's size}."""
    root: dict = {}
    for key, size in keys:
        parts = [p for p in key.split("/") if p]
        if not parts or key.endswith("/"):  # a "folder marker" object
            continue
        node = root
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):  # a key that is both a file and a folder: the folder wins
                nxt = node[p] = {}
            node = nxt
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = size
    return root


class _Walk:
    def __init__(self):
        self.skipped = 0

    def files(self, node: dict, rel: str) -> list[tuple[str, int]]:
        from .sources import _visible

        refs, subdirs = [], []
        for name in sorted(node):
            v = node[name]
            if not _visible(name):
                self.skipped += 1
            elif isinstance(v, dict):
                subdirs.append(name)
            else:
                refs.append((f"{rel}/{name}" if rel else name, v))
        for d in subdirs:
            refs += self.files(node[d], f"{rel}/{d}" if rel else d)
        return refs

    def flat(self, node: dict, rel: str) -> list[tuple[str, int]]:
        from .sources import _visible

        refs = []
        for name in sorted(node):
            if not _visible(name) or isinstance(node[name], dict):
                self.skipped += 1
            else:
                refs.append((f"{rel}/{name}", node[name]))
        return refs


def discover_bucket(src: str, split: str, layout: str, val_labels: str | None):
    """The SourceIndex of the images under an s3:// prefix (folder layouts)."""
    from .sources import ClassInfo, Item, SourceIndex, _index_of, _label_all, _visible, read_val_labels

    if val_labels and not os.path.isfile(val_labels):
        raise ImgprepError(f"--val-labels {val_labels}: no such file")
    if layout not in ("auto", "folders"):
        raise ImgprepError(f"{src}: --layout {layout} is not read from a bucket yet; use a local copy or class folders")
    source = BucketSource(src)
    try:
        keys = source.store.list("")
    except RemoteError as exc:
        if exc.status == 404:
            raise ImgprepError(f"{src}: no such bucket; give the prefix that holds your images") from None
        raise
    tree = _tree(keys)
    if not tree:
        raise ImgprepError(f"{src}: nothing under this prefix; it should hold train/<class>/ or <class>/ folders")
    dirs = lambda node: [n for n in sorted(node) if _visible(n) and isinstance(node[n], dict)]  # noqa: E731
    has_splits = any(isinstance(tree.get(s), dict) for s in ("train", "val"))
    split_nodes = (
        {s: tree[s] for s in ("train", "val") if isinstance(tree.get(s), dict)} if has_splits else {split: tree}
    )
    class_split = "train" if "train" in split_nodes else next(iter(split_nodes))
    names = dirs(split_nodes[class_split])
    flat_val = "val" in split_nodes and not dirs(split_nodes["val"])
    if not names and not (flat_val and class_split == "val"):
        raise ImgprepError(f"{src}: no class folders found; expected one sub-folder of images per class")
    classes = [ClassInfo(n) for n in names]
    index = _index_of(classes)
    splits, skipped = {}, {}
    for s, node in split_nodes.items():
        prefix = s if has_splits else ""
        walk = _Walk()
        if s == "val" and flat_val:
            refs = walk.flat(node, prefix)
            if not refs:
                continue
            if not val_labels:
                raise ImgprepError(f"{src}/{prefix}: flat validation folder needs --val-labels FILE")
            labs = _label_all(read_val_labels(val_labels, [r for r, _ in refs]), index, val_labels)
            splits[s] = [Item(r, lab, size=n) for (r, n), lab in zip(refs, labs, strict=True)]
            skipped[s] = walk.skipped
            continue
        unknown = [c for c in dirs(node) if c not in index]
        if unknown:
            raise ImgprepError(
                f"{src}/{prefix}: class folder {unknown[0]!r} is not a class of the {class_split} split "
                f"({len(unknown)} unknown); every split must use the {class_split} classes"
            )
        strays = sum(1 for n in node if not isinstance(node[n], dict) or not _visible(n))
        items = []
        for c in dirs(node):
            rel = f"{prefix}/{c}" if prefix else c
            items += [Item(r, index[c], size=n) for r, n in walk.files(node[c], rel)]
        splits[s], skipped[s] = items, strays + walk.skipped
    if not any(splits.values()):
        raise ImgprepError(f"{src}: the class folders hold no files")
    return SourceIndex(source, "split-folders" if has_splits else "class-folders", classes, splits, skipped)
