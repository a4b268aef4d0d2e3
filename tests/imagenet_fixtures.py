"""Miniature ImageNet downloads for tests: the ILSVRC2012 archives with a devkit, and the Kaggle layout."""

from __future__ import annotations

import csv
import io
import os
import tarfile

import numpy as np

from helpers import jpeg_bytes, smooth_rgb

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
WORDS = {
    "n01440764": "tench, Tinca tinca",
    "n01443537": "goldfish, Carassius auratus",
    "n01484850": "great white shark",
    "n01491361": "tiger shark, Galeocerdo cuvieri",
}
# ILSVRC2012_IDs deliberately NOT in sorted-WNID order (as in the real meta.mat)
IDS = {"n01440764": 3, "n01443537": 1, "n01484850": 4, "n01491361": 2}


def images(n_per_class: int, seed: int = 0) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(seed)
    out = {}
    for c, w in enumerate(WNIDS):
        out[w] = []
        for i in range(n_per_class):
            h, wd = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            img = smooth_rgb(h, wd, seed=seed * 1000 + c * 100 + i)
            img[..., c % 3] = 250  # class colour
            out[w].append(jpeg_bytes(img))
    return out


def val_set(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    """n (wnid, jpeg) validation images in file order, classes interleaved irregularly."""
    rng = np.random.default_rng(seed)
    imgs = images(n, seed)
    return [
        (WNIDS[int(rng.integers(0, len(WNIDS)))], imgs[WNIDS[i % len(WNIDS)]][i // len(WNIDS) % n]) for i in range(n)
    ]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def write_meta_mat(path: str) -> None:
    """data/meta.mat with leaf synsets (IDs 1-4, unsorted) and two internal synsets."""
    import scipy.io

    dt = [
        ("ILSVRC2012_ID", "O"),
        ("WNID", "O"),
        ("words", "O"),
        ("gloss", "O"),
        ("num_children", "O"),
        ("children", "O"),
        ("wordnet_height", "O"),
        ("num_train_images", "O"),
    ]
    rows = [(IDS[w], w, WORDS[w], "a fish", 0, np.zeros((0,), np.uint8), 0, 10) for w in WNIDS]
    rows.sort(key=lambda r: r[0])
    rows += [
        (5, "n02512053", "fish", "any of various vertebrates", 2, np.array([1, 3]), 1, 0),
        (6, "n01471682", "vertebrate, craniate", "animals having a bony skeleton", 1, np.array([5]), 2, 0),
    ]
    scipy.io.savemat(path, {"synsets": np.array(rows, dtype=dt).reshape(-1, 1)})


def build_ilsvrc(root: str, train: dict[str, list[bytes]], val: list[tuple[str, bytes]]) -> None:
    """ILSVRC2012_img_train.tar (tar of per-class tars), ILSVRC2012_img_val.tar, devkit tar.gz."""
    os.makedirs(root, exist_ok=True)
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_train.tar"), "w") as outer:
        for w in WNIDS[::-1]:  # archive order need not be sorted
            b = io.BytesIO()
            with tarfile.open(fileobj=b, mode="w") as inner:
                for i, data in enumerate(train[w]):
                    _add(inner, f"{w}_{i + 10}.JPEG", data)
            _add(outer, f"{w}.tar", b.getvalue())
    with tarfile.open(os.path.join(root, "ILSVRC2012_img_val.tar"), "w") as t:
        for i in reversed(range(len(val))):  # stored out of name order: labels follow the names
            _add(t, f"ILSVRC2012_val_{i + 1:08d}.JPEG", val[i][1])
    meta = os.path.join(root, "meta.mat")
    write_meta_mat(meta)
    gt = "".join(f"{IDS[w]}\n" for w, _ in val).encode()
    with tarfile.open(os.path.join(root, "ILSVRC2012_devkit_t12.tar.gz"), "w:gz") as t:
        t.add(meta, "ILSVRC2012_devkit_t12/data/meta.mat")
        _add(t, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", gt)
        _add(t, "ILSVRC2012_devkit_t12/readme.txt", b"devkit")
    os.remove(meta)


def build_kaggle(root: str, train: dict[str, list[bytes]], val: list[tuple[str, bytes]]) -> None:
    """ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/}, LOC_synset_mapping.txt, LOC_val_solution.csv."""
    data = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    for w in WNIDS:
        d = os.path.join(data, "train", w)
        os.makedirs(d, exist_ok=True)
        for i, b in enumerate(train[w]):
            open(os.path.join(d, f"{w}_{i + 10}.JPEG"), "wb").write(b)
    os.makedirs(os.path.join(data, "val"), exist_ok=True)
    for i, (_, b) in enumerate(val):
        open(os.path.join(data, "val", f"ILSVRC2012_val_{i + 1:08d}.JPEG"), "wb").write(b)
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w") as f:
        for w in WNIDS:
            f.write(f"{w} {WORDS[w]}\n")
    with open(os.path.join(root, "LOC_val_solution.csv"), "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["ImageId", "PredictionString"])
        for i, (w, _) in enumerate(val):
            wr.writerow([f"ILSVRC2012_val_{i + 1:08d}", f"{w} 1 2 30 40 {w} 5 6 70 80"])
