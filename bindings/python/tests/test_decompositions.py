"""gbtd's decompositions and tensor algebra against TensorLy 0.10 (the pinned peer), with brute-force
checks where TensorLy has no counterpart (BTD, collective factorization)."""
import signal
import threading
import time

import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import parafac as tl_parafac
from tensorly.decomposition import partial_tucker as tl_partial_tucker
from tensorly.decomposition import tucker as tl_tucker

import gbtd


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def low_rank(shape, rank, seed, noise=0.05, dtype=np.float64):
    """A tensor of multilinear rank `rank` plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rank)
    for m, (d, r) in enumerate(zip(shape, rank)):
        x = tl.tenalg.mode_dot(x, rng.standard_normal((d, r)), m)
    x = x + noise * np.linalg.norm(x) / np.sqrt(x.size) * rng.standard_normal(shape)
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,rank", [((20, 15, 10), [5, 4, 3]), ((16, 12, 3, 3), [6, 5, 3, 3])])
def test_tucker_equals_tensorly(dtype, shape, rank):
    x = low_rank(shape, rank, seed=1, dtype=dtype)
    ours = gbtd.tucker(x, rank=rank, n_iter_max=50, tol=0)
    theirs = tl_tucker(x, rank=rank, n_iter_max=50, tol=0)
    assert ours.core.dtype == dtype and [f.dtype for f in ours.factors] == [dtype] * len(shape)
    assert ours.core.shape == tuple(rank)
    assert [f.shape for f in ours.factors] == [(d, r) for d, r in zip(shape, rank)]
    e_ours = rel(ours.to_tensor(), x)
    e_theirs = rel(tl.tucker_to_tensor(theirs), x)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    assert abs(e_ours - e_theirs) <= tol + 0.01 * e_theirs
    assert abs(ours.rel_error - e_ours) <= tol + 1e-6 * e_ours
    # The reconstructions are the same tensor (the subspaces agree; factors may differ by signs).
    assert rel(ours.to_tensor(), tl.tucker_to_tensor(theirs)) <= (1e-6 if dtype == np.float64 else 1e-3)
    # Factors are orthonormal, as TensorLy's.
    for f in ours.factors:
        assert np.allclose(f.T @ f, np.eye(f.shape[1]), atol=1e-5 if dtype == np.float32 else 1e-10)


def test_tucker_int_rank_and_errors_per_sweep():
    x = low_rank((10, 9, 8), (3, 3, 3), seed=2)
    t, errors = gbtd.tucker(x, rank=3, n_iter_max=20, tol=0, return_errors=True)
    assert t.core.shape == (3, 3, 3) and len(errors) == t.n_iter == 20
    assert errors[-1] == pytest.approx(t.rel_error, rel=1e-9)
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), "HOOI's error never increases"


def test_partial_tucker_equals_tensorly_on_a_conv_kernel():
    w = low_rank((32, 24, 3, 3), (8, 6, 3, 3), seed=3)
    (core, factors), errors = gbtd.partial_tucker(w, rank=[8, 6], modes=[0, 1], n_iter_max=30, tol=0)
    (tcore, tfactors), terrors = tl_partial_tucker(w, rank=[8, 6], modes=[0, 1], n_iter_max=30, tol=0)
    assert core.shape == tcore.shape == (8, 6, 3, 3)
    assert [f.shape for f in factors] == [f.shape for f in tfactors]
    assert len(errors) == len(terrors) == 30
    np.testing.assert_allclose(errors, terrors, rtol=1e-6, atol=1e-12)
    ours = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    theirs = tl.tenalg.multi_mode_dot(tcore, tfactors, modes=[0, 1])
    assert rel(ours, theirs) < 1e-8


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape,rank", [((12, 10, 8), 4), ((6, 5, 4, 3), 7)])
def test_parafac_equals_tensorly(shape, rank, normalize):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape)
    ours, errors = gbtd.parafac(x, rank=rank, n_iter_max=40, tol=0, random_state=5, normalize_factors=normalize, return_errors=True)
    theirs, terrors = tl_parafac(x, rank=rank, n_iter_max=40, tol=0, random_state=5, normalize_factors=normalize, return_errors=True)
    weights, factors = ours
    assert weights.shape == (rank,) and [f.shape for f in factors] == [(d, rank) for d in shape]
    if not normalize:
        assert np.all(weights == 1.0), "TensorLy's default: unit weights, the scale in the factors"
    # Same initialisation (numpy's RandomState for columns beyond a dimension) and the same ALS
    # iterates: the errors per sweep agree, and so do the reconstructions.
    np.testing.assert_allclose(errors, terrors, rtol=1e-6)
    assert rel(tl.cp_to_tensor(ours), tl.cp_to_tensor(theirs)) < 1e-6
    assert ours.rel_error == pytest.approx(rel(tl.cp_to_tensor(ours), x), rel=1e-6)


def test_btd_terms_sum_to_the_reconstruction_and_one_term_is_tucker():
    w = low_rank((12, 10, 3, 3), (4, 4, 3, 3), seed=6)
    b = gbtd.btd(w, n_terms=3, rank=[2, 2], n_iter_max=20)
    assert len(b) == 3 and b.modes == [0, 1]
    total = sum(tl.tenalg.multi_mode_dot(c, f, modes=[0, 1]) for c, f in b)
    assert b.rel_error == pytest.approx(rel(total, w), rel=1e-6)
    one = gbtd.btd(w, n_terms=1, rank=[4, 3], n_iter_max=30, tol=0)
    (core, factors), _ = tl_partial_tucker(w, rank=[4, 3], modes=[0, 1], n_iter_max=30, tol=0)
    assert one.rel_error == pytest.approx(rel(tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1]), w), rel=1e-3)


def test_collective_shares_cores_and_input_factors():
    rng = np.random.default_rng(7)
    kernels = [rng.standard_normal((d4, 6, 3, 3)) for d4 in (8, 5, 7)]
    c = gbtd.collective(kernels, n_terms=2, rank=(3, 2), n_iter_max=15)
    assert len(c.cores) == len(c.input_factors) == 2
    assert [c.cores[0].shape, c.input_factors[0].shape] == [(3, 2, 3, 3), (6, 2)]
    assert [c.output_factors[l][0].shape for l in range(3)] == [(8, 3), (5, 3), (7, 3)]
    for l, k in enumerate(kernels):
        # Each kernel from the shared parts, by the definition (a brute-force sum of terms).
        rebuilt = sum(
            tl.tenalg.multi_mode_dot(g, [a4, a3], modes=[0, 1])
            for g, a3, a4 in zip(c.cores, c.input_factors, c.output_factors[l])
        )
        assert c.rel_errors[l] == pytest.approx(rel(rebuilt, k), rel=1e-8)
        assert np.allclose(c.kernel(l), rebuilt)


def test_algebra_equals_tensorly():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 5, 6, 3))
    for mode in range(4):
        np.testing.assert_array_equal(gbtd.unfold(x, mode), tl.unfold(x, mode))
        np.testing.assert_array_equal(gbtd.fold(tl.unfold(x, mode), mode, x.shape), x)
        m = rng.standard_normal((7, x.shape[mode]))
        np.testing.assert_allclose(gbtd.mode_dot(x, m, mode), tl.tenalg.mode_dot(x, m, mode), rtol=1e-12)
        np.testing.assert_allclose(gbtd.mode_dot(x, m.T, mode, transpose=True), tl.tenalg.mode_dot(x, m.T, mode, transpose=True), rtol=1e-12)
        v = rng.standard_normal(x.shape[mode])
        np.testing.assert_allclose(gbtd.mode_dot(x, v, mode), tl.tenalg.mode_dot(x, v, mode), rtol=1e-12)
    mats = [rng.standard_normal((2, d)) for d in x.shape]
    for skip in (None, 1):
        np.testing.assert_allclose(
            gbtd.multi_mode_dot(x, mats, skip=skip), tl.tenalg.multi_mode_dot(x, mats, skip=skip), rtol=1e-12
        )


def test_any_strides_give_the_result_of_the_contiguous_copy():
    rng = np.random.default_rng(9)
    base = rng.standard_normal((12, 20, 14))
    view = base[:, ::-2, 1::2].transpose(2, 0, 1)  # negative and non-unit strides, permuted
    assert not view.flags.c_contiguous
    a = gbtd.tucker(view, rank=[3, 4, 5], n_iter_max=10, tol=0)
    b = gbtd.tucker(np.ascontiguousarray(view), rank=[3, 4, 5], n_iter_max=10, tol=0)
    assert a.rel_error == pytest.approx(b.rel_error, rel=1e-12)
    np.testing.assert_allclose(a.to_tensor(), b.to_tensor(), atol=1e-12)
    np.testing.assert_array_equal(gbtd.unfold(view, 1), tl.unfold(view, 1))


def test_results_are_handed_over_without_a_copy():
    x = low_rank((10, 8, 6), (3, 3, 3), seed=10)
    core, factors = gbtd.tucker(x, rank=[3, 3, 3])
    # Arrays made from Rust-owned buffers do not own their data: their base is the Rust
    # container, not a NumPy array that was copied from.
    for a in [core, *factors]:
        assert not a.flags.owndata and not isinstance(a.base, np.ndarray)


def test_other_dtypes_and_torch_tensors_are_accepted():
    import torch

    x = np.arange(60).reshape(3, 4, 5)  # int64
    t = gbtd.tucker(x, rank=[2, 2, 2])
    assert t.core.dtype == np.float64
    tt = gbtd.tucker(torch.from_numpy(x.astype(np.float32)), rank=[2, 2, 2])
    assert tt.core.dtype == np.float32


def test_bad_input_raises_ordinary_exceptions():
    x = np.random.default_rng(11).standard_normal((6, 5, 4))
    with pytest.raises(ValueError, match="larger than its dimension"):
        gbtd.tucker(x, rank=[7, 2, 2])
    with pytest.raises(ValueError, match="rank"):
        gbtd.tucker(x, rank=[0, 2, 2])
    with pytest.raises(ValueError):
        gbtd.partial_tucker(x, rank=[2, 2], modes=[0, 0])
    with pytest.raises(ValueError):
        gbtd.partial_tucker(x, rank=[2, 2], modes=[0, 5])
    with pytest.raises(ValueError, match="ranks given"):
        gbtd.tucker(x, rank=[2, 2])
    nan = x.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN|non-finite"):
        gbtd.parafac(nan, rank=2)
    with pytest.raises(ValueError, match="init"):
        gbtd.parafac(x, rank=2, init="magic")
    with pytest.raises(TypeError, match="random_state"):
        gbtd.parafac(x, rank=2, random_state="seed")
    with pytest.raises(NotImplementedError, match="mask"):
        gbtd.parafac(x, rank=2, mask=np.ones_like(x))
    with pytest.raises(TypeError):
        gbtd.tucker(np.array(["a", "b"]), rank=[1])
    # A rank whose factors alone would need gigabytes is refused before anything is allocated.
    with pytest.raises(MemoryError, match="bytes"):
        gbtd.parafac(np.ones((100, 100, 100)), rank=2_000_000, n_iter_max=1)


def test_ctrl_c_interrupts_a_long_run_between_sweeps():
    x = np.random.default_rng(12).standard_normal((150, 150, 150))
    timer = threading.Timer(0.5, lambda: signal.raise_signal(signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        gbtd.parafac(x, rank=40, n_iter_max=100_000, tol=0)
    timer.join()
    # 100,000 sweeps would take hours; the interrupt came within a few sweeps of the signal.
    assert time.perf_counter() - start < 60


def test_the_gil_is_released_while_computing():
    x = np.random.default_rng(13).standard_normal((120, 120, 120))
    done = threading.Event()
    ticks = 0

    def work():
        gbtd.parafac(x, rank=30, n_iter_max=15, tol=0)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    # A held GIL would stop this loop for the whole decomposition (one or two ticks at most).
    assert ticks > 20


def test_blas_info_and_threads():
    info = gbtd.blas_info()
    assert info["core"] and isinstance(info["switched"], bool)
    old = gbtd.get_num_threads()
    gbtd.set_num_threads(1)
    assert gbtd.get_num_threads() == 1
    x = np.random.default_rng(14).standard_normal((30, 20, 10))
    one = gbtd.tucker(x, rank=[4, 4, 4])
    gbtd.set_num_threads(2)
    two = gbtd.tucker(x, rank=[4, 4, 4])
    gbtd.set_num_threads(0)
    assert gbtd.get_num_threads() == old
    # gbtd's results do not depend on the thread count.
    np.testing.assert_array_equal(one.core, two.core)
