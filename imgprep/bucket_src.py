"""`imgprep prepare s3://bucket/prefix OUT`: SRC in object storage, in every layout read locally.

The bucket's listing is read once (LIST, 1000 keys a page) and walked the way a local folder is
(`sources._SplitWalk`): each folder's files in name order, then its sub-folders; hidden names
(`.x`, `__x`) skipped and counted; `train/` and `val/` with one folder per class, or class folders
at the top, or a flat `val/` with --val-labels; the Kaggle layout (`ILSVRC/Data/CLS-LOC/`, its two
label files read from the bucket). The ILSVRC2012 archives are scanned where they lie, by range
reads (`RangeFile`): the train tar's 1000 outer headers one after another, then its per-class tars
`SCAN_CONNECTIONS` at a time, in reads of SCAN_CHUNK bytes that skip whatever lies past them (so
the scan reads ImageNet's bytes about once, spread over many connections, and a tar of large
members only its headers); each image is then one range read of its own bytes,
checked against the archive's ETag (If-Match), so an archive replaced mid-run is an error, not a
mixture. Items keep their key (or archive path) relative to the prefix as their reference, so the
shards equal those of a local run over the same files (the manifest differs in `config.src`
only). Each worker (or Ray task) GETs its own images: nothing is downloaded whole to one disk.
"""

from __future__ import annotations

import contextlib
import io
import os
from concurrent.futures import ThreadPoolExecutor

from .errors import ImgprepError
from .remote import RemoteError, Store

__all__ = ["BucketSource", "BucketPlace", "RangeFile", "discover_bucket"]

# Bytes a scan's range read fetches. A header hop costs a request (~3 ms on loopback, ~20 ms on S3);
# reading on through the images costs their bytes (1 MiB: ~2 ms on loopback, ~10 ms on S3). ImageNet's
# images average 110 KB, so reading on (about 9 of them a request) beats one request per image.
SCAN_CHUNK = 1 << 20
SCAN_CONNECTIONS = 16  # per-class tars scanned at a time (each a chain of header reads)
SCAN_READ_MAX = 64 << 20  # the most one read of a scan may ask for (a tar header is 512 bytes)
LABELS_MAX = 64 << 20  # bytes of a label file or devkit read from the bucket (a real one: < 4 MB)


class BucketSource:
    """Reads items (keys under the prefix, or byte ranges of `archives`) from the bucket;
    picklable, with the AWS_* settings of the process that listed it, for workers started before
    them or elsewhere. `archives`: keys; `stamps`: key -> (size, ETag) as scanned."""

    def __init__(self, url: str, aws_env: dict | None = None, archives: tuple = (), stamps: dict | None = None):
        self.root = url.rstrip("/")
        self.aws_env = dict(
            aws_env if aws_env is not None else {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        )
        self.archives = tuple(archives)
        self.stamps = dict(stamps or {})
        self._store = None

    def __getstate__(self):
        return {"root": self.root, "aws_env": self.aws_env, "archives": self.archives, "stamps": self.stamps}

    def __setstate__(self, d):
        self.__init__(d["root"], d["aws_env"], d["archives"], d["stamps"])

    def archive_stamps(self) -> list[tuple[str, int, str]]:
        """(name, size, ETag) of each archive: what a resume checks is unchanged."""
        return [(os.path.basename(a), *self.stamps[a]) for a in self.archives]

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
        if item.archive < 0:
            try:
                return self.store.get(item.ref, limit=max_bytes)
            except RemoteError as exc:
                if exc.status == 404:
                    raise OSError("no longer in the bucket") from None
                raise
        key = self.archives[item.archive]
        return _archive_range(self.store, key, item.offset, item.offset + item.size, self.stamps[key][1])

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


def _archive_range(store: Store, key: str, start: int, stop: int, etag: str) -> bytes:
    """Bytes [start, stop) of an archive that must still have the ETag it was scanned with."""
    try:
        return store.get(key, start, stop, if_match=etag)
    except RemoteError as exc:
        if exc.status in (404, 412, 416):
            raise ImgprepError(
                f"{store.url_of(key)}: replaced or removed in the bucket since it was scanned; "
                "run the same command again (it rescans and redoes what came from it)"
            ) from None
        raise


class RangeFile(io.RawIOBase):
    """Bytes [base, base + size) of an object as a seekable read-only file, each read a range GET
    of at least `chunk` bytes (so the headers after small members come from the buffer),
    checked against the object's ETag; one read larger than SCAN_READ_MAX is refused (a tar's
    headers are 512 bytes: a crafted size never becomes a giant request)."""

    def __init__(self, store: Store, key: str, base: int, size: int, etag: str, chunk: int | None = None):
        self.store, self.key, self.base, self.size, self.etag = store, key, base, size, etag
        self.chunk = SCAN_CHUNK if chunk is None else chunk
        self.pos, self._buf, self._at = 0, b"", 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos)
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b""
        if n > SCAN_READ_MAX:
            raise OSError(f"a read of {n:,} bytes while scanning headers; not an ImageNet archive")
        off = self.pos - self._at
        if off < 0 or off + n > len(self._buf):
            # 512 more than asked: tarfile reads a member's last byte, then the header after it
            stop = min(self.size, self.pos + max(n + 512, self.chunk))
            self._buf = _archive_range(self.store, self.key, self.base + self.pos, self.base + stop, self.etag)
            self.requests += 1
            self._at, off = self.pos, 0
            if len(self._buf) != stop - self.pos:
                raise OSError(f"{len(self._buf)} bytes where {stop - self.pos} were asked for")
        self.pos += n
        return self._buf[off : off + n]


