"""The bytes `prepare` writes for a fixed synthesized dataset and seed, pinned.

Recorded before the code was reorganised (issue 11) so that moving code can never change an output
byte. The bytes depend on the JPEG codecs and resamplers of the libraries below; where another
version is installed the recorded hashes do not apply and the test says so (skip), rather than
failing on a change that is not ours.

stats.json changed once (issue 18): its eigenvectors came from LAPACK, whose kernels differ in the
last bits between AVX2 and AVX-512 CPUs; they now come from a pure-Python solver, the same on every
CPU, so these hashes hold on both kinds.
"""

import hashlib
import importlib.metadata as md
import os

import pytest

from imgprep.prepare import PrepareConfig, prepare
from imgprep.synth import SynthConfig, synthesize

# the codec versions these bytes were recorded or checked with (a fresh install took OpenCV 5.1
# once it was published: the test skipped there until its bytes were checked and it was added)
RECORDED_WITH = [
    {"numpy": "2.4.6", "pillow": "13.0.0", "opencv-python-headless": "5.0.0.93", "simplejpeg": "1.9.0"},
    {"numpy": "2.4.6", "pillow": "13.0.0", "opencv-python-headless": "5.1.0.95", "simplejpeg": "1.9.0"},
]
SHA256 = {
    "rejects.jsonl": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "stats/mean.npy": "8de7a02975133d61fdd97da5d19091881355e1d9b13e5b68863cd0235cf4874a",
    "stats/stats.json": "45e3f73ec0c4ea2e8b60f703d814ba1779ed42e9a13b0cdb2c6643e2ad26dfd0",
    "train/train-000000.idx": "a6b713bcbececd706ac98f18e2d16c57d7c7e3b0aec4030c76c24eadd984ae9f",
    "train/train-000000.tar": "b3b6b26c12a2924f171ddaccedf7e7d8b1c4d2105bbc09683f921fd66be34ed7",
    "train/train-000001.idx": "cb165603aba4f140ed9cd07c5d3f9aae7c32fbea98add87258ae6594307cdfdc",
    "train/train-000001.tar": "e1d70e5ed582027538d4d1dd220da8f73f84305667f5a814600465954f4a9e1c",
    "train/train-000002.idx": "61f0c35c9aa102406a75e4f79d40c7bf9d78e3191bb09e3cbd9a0c1fe60bff3a",
    "train/train-000002.tar": "af7d2c34f59bdf95b15bdb5e7fc228feea2ecefe847a7ea20982ac2363a1b757",
    "train/train-000003.idx": "9ce309625c34902b472dc3be2402624af48d7c096f2eb93336b6496ccaa432a2",
    "train/train-000003.tar": "20f66ba6d81cf459a621a0129851659e9732ebed2036a2f1ba385ade0a04f2a1",
    "val/val-000000.idx": "33a1b53145da62ed7836102639360b18f7a29af34522711b6a7598c51f564b5d",
    "val/val-000000.tar": "5c44746922bc012779e71931306058224d391a23812e5e9e0161a52d3fae57d1",
    "val/val-000001.idx": "52aa775c61af80dd7ba7f6be291b992ac3a3843ae96cb77d296ff930fc8ef262",
    "val/val-000001.tar": "9b1b22412f55862da2c2f0e7f58530283d0b2a0062b70223e2038a496d611b52",
}


def _installed() -> dict:
    return {p: md.version(p) for p in RECORDED_WITH[0]}


@pytest.mark.parametrize("workers", [1, 2])
def test_shards_and_statistics_are_byte_identical_to_the_recorded_ones(tmp_path, workers):
    if _installed() not in RECORDED_WITH:
        pytest.skip(f"hashes recorded with {RECORDED_WITH}; installed {_installed()}")
    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    synthesize(SynthConfig(src, classes=3, per_class=5, val_per_class=2, seed=7, min_side=60, max_side=140))
    prepare(
        PrepareConfig(src, out, size=64, shard_size=4, seed=11, workers=workers), progress=False, log=lambda s: None
    )
    got = {}
    for d, _, files in os.walk(out):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
            if rel != "manifest.json":  # holds the absolute SRC path; its shard hashes are checked via the shards
                with open(os.path.join(d, f), "rb") as fh:
                    got[rel] = hashlib.sha256(fh.read()).hexdigest()
    assert got == SHA256
