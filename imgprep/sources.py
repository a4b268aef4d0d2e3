"""Where images come from: each layout lists (reference, label) items per split and reads bytes.

Layouts, detected from what SRC holds (or forced with `layout=`):
- `ilsvrc`: the original archives `ILSVRC2012_img_train.tar` (a tar of per-class tars),
  `ILSVRC2012_img_val.tar` (flat) and `ILSVRC2012_devkit_t12.tar.gz` (class names, validation
  labels). Read in place: the tar headers are scanned once, then every image is read at its byte
  offset; nothing is extracted.
- `kaggle`: `ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}` with `LOC_synset_mapping.txt` and
  `LOC_val_solution.csv`.
- `folders`: `train/<class>/...` and optionally `val/<class>/...` (or a flat `val/` with
  `val_labels=FILE`), or a plain folder of class folders whose split is `split`.

Class index = position of the class name (the WNID for ImageNet) in sorted order, the
torchvision convention, taken from the training split and shared by every split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field

from .errors import ImgprepError

__all__ = [
    "Item",
    "ClassInfo",
    "Source",
    "SourceIndex",
    "discover",
    "LAYOUTS",
    "scan_tar",
    "parse_devkit",
    "devkit_val_wnids",
]

LAYOUTS = ("auto", "folders", "ilsvrc", "kaggle")
TRAIN_TAR, VAL_TAR, DEVKIT = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz"
KAGGLE_DATA = os.path.join("ILSVRC", "Data", "CLS-LOC")
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True, slots=True)  # slots: ImageNet has 1.28M of them
class Item:
    """One source image: a display reference, its class index, and where its bytes are."""

    ref: str  # path relative to SRC; inside archives "archive.tar/inner.tar/name"
    label: int
    archive: int = -1  # index into Source.archives, or -1 for a plain file at SRC/ref
    offset: int = 0  # byte offset of the data in that archive
    size: int = 0  # bytes (of a plain file: as listed)
    mtime_ns: int = 0  # a plain file's modification time as listed (0 inside archives)


@dataclass(frozen=True)
class ClassInfo:
    """A class: its folder/WNID name, and human-readable words where the source has them."""

    wnid: str
    words: str = ""

    def to_json(self, index: int) -> dict:
        d = {"index": index, "name": self.words or self.wnid}
        if self.words or _WNID.match(self.wnid):
            d["wnid"] = self.wnid
        return d


class Source:
    """Reads the bytes of items: plain files under `root`, or byte ranges of `archives`."""

    def __init__(self, root: str, archives: list[str] | None = None):
        self.root = os.path.abspath(root)
        self.archives = [os.path.abspath(a) for a in archives or []]
        self._fds: dict[int, int] = {}

    def __getstate__(self):  # file descriptors stay in the process that opened them
        return {"root": self.root, "archives": self.archives}

    def __setstate__(self, state):
        self.__init__(state["root"], state["archives"])

    def archive_stamps(self) -> list[tuple[str, int, int]]:
        """(name, size, modification time) of each archive: what a resume checks is unchanged."""
        return [(os.path.basename(a), (st := os.stat(a)).st_size, st.st_mtime_ns) for a in self.archives]

    def read(self, item: Item, max_bytes: int | None = None) -> bytes:
        """The bytes of one item. OSError for a file that is no longer a regular file (never blocks
        on a FIFO) or that is larger than `max_bytes`."""
        if item.archive < 0:
            fd = os.open(os.path.join(self.root, item.ref), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError("not a regular file")
                if max_bytes is not None and st.st_size > max_bytes:
                    raise OSError(f"{st.st_size:,} bytes, over the limit of {max_bytes:,} for one image")
                return _read_whole(fd, st.st_size, max_bytes)
            finally:
                os.close(fd)
        if max_bytes is not None and item.size > max_bytes:
            raise OSError(f"{item.size:,} bytes, over the limit of {max_bytes:,} for one image")
        fd = self._fds.get(item.archive)
        if fd is None:
            fd = self._fds[item.archive] = os.open(self.archives[item.archive], os.O_RDONLY)
        data = os.pread(fd, item.size, item.offset)
        if len(data) != item.size:
            raise OSError(f"archive ends early ({len(data)} of {item.size} bytes)")
        return data


def _read_whole(fd: int, size: int, max_bytes: int | None) -> bytes:
    """A regular file's bytes to its end, `size` the length fstat gave: one read where it still
    has that length (asking for a byte more shows it did not grow; Python's buffered `read()`
    took about six system calls, ~15 us an image), else reads to its end, no more than
    `max_bytes` (a file growing while it is read)."""
    first = os.read(fd, size + 1)
    if len(first) == size:
        return first
    parts, n, chunk = [], 0, first
    while chunk:  # the first read counts too: its byte past `size` may be past `max_bytes`
        parts.append(chunk)
        n += len(chunk)
        if max_bytes is not None and n > max_bytes:
            raise OSError(f"grew past the limit of {max_bytes:,} bytes for one image while read")
        chunk = os.read(fd, 1 << 20)
    return b"".join(parts)


@dataclass
class SourceIndex:
    """Everything `prepare` needs to plan: classes, items per split, what was skipped."""

    source: Source
    layout: str
    classes: list[ClassInfo]
    splits: dict[str, list[Item]]
    skipped: dict[str, int] = field(default_factory=dict)  # hidden/stray files per split

    def listing_digest(self) -> str:
        """sha256 of what the plan is made from: classes, and per split every item's name, label,
        place, size and modification time (and each archive's size and time). A resume keeps the
        finished shards only while this is unchanged."""
        h = hashlib.sha256()
        for c in self.classes:
            h.update(f"class\t{c.wnid}\t{c.words}\n".encode("utf-8", "surrogateescape"))
        for name, size, version in self.source.archive_stamps():
            h.update(f"archive\t{name}\t{size}\t{version}\n".encode("utf-8", "surrogateescape"))
        for split in sorted(self.splits):
            for it in self.splits[split]:
                row = f"{split}\t{it.ref}\t{it.label}\t{it.archive}\t{it.offset}\t{it.size}\t{it.mtime_ns}\n"
                h.update(row.encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def _visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__")


# (st_dev, st_ino) of folders never listed as part of SRC: `prepare`'s OUT when it lies inside SRC.
# Set by `discover` for one listing; a module-level value because every layout's walk reads it.
_EXCLUDED: set[tuple[int, int]] = set()


def _excluded(entry: os.DirEntry) -> bool:
    if not _EXCLUDED:
        return False
    try:
        st = entry.stat()
    except OSError:
        return False
    return (st.st_dev, st.st_ino) in _EXCLUDED


def _list(path: str) -> list[os.DirEntry]:
    """The entries of a folder sorted by name, without excluded folders (OUT inside SRC);
    ImgprepError (not silence) when it cannot be listed."""
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if not _excluded(e)), key=lambda e: e.name)
    except OSError as exc:
        raise ImgprepError(
            f"{path}: cannot list this folder ({exc.strerror or exc}); fix its permissions or move it out of SRC"
        ) from None


def _stat(entry: os.DirEntry) -> os.stat_result | None:
    """The stat of what an entry points to (symlinks followed), None for a broken link."""
    try:
        return entry.stat()
    except OSError:
        return None


def _class_dirs(path: str) -> list[str]:
    return [e.name for e in _list(path) if _visible(e.name) and (st := _stat(e)) and stat.S_ISDIR(st.st_mode)]


class _SplitWalk:
    """The image files of one split. Symbolic links are followed, but no folder is entered twice
    (a link back to the split, to a class folder or to an ancestor is a loop, or a second path to
    files already listed) and no file is listed twice (two links to one file): each is skipped and
    counted, as are hidden entries, broken links and FIFOs, sockets and devices (never opened)."""

    def __init__(self, root: str, top_rels: list[str]):
        self.root = root
        self.skipped = 0
        self.seen_files: set[tuple[int, int]] = set()
        self.listed: dict[str, tuple[int, int]] = {}  # ref -> (size, mtime_ns)
        self.seen_dirs = {self._key(os.stat(os.path.join(root, rel))) for rel in top_rels}

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def _file(self, st: os.stat_result | None) -> bool:
        """Whether an entry is a regular file not listed yet (counting it as skipped otherwise)."""
        if st is None or not stat.S_ISREG(st.st_mode) or self._key(st) in self.seen_files:
            self.skipped += 1
            return False
        self.seen_files.add(self._key(st))
        return True

    def item(self, ref: str, label: int) -> Item:
        """The Item of a file listed by this walk (its size and modification time as listed); taken
        out of `listed`, which so holds one class folder's files at a time, not ImageNet's 1.28M."""
        st = self.listed.pop(ref)
        return Item(ref, label, size=st[0], mtime_ns=st[1])

    def files(self, rel: str) -> list[str]:
        """Relative paths (with /) of the files under root/rel, recursively: each folder's files
        in name order, then its sub-folders in name order."""
        refs, subdirs = [], []
        for e in _list(os.path.join(self.root, rel)):
            st = _stat(e)
            if not _visible(e.name):
                self.skipped += 1
            elif st is not None and stat.S_ISDIR(st.st_mode):
                if self._key(st) in self.seen_dirs:
                    self.skipped += 1
                else:
                    self.seen_dirs.add(self._key(st))
                    subdirs.append(e.name)
            elif self._file(st):
                refs.append(self._add(f"{rel}/{e.name}" if rel else e.name, st))
        for d in subdirs:
            refs += self.files(f"{rel}/{d}" if rel else d)
        return refs

    def flat_files(self, rel: str) -> list[str]:
        """The files directly in root/rel (a flat validation folder); folders there are skipped."""
        refs = []
        for e in _list(os.path.join(self.root, rel)):
            st = _stat(e)
            if not _visible(e.name) or (st is not None and stat.S_ISDIR(st.st_mode)):
                self.skipped += 1
            elif self._file(st):
                refs.append(self._add(f"{rel}/{e.name}" if rel else e.name, st))
        return refs

    def _add(self, ref: str, st: os.stat_result) -> str:
        self.listed[ref] = (st.st_size, st.st_mtime_ns)
        return ref


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


# --- label files -------------------------------------------------------------------------------


def read_text(path: str, what: str, data: bytes | None = None) -> str:
    """A small text file a user hands us (`data`: its bytes, already read from a bucket): UTF-8 (a
    byte-order mark is dropped) or UTF-16 with its mark; anything else is a one-line ImgprepError."""
    if data is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ImgprepError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ImgprepError(
            f"{path}: {what} are not text (undecodable byte at offset {exc.start}); save the file as UTF-8 text"
        ) from None
    if "\0" in text:
        raise ImgprepError(f"{path}: {what} hold NUL characters, not text; save the file as UTF-8 text")
    return text.replace("\r\n", "\n")


def read_val_labels(path: str, files: list[str]) -> list[str]:
    """Class names (WNIDs) of `files` from a label file: one per line in sorted file-name order,
    or CSV rows `file,wnid` (file with or without extension; a header row is allowed)."""
    text = read_text(path, "validation labels")
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and len(rows[0]) >= 2:  # CSV file,label: rows for other files (or a header) are ignored
        by_stem = {_stem(r[0].strip()): (r[1].split() or [""])[0] for r in rows}
        missing = [f for f in files if _stem(f) not in by_stem]
        if missing:
            raise ImgprepError(f"{path}: no label for {missing[0]} ({len(missing)} files unlabelled)")
        return [by_stem[_stem(f)] for f in files]
    labels = [r[0].split()[0] for r in rows]
    if len(labels) != len(files):
        raise ImgprepError(
            f"{path}: {len(labels)} labels for {len(files)} validation files; "
            "expected one label per line in sorted file-name order"
        )
    return labels


def kaggle_val_labels(path: str, data: bytes | None = None) -> dict[str, str]:
    """ImageId -> WNID from `LOC_val_solution.csv` (first token of PredictionString)."""
    out = {}
    text = read_text(path, "Kaggle validation labels", data)
    try:
        for row in csv.DictReader(io.StringIO(text)):
            out[row["ImageId"].strip()] = row["PredictionString"].split()[0]
    except (KeyError, IndexError, AttributeError) as exc:
        raise ImgprepError(f"{path}: not a Kaggle LOC_val_solution.csv ({exc})") from None
    return out


def kaggle_words(path: str, data: bytes | None = None) -> dict[str, str]:
    """WNID -> words from `LOC_synset_mapping.txt`."""
    out = {}
    for line in read_text(path, "Kaggle class names", data).splitlines():
        parts = line.strip().split(" ", 1)
        if parts and parts[0]:
            out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


# What a real ILSVRC2012 devkit holds, with room to spare: meta.mat is a few hundred KB (1,860
# synsets), the ground truth 50,000 short lines. A crafted archive is refused past these bounds
# before anything is expanded into memory.
DEVKIT_META_MAX = 16 << 20  # bytes of data/meta.mat in the archive
DEVKIT_META_EXPANDED_MAX = 64 << 20  # bytes of meta.mat's compressed variables once expanded
DEVKIT_TRUTH_MAX = 2 << 20  # bytes of the ground-truth file
DEVKIT_MEMBERS_MAX = 10_000  # members of the devkit tar looked at


def _member(tar: tarfile.TarFile, m: tarfile.TarInfo, limit: int, path: str) -> bytes:
    if m.size > limit:
        raise ImgprepError(
            f"{path}: {m.name} is {m.size:,} bytes, more than a real devkit's ({limit:,} at most); "
            "is this ILSVRC2012_devkit_t12.tar.gz?"
        )
    return tar.extractfile(m).read(limit + 1)


def check_mat_v5(data: bytes, limit: int, what: str) -> None:
    """Refuse a MAT file that is not MATLAB's v5 format or whose compressed variables expand past
    `limit` bytes, streaming the expansion (nothing of it is kept), before scipy reads it."""
    import struct
    import zlib

    if len(data) < 128 or not data.startswith(b"MATLAB 5.0 MAT-file"):
        raise ImgprepError(f"{what}: not a MATLAB 5 MAT-file; is this the devkit's data/meta.mat?")
    endian = "<" if data[126:128] == b"IM" else ">"
    pos, expanded = 128, 0
    while pos + 8 <= len(data):
        kind, nbytes = struct.unpack_from(endian + "II", data, pos)
        body = data[pos + 8 : pos + 8 + nbytes]
        if kind == 15:  # miCOMPRESSED: a zlib stream
            d = zlib.decompressobj()
            chunk = body
            while chunk:
                expanded += len(d.decompress(chunk, 1 << 20))
                if expanded > limit:
                    raise ImgprepError(
                        f"{what}: its variables expand to more than {limit:,} bytes, far more than a real "
                        "devkit's meta.mat; is this ILSVRC2012_devkit_t12.tar.gz?"
                    )
                chunk = d.unconsumed_tail
        else:
            expanded += nbytes
        pos += 8 + nbytes + (-nbytes % 8 if kind != 15 else 0)
    if expanded > limit:
        raise ImgprepError(f"{what}: holds more than {limit:,} bytes of variables; is this the devkit's meta.mat?")


def parse_devkit(path: str, fileobj=None) -> tuple[dict[int, tuple[str, str]], list[int]]:
    """From the devkit tar.gz (`fileobj`: its bytes, opened; else the file at `path`), read in
    memory: {ILSVRC2012_ID: (WNID, words)} of the leaf synsets (num_children == 0) from
    data/meta.mat, and the validation ground truth (IDs in file order). What is read is bounded by
    what a real devkit holds (a crafted archive is one line)."""
    import numpy as np
    import scipy.io

    meta = truth = None
    try:
        with tarfile.open(path if fileobj is None else None, "r:*", fileobj=fileobj) as tar:
            for k, m in enumerate(tar):
                if k >= DEVKIT_MEMBERS_MAX:
                    raise ImgprepError(f"{path}: more than {DEVKIT_MEMBERS_MAX:,} members; not a devkit")
                if m.isfile() and m.name.endswith("data/meta.mat"):
                    data = _member(tar, m, DEVKIT_META_MAX, path)
                    check_mat_v5(data, DEVKIT_META_EXPANDED_MAX, f"{path}: {m.name}")
                    meta = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
                elif m.isfile() and m.name.endswith("ILSVRC2012_validation_ground_truth.txt"):
                    truth = [int(x) for x in _member(tar, m, DEVKIT_TRUTH_MAX, path).split()]
                if meta is not None and truth is not None:
                    break
    except ImgprepError:
        raise
    except Exception as exc:  # tarfile, gzip, scipy's MatReadError, int(): a damaged or crafted devkit
        lines = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__
        raise ImgprepError(f"{path}: unreadable devkit ({why}); is this ILSVRC2012_devkit_t12.tar.gz?") from None
    if meta is None or "synsets" not in meta:
        raise ImgprepError(f"{path}: no data/meta.mat with 'synsets'; is this ILSVRC2012_devkit_t12.tar.gz?")
    try:
        s = np.atleast_1d(meta["synsets"])
        leaves = {}
        for sid, wnid, words, nchild in zip(s["ILSVRC2012_ID"], s["WNID"], s["words"], s["num_children"], strict=True):
            if int(nchild) == 0:
                leaves[int(sid)] = (str(wnid), str(words))
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ImgprepError(f"{path}: meta.mat's 'synsets' are not the devkit's ({exc})") from None
    return leaves, truth or []


def devkit_val_wnids(path: str, n_files: int, fileobj=None) -> tuple[list[str], dict[str, str]]:
    """WNIDs of the validation files (in sorted name order) and WNID -> words, from the devkit."""
    leaves, truth = parse_devkit(path, fileobj)
    if len(truth) != n_files:
        raise ImgprepError(f"{path}: ground truth lists {len(truth)} labels for {n_files} validation images")
    try:
        wnids = [leaves[i][0] for i in truth]
    except KeyError as exc:
        raise ImgprepError(f"{path}: ground-truth ID {exc.args[0]} is not a leaf synset of meta.mat") from None
    return wnids, {w: words for w, words in leaves.values()}


# --- archives ------------------------------------------------------------------------------------


def scan_tar(path: str, fileobj=None) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of the regular members of an uncompressed tar, reading headers
    only (`fileobj`: the tar opened as a seekable file, e.g. a bucket object read by ranges)."""
    try:
        with tarfile.open(path if fileobj is None else None, "r:", fileobj=fileobj) as tar:
            return [(m.name, m.offset_data, m.size) for m in tar if m.isreg()]
    except (OSError, tarfile.TarError) as exc:
        raise ImgprepError(f"{path}: not a readable uncompressed tar ({exc})") from None


_PLAIN_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE)
_NUMERIC_FIELDS = ((100, 108), (108, 116), (116, 124), (136, 148), (329, 337), (337, 345))


