"""Statistics against a NumPy reference over the same pixels."""

import numpy as np
import pytest

from imgprep.stats import StatsAccumulator, finalize, gram, pca


def images(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size, size, 3))
    # correlated channels, like photos
    base[..., 1] = (0.6 * base[..., 0] + 0.4 * base[..., 1]).astype(int)
    return base.astype(np.uint8)


def test_gram_exact_on_every_size_and_extreme():
    rng = np.random.default_rng(7)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        lo = int(rng.integers(0, 256))
        img = rng.integers(lo, 256, (h, w, 3), dtype=np.uint8)
        x = img.reshape(-1, 3).astype(np.int64)
        assert np.array_equal(gram(img), x.T @ x), (h, w, lo)
    for v in (0, 1, 254, 255):
        big = np.full((2048, 2048, 3), v, np.uint8)
        big[::2, :, 1] = 255 - v
        x = big.reshape(-1, 3).astype(np.int64)
        assert np.array_equal(gram(big), x.T @ x)


def test_gram_exact():
    for img in images(3):
        x = img.reshape(-1, 3).astype(np.int64)
        assert np.array_equal(gram(img), x.T @ x)
    full = np.full((256, 256, 3), 255, np.uint8)  # the largest possible per-image entry
    assert gram(full)[0, 0] == 255 * 255 * 256 * 256


def test_finalize_matches_numpy_reference():
    imgs = images(20)
    acc = StatsAccumulator(16)
    for im in imgs:
        acc.add(im)
    st = finalize(acc)
    px = imgs.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(st.mean_image, imgs.mean(axis=0), rtol=0, atol=1e-4)
    assert st.mean_image.dtype == np.float32 and st.mean_image.shape == (16, 16, 3)
    np.testing.assert_allclose(st.mean, px.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(st.std, px.std(axis=0), rtol=1e-10)
    cov = np.cov(px, rowvar=False, bias=True)
    np.testing.assert_allclose(st.cov, cov, rtol=1e-10, atol=1e-8)
    w, v = np.linalg.eigh(cov)
    np.testing.assert_allclose(st.eigval, w[::-1], rtol=1e-10)
    assert np.all(np.diff(st.eigval) <= 0)
    for i in range(3):  # eigvec[i] is the eigenvector of eigval[i]
        np.testing.assert_allclose(cov @ st.eigvec[i], st.eigval[i] * st.eigvec[i], atol=1e-8)
    np.testing.assert_allclose(st.eigvec @ st.eigvec.T, np.eye(3), atol=1e-12)
    assert st.pixels == 20 * 16 * 16 and st.images == 20


def test_merge_is_exact_and_order_free():
    imgs = images(30, seed=1)
    whole = StatsAccumulator(16)
    for im in imgs:
        whole.add(im)
    parts = [StatsAccumulator(16) for _ in range(3)]
    for i, im in enumerate(imgs):
        parts[i % 3].add(im)
    merged = StatsAccumulator(16)
    for p in reversed(parts):
        merged.merge(StatsAccumulator.from_arrays(p.to_arrays()))
    assert np.array_equal(merged.sum_image, whole.sum_image) and np.array_equal(merged.gram, whole.gram)
    a, b = finalize(whole), finalize(merged)
    assert a.to_json() == b.to_json() and np.array_equal(a.mean_image, b.mean_image)


def test_merge_rejects_other_size():
    with pytest.raises(ValueError):
        StatsAccumulator(8).merge(StatsAccumulator(16))


def test_pca_sign_convention_and_order():
    cov = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]])
    val, vec = pca(cov)
    assert np.all(np.diff(val) < 0)
    for i in range(3):
        assert vec[i, np.argmax(np.abs(vec[i]))] > 0
        np.testing.assert_allclose(cov @ vec[i], val[i] * vec[i], atol=1e-12)


def test_empty_accumulator_cannot_finalize():
    with pytest.raises(ValueError):
        finalize(StatsAccumulator(4))


def test_pca_equals_lapack_on_random_and_degenerate_covariances():
    """The pure-Python Jacobi solver (the same bits on every CPU) against numpy's LAPACK eigh."""
    rng = np.random.default_rng(0)
    covs = [np.diag([3.0, 2.0, 1.0]), np.eye(3) * 5.0, np.diag([4.0, 4.0, 1.0]), np.zeros((3, 3))]
    for _ in range(200):
        x = rng.normal(size=(50, 3)) * rng.uniform(0.1, 80, 3) + rng.uniform(0, 255, 3)
        covs.append(np.cov(x.T, bias=True))
    for cov in covs:
        val, vec = pca(cov)
        w = np.linalg.eigh(cov)[0][::-1]
        scale = max(1.0, abs(w).max())
        assert np.allclose(val, w, atol=1e-12 * scale), cov
        assert np.allclose(vec @ vec.T, np.eye(3), atol=1e-12)
        assert np.allclose(cov @ vec.T, vec.T * val, atol=1e-10 * scale)
        assert list(val) == sorted(val, reverse=True)


def test_partial_uint16_sums_fold_into_the_exact_int64_sum(monkeypatch):
    """The per-position sums are kept in uint16 between folds: folded every 2 images here, they
    equal a plain int64 NumPy sum, also across merge and to_arrays/from_arrays."""
    from imgprep import stats

    monkeypatch.setattr(stats, "_PART_IMAGES", 2)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(7)]
    a, b = stats.StatsAccumulator(8), stats.StatsAccumulator(8)
    for im in images[:5]:
        a.add(im)
    for im in images[5:]:
        b.add(im)
    a.merge(stats.StatsAccumulator.from_arrays(b.to_arrays()))
    want = np.sum(np.stack(images).astype(np.int64), axis=0)
    assert a.images == 7 and np.array_equal(a.sum_image, want) and a.sum_image.dtype == np.int64
    x = np.concatenate([im.reshape(-1, 3).astype(np.int64) for im in images])
    assert np.array_equal(a.gram, x.T @ x)


def test_white_images_fill_the_uint16_partial_sum_exactly_and_fold():
    """At the default fold (every 257 images) a partial sum of white pixels reaches 2^16 - 1, the
    most uint16 holds: 600 white images (two folds and a part) sum exactly, and a black pixel
    between keeps its zeros."""
    img = np.full((4, 4, 3), 255, np.uint8)
    img[1, 2] = 0
    acc = StatsAccumulator(4)
    for _ in range(600):
        acc.add(img)
    want = img.astype(np.int64) * 600
    assert np.array_equal(acc.sum_image, want) and acc.sum_image.max() == 600 * 255
    x = img.reshape(-1, 3).astype(np.int64)
    assert np.array_equal(acc.gram, 600 * (x.T @ x))


def test_gram_into_reused_planes_and_planes_of_another_size():
    rng = np.random.default_rng(3)
    planes = [np.empty((32, 32), np.uint8) for _ in range(3)]
    for h, w in ((32, 32), (32, 32), (17, 40)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        x = img.reshape(-1, 3).astype(np.int64)
        assert np.array_equal(gram(img, planes), x.T @ x)
        assert np.array_equal(gram(img[:, ::-1], planes), x.T @ x)  # a strided view: copied first