class BucketPlace:
    """The ILSVRC2012 archives under a bucket prefix, for `sources.discover_ilsvrc` (the local
    discovery's interface): scanned by range reads, the devkit read whole (bounded)."""

    def __init__(self, source: BucketSource, tree: dict):
        self.root, self._source, self._tree = source.root, source, tree
        self.stamps: dict[str, tuple[int, str]] = {}

    @property
    def store(self) -> Store:
        return self._source.store

    def where(self, name: str) -> str:
        return f"{self.root}/{name}"

    def isfile(self, name: str) -> bool:
        return isinstance(self._tree.get(name), int)

    def _stamp(self, name: str) -> tuple[int, str]:
        """(size, ETag) of an archive, asked once (every later read is checked against it)."""
        if name not in self.stamps:
            info = self.store.head(name)
            self.stamps[name] = (info.size, info.etag)
        return self.stamps[name]

    def _open(self, name: str, base: int = 0, size: int | None = None) -> RangeFile:
        full, etag = self._stamp(name)
        return RangeFile(self.store, name, base, full if size is None else size, etag)

    def scan_tar(self, name: str) -> list[tuple[str, int, int]]:
        from .sources import scan_tar

        got = self._cached(name, "flat", lambda: ({"": scan_tar(self.where(name), self._open(name))}, 0))
        return got[0][""]

    def scan_nested(self, name: str) -> tuple[dict, int]:
        from .sources import _scan_nested

        def scan():
            outer = self._open(name)
            with ThreadPoolExecutor(SCAN_CONNECTIONS) as pool:
                return _scan_nested(self.where(name), outer, lambda off, n: self._open(name, off, n), pool.map)

        return self._cached(name, "nested", scan)

    def _cached(self, name: str, kind: str, scan) -> tuple[dict, int]:
        """A scan's result ({tar name: [(member, offset, size)]}, skipped), kept in imgprep's
        private folder under the archive's URL, size and ETag: a rerun (a resume, other settings)
        does not read the archive again; a new upload (a new ETag) is scanned anew. Without an
        ETag, or without a private folder to keep it in (one another user could write to), the
        archive is scanned every time."""
        import gzip
        import hashlib
        import json

        from .cache import home_folder
        from .fileio import write_atomic

        size, etag = self._stamp(name)
        try:
            folder = home_folder("scans", what="imgprep's folder") if etag else None
        except ImgprepError:
            folder = None
        if folder is None:
            return scan()
        key = hashlib.sha256(f"{self.where(name)}\0{size}\0{etag}\0{kind}".encode()).hexdigest()[:32]
        path = os.path.join(folder, f"{key}.json.gz")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                saved = json.load(f)
            out = {str(t): [(str(m), int(o), int(n)) for m, o, n in ms] for t, ms in saved["tars"].items()}
            return out, int(saved["skipped"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
            pass  # none kept (or unreadable): scanned below
        got = scan()
        with contextlib.suppress(OSError):  # only a shortcut: the next run scans again
            write_atomic(path, gzip.compress(json.dumps({"tars": got[0], "skipped": got[1]}).encode(), 1))
        return got

    def devkit(self, name: str):
        return self.where(name), io.BytesIO(self.store.get(name, limit=LABELS_MAX))

    def source(self, archives: list[str]) -> BucketSource:
        stamps = {a: self._stamp(a) for a in archives}
        return BucketSource(self.root, self._source.aws_env, tuple(archives), stamps)


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


def _node(tree: dict, path: str):
    for part in path.split("/"):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _dirs(node: dict) -> list[str]:
    from .sources import _visible

    return [n for n in sorted(node) if _visible(n) and isinstance(node[n], dict)]


def discover_bucket(src: str, split: str, layout: str, val_labels: str | None):
    """The SourceIndex of the images under an s3:// prefix, in the given (or detected) layout."""
    from .sources import KAGGLE_DATA, LAYOUTS, TRAIN_TAR, VAL_TAR, discover_ilsvrc

    if layout not in LAYOUTS:
        raise ImgprepError(f"--layout {layout!r}: must be one of {', '.join(LAYOUTS)}")
    if val_labels and not os.path.isfile(val_labels):
        raise ImgprepError(f"--val-labels {val_labels}: no such file")
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
    kaggle = KAGGLE_DATA.replace(os.sep, "/")
    if layout == "auto":
        layout = (
            "ilsvrc"
            if any(isinstance(tree.get(n), int) for n in (TRAIN_TAR, VAL_TAR))
            else "kaggle"
            if isinstance(_node(tree, kaggle), dict)
            else "folders"
        )
    if layout == "ilsvrc":
        index = discover_ilsvrc(BucketPlace(source, tree), val_labels)
    elif layout == "kaggle":
        index = _discover_kaggle(source, tree, kaggle)
    else:
        index = _discover_folders(source, tree, split, val_labels)
    if not any(index.splits.values()):
        raise ImgprepError(f"{src}: the class folders hold no files")
    return index


def _discover_kaggle(source: BucketSource, tree: dict, data: str):
    """`ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}` with `LOC_synset_mapping.txt` and
    `LOC_val_solution.csv` beside `ILSVRC/`, as `sources._discover_kaggle` reads them locally."""
    from .sources import ClassInfo, Item, SourceIndex, _index_of, _label_all, _stem, kaggle_val_labels, kaggle_words

    src = source.root
    text = lambda name: source.store.get(name, limit=LABELS_MAX)  # noqa: E731
    words = (
        kaggle_words(f"{src}/LOC_synset_mapping.txt", text("LOC_synset_mapping.txt"))
        if isinstance(tree.get("LOC_synset_mapping.txt"), int)
        else {}
    )
    train = _node(tree, f"{data}/train")
    wnids = _dirs(train) if isinstance(train, dict) else sorted(words)
    if not wnids:
        raise ImgprepError(
            f"{src}/{data}: no train/<wnid>/ folders and no LOC_synset_mapping.txt; cannot tell the classes"
        )
    classes = [ClassInfo(w, words.get(w, "")) for w in wnids]
    index = _index_of(classes)
    splits, skipped = {}, {}
    if isinstance(train, dict):
        walk = _Walk()
        splits["train"] = [
            Item(r, index[w], size=n) for w in wnids for r, n in walk.files(train[w], f"{data}/train/{w}")
        ]
        skipped["train"] = walk.skipped
    val = _node(tree, f"{data}/val")
    if isinstance(val, dict):
        if not isinstance(tree.get("LOC_val_solution.csv"), int):
            raise ImgprepError(f"{src}: {data}/val/ needs LOC_val_solution.csv beside ILSVRC/ for its labels")
        sol = f"{src}/LOC_val_solution.csv"
        labels = kaggle_val_labels(sol, text("LOC_val_solution.csv"))
        walk = _Walk()
        refs = walk.flat(val, f"{data}/val")
        missing = [r for r, _ in refs if _stem(r) not in labels]
        if missing:
            raise ImgprepError(f"{sol}: no label for {missing[0]} ({len(missing)} validation files unlabelled)")
        labs = _label_all([labels[_stem(r)] for r, _ in refs], index, sol)
        splits["val"] = [Item(r, lab, size=n) for (r, n), lab in zip(refs, labs, strict=True)]
        skipped["val"] = walk.skipped
    return SourceIndex(source, "kaggle", classes, splits, skipped)


def _discover_folders(source: BucketSource, tree: dict, split: str, val_labels: str | None):
    """Class folders (under `train/` and `val/`, or at the top), as `sources._discover_folders`."""
    from .sources import ClassInfo, Item, SourceIndex, _index_of, _label_all, _visible, read_val_labels

    src = source.root
    dirs = _dirs
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
    return SourceIndex(source, "split-folders" if has_splits else "class-folders", classes, splits, skipped)