def plain_members(f) -> list[tuple[str, int, int, bool]] | None:
    """(name, data offset, size, is a regular file) of each member of a plain tar (regular files
    and folders, as an ImageNet class tar holds) read from the seekable file `f`, exactly as
    tarfile lists them, at a fraction of its cost per header; None where anything needs tarfile's
    own rules (extended or GNU long-name headers, links, sparse files, a bad checksum, a truncated
    or empty archive): the caller then asks tarfile."""
    nti, nts, enc = tarfile.nti, tarfile.nts, tarfile.ENCODING
    out, pos = [], 0
    try:
        while True:
            if pos:  # tarfile reads the byte before each header: a truncated member is an error
                f.seek(pos - 1)
                if not f.read(1):
                    return None
            else:
                f.seek(0)
            buf = f.read(tarfile.BLOCKSIZE)
            if len(buf) != tarfile.BLOCKSIZE:
                return None
            if buf.count(0) == tarfile.BLOCKSIZE:  # the end-of-archive block
                return out or None
            if nti(buf[148:156]) != 256 + sum(buf) - sum(buf[148:156]):  # unsigned sum, field as spaces
                return None
            kind = buf[156:157]
            if kind not in _PLAIN_TYPES:
                return None
            for a, b in _NUMERIC_FIELDS:
                nti(buf[a:b])  # tarfile refuses a header whose numbers do not parse
            size = nti(buf[124:136])
            name = nts(buf[0:100], enc, "surrogateescape")
            prefix = nts(buf[345:500], enc, "surrogateescape")
            folder = kind == tarfile.DIRTYPE or (kind == tarfile.AREGTYPE and name.endswith("/"))
            if folder:
                name = name.rstrip("/")
            if prefix:
                name = prefix + "/" + name
            out.append((name, pos + tarfile.BLOCKSIZE, size, not folder))
            pos += tarfile.BLOCKSIZE + (0 if folder else -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
    except (tarfile.HeaderError, ValueError):
        return None


def _scan_nested(path: str, fileobj=None, open_range=None, map_fn=map) -> tuple[dict, int]:
    """({inner tar name: [(member name, absolute data offset, size)]}, members skipped) of a tar of
    tars. Members that are not regular files (symbolic and hard links, devices, FIFOs) are never
    read: they are counted as skipped, as folders' such entries are. `fileobj`: the outer tar
    opened; `open_range(offset, size)`: a seekable file of those bytes of it (default: the outer
    member), and `map_fn` the map its inner tars are scanned with (a bucket: many at a time)."""
    out, skipped = {}, 0
    try:
        with tarfile.open(path if fileobj is None else None, "r:", fileobj=fileobj) as outer:
            inner = []
            for m in outer:
                if not m.isreg():
                    skipped += not m.isdir()
                elif m.name.endswith(".tar"):
                    inner.append(m)
                else:
                    out.setdefault("", []).append((m.name, m.offset_data, m.size))

            def scan(m: tarfile.TarInfo) -> tuple[tarfile.TarInfo, list[tuple[str, int, int]], int]:
                f = outer.extractfile(m) if open_range is None else open_range(m.offset_data, m.size)
                plain = plain_members(f)
                if plain is not None:  # 1.28M headers: tarfile's own parsing is most of a scan's time
                    return m, [(n, o, size) for n, o, size, reg in plain if reg], 0
                f.seek(0)
                try:
                    with tarfile.open(fileobj=f, mode="r:") as t:
                        members = list(t)
                except (OSError, tarfile.TarError) as exc:
                    raise ImgprepError(f"{path}: its member {m.name} is not a readable tar ({exc})") from None
                regs = [(i.name, i.offset_data, i.size) for i in members if i.isreg()]
                return m, regs, sum(1 for i in members if not i.isreg() and not i.isdir())

            for m, regs, not_files in map_fn(scan, inner):
                out[m.name] = [(n, m.offset_data + o, size) for n, o, size in regs]
                skipped += not_files
    except (OSError, tarfile.TarError) as exc:
        raise ImgprepError(f"{path}: not a readable tar of per-class tars ({exc})") from None
    return out, skipped


class LocalPlace:
    """Where the ILSVRC archives lie, read through one small interface: a local folder here; a
    bucket prefix in `bucket_src.BucketPlace` (the same discovery, by range reads)."""

    def __init__(self, src: str):
        self.root = src

    def where(self, name: str) -> str:
        return os.path.join(self.root, name)

    def isfile(self, name: str) -> bool:
        return os.path.isfile(self.where(name))

    def scan_tar(self, name: str) -> list[tuple[str, int, int]]:
        return scan_tar(self.where(name))

    def scan_nested(self, name: str) -> tuple[dict, int]:
        return _scan_nested(self.where(name))

    def devkit(self, name: str):
        """The devkit as parse_devkit takes it: (path, None) or (display name, open file)."""
        return self.where(name), None

    def source(self, archives: list[str]) -> Source:
        return Source(self.root, [self.where(a) for a in archives])


# --- layouts ---------------------------------------------------------------------------------


def _index_of(classes: list[ClassInfo]) -> dict[str, int]:
    return {c.wnid: i for i, c in enumerate(classes)}


def _label_all(wnids: list[str], index: dict[str, int], where: str) -> list[int]:
    unknown = sorted({w for w in wnids if w not in index})
    if unknown:
        raise ImgprepError(
            f"{where}: validation class {unknown[0]!r} is not a training class "
            f"({len(unknown)} unknown); every split must use the training classes"
        )
    return [index[w] for w in wnids]


def discover_ilsvrc(place, val_labels: str | None = None) -> SourceIndex:
    """The ILSVRC2012 archives at `place` (a LocalPlace or a bucket's): the train tar's per-class
    tars scanned (headers only), the val tar labelled by the devkit or by `val_labels`."""
    has_train, has_val, has_devkit = map(place.isfile, (TRAIN_TAR, VAL_TAR, DEVKIT))
    archives, splits, skipped = [], {}, {}
    words: dict[str, str] = {}
    classes: list[ClassInfo] = []
    per_class = {}
    if has_train:
        nested, not_files = place.scan_nested(TRAIN_TAR)
        skipped["train"] = len(nested.pop("", [])) + not_files
        per_class = {os.path.splitext(os.path.basename(k))[0]: v for k, v in nested.items()}
        if not per_class:
            raise ImgprepError(f"{place.where(TRAIN_TAR)}: holds no per-class tars")
    val_members, val_wnids = [], []
    if has_val:
        val_members = sorted(place.scan_tar(VAL_TAR), key=lambda m: os.path.basename(m[0]))
        if has_devkit:  # the devkit's labels, where it is there, before --val-labels
            dk_path, dk_file = place.devkit(DEVKIT)
            val_wnids, words = devkit_val_wnids(dk_path, len(val_members), dk_file)
        elif not val_labels:
            raise ImgprepError(
                f"{place.root}: {VAL_TAR} needs {DEVKIT} beside it for its labels (or pass --val-labels)"
            )
    elif has_devkit:
        words = {w: t for w, t in parse_devkit(*place.devkit(DEVKIT))[0].values()}
    if per_class:
        classes = [ClassInfo(w, words.get(w, "")) for w in sorted(per_class)]
    elif words:
        classes = [ClassInfo(w, t) for w, t in sorted(words.items())]
    if not classes:
        raise ImgprepError(f"{place.root}: found neither {TRAIN_TAR} nor {DEVKIT}; cannot tell the classes")
    index = _index_of(classes)
    if has_train:
        archives.append(TRAIN_TAR)
        items = []
        for wnid in sorted(per_class):
            for name, off, size in sorted(per_class[wnid], key=lambda m: m[0]):
                items.append(Item(f"{TRAIN_TAR}/{wnid}.tar/{name}", index[wnid], len(archives) - 1, off, size))
        splits["train"] = items
    labelled_by = place.where(DEVKIT)
    if has_val and not val_wnids and val_labels:
        val_wnids, labelled_by = read_val_labels(val_labels, [m[0] for m in val_members]), val_labels
    if has_val and val_wnids:
        archives.append(VAL_TAR)
        labels = _label_all(val_wnids, index, labelled_by)
        splits["val"] = [
            Item(f"{VAL_TAR}/{name}", lab, len(archives) - 1, off, size)
            for (name, off, size), lab in zip(val_members, labels, strict=True)
        ]
        skipped.setdefault("val", 0)
    return SourceIndex(place.source(archives), "ilsvrc", classes, splits, skipped)


def _discover_kaggle(src: str) -> SourceIndex:
    data = os.path.join(src, KAGGLE_DATA)
    mapping = os.path.join(src, "LOC_synset_mapping.txt")
    words = kaggle_words(mapping) if os.path.isfile(mapping) else {}
    train_rel = os.path.join(KAGGLE_DATA, "train")
    has_train = os.path.isdir(os.path.join(src, train_rel))
    wnids = _class_dirs(os.path.join(src, train_rel)) if has_train else sorted(words)
    if not wnids:
        raise ImgprepError(f"{data}: no train/<wnid>/ folders and no LOC_synset_mapping.txt; cannot tell the classes")
    classes = [ClassInfo(w, words.get(w, "")) for w in wnids]
    index = _index_of(classes)
    splits, skipped = {}, {}
    if has_train:
        rels = [f"{train_rel}/{w}".replace(os.sep, "/") for w in wnids]
        walk = _SplitWalk(src, [train_rel, *rels])
        splits["train"] = [walk.item(r, index[w]) for w, rel in zip(wnids, rels, strict=True) for r in walk.files(rel)]
        skipped["train"] = walk.skipped
    val_rel = os.path.join(KAGGLE_DATA, "val").replace(os.sep, "/")
    if os.path.isdir(os.path.join(src, val_rel)):
        sol = os.path.join(src, "LOC_val_solution.csv")
        if not os.path.isfile(sol):
            raise ImgprepError(f"{src}: {val_rel}/ needs LOC_val_solution.csv beside ILSVRC/ for its labels")
        labels = kaggle_val_labels(sol)
        walk = _SplitWalk(src, [val_rel])
        refs = walk.flat_files(val_rel)
        missing = [r for r in refs if _stem(r) not in labels]
        if missing:
            raise ImgprepError(f"{sol}: no label for {missing[0]} ({len(missing)} validation files unlabelled)")
        labs = _label_all([labels[_stem(r)] for r in refs], index, sol)
        splits["val"], skipped["val"] = [walk.item(r, lab) for r, lab in zip(refs, labs, strict=True)], walk.skipped
    return SourceIndex(Source(src), "kaggle", classes, splits, skipped)


def _discover_folders(src: str, split: str, val_labels: str | None) -> SourceIndex:
    root = os.path.abspath(src)
    has_splits = any(os.path.isdir(os.path.join(src, s)) for s in ("train", "val"))
    split_dirs = {s: s for s in ("train", "val") if os.path.isdir(os.path.join(src, s))} if has_splits else {split: ""}
    per_split = {s: _class_dirs(os.path.join(root, d)) for s, d in split_dirs.items()}
    class_split = "train" if "train" in split_dirs else next(iter(split_dirs))
    names = per_split[class_split]
    flat_val = "val" in split_dirs and not per_split["val"]
    if not names and not (flat_val and class_split == "val"):
        where = os.path.join(src, split_dirs[class_split])
        raise ImgprepError(
            f"{where.rstrip(os.sep)}: no class folders found; expected one sub-folder of images per class"
        )
    classes = [ClassInfo(n) for n in names]
    index = _index_of(classes)
    splits, skipped = {}, {}
    for s, d in split_dirs.items():
        split_root = os.path.join(root, d) if d else root
        if s == "val" and flat_val:
            walk = _SplitWalk(root, [d])
            refs = walk.flat_files(d)
            if not refs:
                continue
            if not val_labels:
                raise ImgprepError(
                    f"{os.path.join(src, d)}: flat validation folder needs --val-labels FILE "
                    "(one WNID per line in file-name order, or CSV file,wnid)"
                )
            labs = _label_all(read_val_labels(val_labels, refs), index, val_labels)
            splits[s], skipped[s] = [walk.item(r, lab) for r, lab in zip(refs, labs, strict=True)], walk.skipped
            continue
        unknown = [c for c in per_split[s] if c not in index]
        if unknown:
            raise ImgprepError(
                f"{os.path.join(src, d)}: class folder {unknown[0]!r} is not a class of the {class_split} split "
                f"({len(unknown)} unknown); every split must use the {class_split} classes"
            )
        strays = sum(1 for e in _list(split_root) if not e.is_dir() or not _visible(e.name))
        rels = [f"{d}/{c}" if d else c for c in per_split[s]]
        walk = _SplitWalk(root, [d, *rels])
        splits[s] = [walk.item(r, index[c]) for c, rel in zip(per_split[s], rels, strict=True) for r in walk.files(rel)]
        skipped[s] = strays + walk.skipped
    return SourceIndex(Source(root), "split-folders" if has_splits else "class-folders", classes, splits, skipped)


def detect_layout(src: str) -> str:
    """The layout SRC looks like: ilsvrc, kaggle or folders."""
    if any(os.path.isfile(os.path.join(src, n)) for n in (TRAIN_TAR, VAL_TAR)):
        return "ilsvrc"
    if os.path.isdir(os.path.join(src, KAGGLE_DATA)):
        return "kaggle"
    return "folders"


def discover(
    src: str, split: str = "train", layout: str = "auto", val_labels: str | None = None, exclude: str | None = None
) -> SourceIndex:
    """Index SRC in the given (or detected) layout, never entering the folder `exclude` (OUT,
    where it lies inside SRC: its shards are not source images).

    Raises:
        ImgprepError: SRC missing, not a folder, empty, without classes or images, or labels
            that do not fit.
    """
    if not os.path.exists(src):
        raise ImgprepError(f"{src}: no such folder; give the folder that holds your images")
    if not os.path.isdir(src):
        raise ImgprepError(f"{src}: not a folder; give the folder that holds train/<class>/ or <class>/ folders")
    if not any(_visible(e) for e in os.listdir(src)):
        raise ImgprepError(f"{src}: folder is empty; it should hold train/<class>/ or <class>/ folders of images")
    if layout not in LAYOUTS:
        raise ImgprepError(f"--layout {layout!r}: must be one of {', '.join(LAYOUTS)}")
    if val_labels and not os.path.isfile(val_labels):
        raise ImgprepError(f"--val-labels {val_labels}: no such file")
    kind = detect_layout(src) if layout == "auto" else layout
    _EXCLUDED.clear()
    if exclude is not None and os.path.isdir(exclude):
        st = os.stat(exclude)
        _EXCLUDED.add((st.st_dev, st.st_ino))
    try:
        return _discover(src, split, kind, val_labels)
    finally:
        _EXCLUDED.clear()


def _discover(src: str, split: str, kind: str, val_labels: str | None) -> SourceIndex:
    if kind == "ilsvrc":
        index = discover_ilsvrc(LocalPlace(src), val_labels)
    elif kind == "kaggle":
        index = _discover_kaggle(src)
    else:
        index = _discover_folders(src, split, val_labels)
    if not any(index.splits.values()):
        raise ImgprepError(f"{src}: the class folders hold no files")
    return index
