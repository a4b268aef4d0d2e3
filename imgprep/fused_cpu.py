"""The DALI CPU pipeline's one-pass operator as numba functions compiled once per machine.

DALI's `NumbaFunction` compiles its C-callable wrappers afresh in every process (~5 s here, most
of a loader's start). These are the same wrappers, specialized to this operator's types and
declared with `cache=True`, so numba stores the machine code (beside this file, or in its user
cache when that is read-only) and later processes load it in a fraction of a second. Where neither
is writable (a read-only install run by a user with no writable home: a container, a cluster job)
the cache goes to a private per-user folder in the temporary directory, and where even that cannot
be had, the wrappers are compiled in memory (one note line): every user can run the loader.

ABI (DALI's numba plugin, per-sample mode): run(out_ptrs, out_shapes, out_ndims, num_outs, in_ptrs,
in_shapes, in_ndims, num_ins): each *_ptrs is an array of data addresses, each *_shapes an array of
addresses of int64 shape arrays; setup(out_shapes, out_ndims, num_outs, in_shapes, in_ndims,
num_ins, num_samples) fills the output shapes of a batch.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile

import numpy as np
from numba import carray, cfunc, extending, njit
from numba import config as numba_config
from numba import types as nt

__all__ = ["fused_kernel", "run_cfunc", "setup_cfunc"]


@extending.intrinsic
def _ptr(typingctx, src):
    """An integer address as a void pointer (for `carray`)."""
    from numba.core import cgutils

    def codegen(cgctx, builder, sig, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return nt.voidptr(src), codegen


def _private_cache_dir() -> str | None:
    """A folder only this user can write, in the temporary directory: numba loads what its cache
    holds, so a folder someone else made (or a link placed there) is never used."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"imgprep-numba-cache-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        return None
    return path


_NOTED = False  # the in-memory note is printed once per process


def cached(decorator, fn):
    """`decorator(cache=True)(fn)`, with the cache moved to a private temporary folder where numba
    finds no writable place for it, or compiled in memory (`cache=False`) where there is none."""
    try:
        return decorator(cache=True)(fn)
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
    private = _private_cache_dir()
    if private is not None:
        numba_config.CACHE_DIR = private  # numba's UserProvidedCacheLocator, tried first
        try:
            return decorator(cache=True)(fn)
        except RuntimeError:
            pass
    global _NOTED
    if not _NOTED:
        _NOTED = True
        print(
            "note: no writable folder for numba's cache; compiling the loader's CPU operator in memory", file=sys.stderr
        )
    return decorator(cache=False)(fn)


def _fused_kernel(out, img, mean, p):
    """One augmented view in one pass (DALI calls it per sample on its threads).

    out: float32 (3, c, c). img: uint8 (c, c, 3), the decoded window. mean: float32 (1, 3, S, S),
    the mean image divided by std, or (1, 3, 1, 1) for none.
    p: float32 (9,): top, left, mirror, 1/std (3), (lighting shift - channel mean) / std (3).
    out[ch, h, w'] = img[h, w, ch] / std + offset[ch] - mean[ch, top + h, left + w],
    w' = c - 1 - w when mirrored, else w.

    The loops read each row's pixels forwards as one flat row: a stride-3 gather that LLVM
    vectorizes (AVX2 or AVX-512). A forward row is one loop per channel, straight into its output
    plane: one load and one store stream a loop, which LLVM vectorizes well on both CPU kinds
    (three channels in one loop took 2-3x as long on an Intel Xeon). A mirrored row is made in a
    small buffer that stays in L1, stored backwards through an unsigned index (a signed one brings
    numba's negative-index wraparound, which keeps the loop scalar), then copied to `out` front to
    back: backwards stores into the batch's cold output cost 2-3x. `benchmarks/bench_fused.py`
    measures it against the former form (every row through the buffer).
    """
    top, left, mirror = int(p[0]), int(p[1]), p[2] > 0.5
    hh, ww = img.shape[0], img.shape[1]
    i0, i1, i2, o0, o1, o2 = p[3], p[4], p[5], p[6], p[7], p[8]
    has_mean = mean.shape[3] > 1
    flat = img.reshape(-1)
    row = np.empty((3, ww), np.float32)  # a mirrored row's (3, c), in L1
    t0, t1, t2 = row[0], row[1], row[2]
    last = ww - 1
    for h in range(hh):
        src = flat[h * ww * 3 : (h + 1) * ww * 3]
        if not mirror:
            for ch in range(3):
                inv, off, dst = p[3 + ch], p[6 + ch], out[ch, h]
                if has_mean:
                    m = mean[0, ch, top + h, left : left + ww]
                    for w in range(ww):
                        dst[w] = src[3 * w + ch] * inv + off - m[w]
                else:
                    for w in range(ww):
                        dst[w] = src[3 * w + ch] * inv + off
            continue
        if has_mean:
            y, z = top + h, left + ww
            m0, m1, m2 = mean[0, 0, y, left:z], mean[0, 1, y, left:z], mean[0, 2, y, left:z]
            for w in range(ww):
                k = np.uint64(last - w)
                t0[k] = src[3 * w] * i0 + o0 - m0[w]
                t1[k] = src[3 * w + 1] * i1 + o1 - m1[w]
                t2[k] = src[3 * w + 2] * i2 + o2 - m2[w]
        else:
            for w in range(ww):
                k = np.uint64(last - w)
                t0[k] = src[3 * w] * i0 + o0
                t1[k] = src[3 * w + 1] * i1 + o1
                t2[k] = src[3 * w + 2] * i2 + o2
        d0, d1, d2 = out[0, h], out[1, h], out[2, h]
        for w in range(ww):
            d0[w] = t0[w]
            d1[w] = t1[w]
            d2[w] = t2[w]


_RUN_SIG = nt.void(nt.uint64, nt.uint64, nt.uint64, nt.int32, nt.uint64, nt.uint64, nt.uint64, nt.int32)
_SETUP_SIG = nt.void(nt.uint64, nt.uint64, nt.int32, nt.uint64, nt.uint64, nt.int32, nt.int32)


fused_kernel = cached(njit, _fused_kernel)


def _run(out_ptr, out_shapes_ptr, out_ndims_ptr, num_outs, in_ptr, in_shapes_ptr, in_ndims_ptr, num_ins):
    """DALI's per-sample entry: out float32 (3, c, c); ins uint8 (c, c, 3), float32 (1, 3, S, S), float32 (9,)."""
    outs = carray(_ptr(out_ptr), 1, dtype=np.int64)
    out_shapes = carray(_ptr(out_shapes_ptr), 1, dtype=np.int64)
    ins = carray(_ptr(in_ptr), 3, dtype=np.int64)
    in_shapes = carray(_ptr(in_shapes_ptr), 3, dtype=np.int64)
    so = carray(_ptr(out_shapes[0]), 3, dtype=np.int64)
    s0 = carray(_ptr(in_shapes[0]), 3, dtype=np.int64)
    s1 = carray(_ptr(in_shapes[1]), 4, dtype=np.int64)
    s2 = carray(_ptr(in_shapes[2]), 1, dtype=np.int64)
    out = carray(_ptr(outs[0]), (so[0], so[1], so[2]), dtype=np.float32)
    img = carray(_ptr(ins[0]), (s0[0], s0[1], s0[2]), dtype=np.uint8)
    mean = carray(_ptr(ins[1]), (s1[0], s1[1], s1[2], s1[3]), dtype=np.float32)
    p = carray(_ptr(ins[2]), (s2[0],), dtype=np.float32)
    fused_kernel(out, img, mean, p)


def _setup(out_shapes_ptr, out_ndims_ptr, num_outs, in_shapes_ptr, in_ndims_ptr, num_ins, num_samples):
    """Output shape (3, c, c) of every sample from its window's (c, c, 3)."""
    outs = carray(_ptr(out_shapes_ptr), (num_outs, num_samples), dtype=np.int64)
    ins = carray(_ptr(in_shapes_ptr), (num_ins, num_samples), dtype=np.int64)
    for i in range(num_samples):
        o = carray(_ptr(outs[0, i]), 3, dtype=np.int64)
        s = carray(_ptr(ins[0, i]), 3, dtype=np.int64)
        o[0], o[1], o[2] = 3, s[0], s[1]


run_cfunc = cached(lambda cache: cfunc(_RUN_SIG, nopython=True, cache=cache), _run)
setup_cfunc = cached(lambda cache: cfunc(_SETUP_SIG, nopython=True, cache=cache), _setup)
