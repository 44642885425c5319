"""gbtd: tensor decompositions in Rust, with TensorLy's API.

A TensorLy user changes one import (``from gbtd import tucker, parafac, partial_tucker`` instead
of ``from tensorly.decomposition import ...``)::

    import gbtd
    core, factors = gbtd.tucker(x, rank=[10, 10, 10])
    weights, factors = gbtd.parafac(x, rank=10)
    (core, factors), errors = gbtd.partial_tucker(w, rank=[64, 64], modes=[0, 1])

Every decomposition returns TensorLy's types (a ``(core, factors)`` or ``(weights, factors)``
pair) with the fit's report as attributes: ``rel_error`` (``‖X − X̂‖/‖X‖``), ``errors`` (after
each sweep, TensorLy's ``rec_errors``), ``n_iter`` and ``converged``. Arrays are NumPy
``float32`` or ``float64`` with any strides (other dtypes and PyTorch tensors are converted to
``float64``/their NumPy view first); results have the input's dtype and are handed over from Rust
without a copy. While computing, the GIL is released and Ctrl-C stops a run between two sweeps
with ``KeyboardInterrupt``.

Conventions (those of TensorLy): unfolding is row-major; a conv kernel is in PyTorch layout
``(out, in, kh, kw)``; ``random_state=None`` means seed 0 (results are reproducible), an ``int``
is a seed, and a ``numpy.random.RandomState`` gives one seed drawn from it.

``gbtd.load(path)`` reads ``.pth`` (both ``torch.save`` formats), ``.safetensors``, ``.npz`` and
``.npy`` files into a dict of NumPy arrays without running any pickle code and without torch.
``gbtd.torch`` compresses PyTorch models.
"""
from __future__ import annotations

import numbers
import os
from typing import Any, Sequence

import numpy as np

from . import _gbtd
from ._gbtd import blas_info, get_num_threads, set_num_threads

__version__ = _gbtd.__version__

__all__ = [
    "TuckerTensor",
    "CPTensor",
    "BTDTensor",
    "CollectiveFactorization",
    "tucker",
    "partial_tucker",
    "parafac",
    "btd",
    "collective",
    "mode_dot",
    "multi_mode_dot",
    "unfold",
    "fold",
    "tucker_to_tensor",
    "cp_to_tensor",
    "load",
    "save",
    "verify",
    "blas_info",
    "set_num_threads",
    "get_num_threads",
]


# --- results ------------------------------------------------------------------------------


class _Report:
    """The fit's report, shared by the result types."""

    rel_error: float
    errors: list
    n_iter: int
    converged: bool

    def _set_report(self, r: dict) -> None:
        self.rel_error = float(r["rel_error"])
        # r["errors"][0] is the error of the initialisation; TensorLy reports one per sweep.
        self.errors = [float(e) for e in r["errors"][1:]]
        self.n_iter = int(r["n_iter"])
        self.converged = bool(r["converged"])


class TuckerTensor(tuple, _Report):
    """A Tucker decomposition ``(core, factors)``; ``factors[i]`` multiplies mode ``modes[i]``."""

    modes: list

    def __new__(cls, core, factors, modes=None, report: dict | None = None):
        self = super().__new__(cls, (core, list(factors)))
        self.modes = list(range(core.ndim)) if modes is None else list(modes)
        if report is not None:
            self._set_report(report)
        return self

    @property
    def core(self) -> np.ndarray:
        return self[0]

    @property
    def factors(self) -> list:
        return self[1]

    def to_tensor(self) -> np.ndarray:
        """The full tensor ``core ×_{modes[0]} A_0 ⋯``."""
        return tucker_to_tensor(self, modes=self.modes)


class CPTensor(tuple, _Report):
    """A CP decomposition ``(weights, factors)``, ``X̂ = Σ_r w_r a_{0,r} ∘ ⋯ ∘ a_{N-1,r}``."""

    def __new__(cls, weights, factors, report: dict | None = None):
        self = super().__new__(cls, (weights, list(factors)))
        if report is not None:
            self._set_report(report)
        return self

    @property
    def weights(self) -> np.ndarray:
        return self[0]

    @property
    def factors(self) -> list:
        return self[1]

    @property
    def rank(self) -> int:
        return int(self[0].shape[0])

    def to_tensor(self) -> np.ndarray:
        return cp_to_tensor(self)


class BTDTensor(list, _Report):
    """A block term decomposition: a list of ``R`` Tucker terms on the same ``modes``."""

    modes: list

    def __init__(self, terms, modes, report: dict | None = None):
        super().__init__(terms)
        self.modes = list(modes)
        if report is not None:
            self._set_report(report)

    def to_tensor(self) -> np.ndarray:
        return sum(t.to_tensor() for t in self)


class CollectiveFactorization(_Report):
    """The collective factorization of ``L`` conv kernels ``(d4_l, d3, kh, kw)``.

    ``cores[r]`` ``(d4*, d3*, kh, kw)`` and ``input_factors[r]`` ``(d3, d3*)`` are shared by every
    kernel; ``output_factors[l][r]`` ``(d4_l, d4*)`` belongs to kernel ``l``; ``rel_errors[l]`` is
    kernel ``l``'s relative error and ``rel_error`` that of the concatenated kernel.
    """

    def __init__(self, report: dict):
        self._set_report(report)
        self.cores = [c for c, _ in report["terms"]]
        self.input_factors = [f[1] for _, f in report["terms"]]
        bounds = np.cumsum([0] + list(report["out_channels"]))
        self.output_factors = [
            [f[0][bounds[l] : bounds[l + 1]] for _, f in report["terms"]]
            for l in range(len(report["out_channels"]))
        ]
        self.rel_errors = [float(e) for e in report["rel_errors"]]

    def kernel(self, l: int) -> np.ndarray:
        """Kernel ``l`` rebuilt: ``Σ_r G_r ×_0 A4_r^l ×_1 A3_r``."""
        return sum(
            multi_mode_dot(g, [a4, a3], modes=[0, 1])
            for g, a3, a4 in zip(self.cores, self.input_factors, self.output_factors[l])
        )


# --- argument handling ---------------------------------------------------------------------


def _array(x: Any, what: str = "tensor") -> np.ndarray:
    """A float32/float64 NumPy array of ``x`` (PyTorch tensors through their NumPy view)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.dtype not in (np.float32, np.float64):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold real numbers, got dtype {a.dtype}")
        a = a.astype(np.float64)
    return a


def _seed(random_state) -> int:
    if random_state is None:
        return 0
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, numbers.Integral) and random_state >= 0:
        return int(random_state)
    raise TypeError(f"random_state must be None, a non-negative int or numpy.random.RandomState, got {random_state!r}")


def _ranks(rank, n: int, what: str) -> list:
    if isinstance(rank, numbers.Integral):
        return [int(rank)] * n
    try:
        r = [int(v) for v in rank]
    except TypeError:
        raise TypeError(f"{what}: rank must be an int or a sequence of ints, got {rank!r}") from None
    if len(r) != n:
        raise ValueError(f"{what}: {len(r)} ranks given for {n} factorized modes")
    return r


def _modes(modes, ndim: int) -> list:
    if modes is None:
        return list(range(ndim))
    try:
        m = [int(v) for v in modes]
    except TypeError:
        raise TypeError(f"modes must be a sequence of ints, got {modes!r}") from None
    if any(v < 0 for v in m):
        raise ValueError(f"modes must be >= 0, got {m}")
    return m


def _unsupported(**kwargs) -> None:
    for name, (value, default) in kwargs.items():
        same = value is default or (not hasattr(value, "shape") and isinstance(value, (str, int, float, bool)) and value == default)
        if not same:
            shown = f"an array of shape {value.shape}" if hasattr(value, "shape") else repr(value)
            raise NotImplementedError(f"gbtd does not implement TensorLy's {name}= (got {shown}); leave it at {default!r}")


def _check_init(init) -> str:
    if init not in ("svd", "random"):
        raise ValueError(f"init must be 'svd' or 'random', got {init!r}")
    return init


# --- decompositions ------------------------------------------------------------------------


def tucker(
    tensor,
    rank,
    fixed_factors=None,
    n_iter_max: int = 100,
    init: str = "svd",
    return_errors: bool = False,
    svd: str = "truncated_svd",
    tol: float = 1e-4,
    random_state=None,
    mask=None,
    verbose: bool = False,
    modes: Sequence[int] | None = None,
):
    """Tucker decomposition by HOOI, TensorLy's ``tucker``: returns a :class:`TuckerTensor`
    ``(core, factors)`` (with ``return_errors``, also the errors after each sweep). ``rank`` is an
    int (every mode) or one int per factorized mode; ``modes`` (an extension) factorizes only
    those modes. Stops when the relative error changes by less than ``tol`` between sweeps."""
    _unsupported(fixed_factors=(fixed_factors, None), mask=(mask, None), svd=(svd, "truncated_svd"))
    x = _array(tensor)
    m = _modes(modes, x.ndim)
    r = _report("tucker", x, _ranks(rank, len(m), "tucker"), m, 1, n_iter_max, tol, init, random_state)
    t = TuckerTensor(r["core"], r["factors"], r["modes"], r)
    _say(verbose, "tucker", t)
    return (t, t.errors) if return_errors else t


def partial_tucker(
    tensor,
    rank,
    modes: Sequence[int] | None = None,
    n_iter_max: int = 100,
    init: str = "svd",
    tol: float = 1e-4,
    svd: str = "truncated_svd",
    random_state=None,
    verbose: bool = False,
    mask=None,
    svd_mask_repeats: int = 5,
):
    """Partial Tucker (HOOI on ``modes``), TensorLy's ``partial_tucker``: returns
    ``((core, factors), errors)``; the pair is a :class:`TuckerTensor`. For a conv kernel
    ``(out, in, kh, kw)``, ``modes=[0, 1]`` is Tucker-2."""
    _unsupported(mask=(mask, None), svd=(svd, "truncated_svd"))
    x = _array(tensor)
    m = _modes(modes, x.ndim)
    r = _report("tucker", x, _ranks(rank, len(m), "partial_tucker"), m, 1, n_iter_max, tol, init, random_state)
    t = TuckerTensor(r["core"], r["factors"], r["modes"], r)
    _say(verbose, "partial_tucker", t)
    return t, t.errors


def parafac(
    tensor,
    rank: int,
    n_iter_max: int = 100,
    init: str = "svd",
    svd: str = "truncated_svd",
    normalize_factors: bool = False,
    orthogonalise: bool = False,
    tol: float = 1e-8,
    random_state=None,
    verbose: int = 0,
    return_errors: bool = False,
    sparsity=None,
    l2_reg: float = 0,
    mask=None,
    cvg_criterion: str = "abs_rec_error",
    fixed_modes=None,
    svd_mask_repeats: int = 5,
    linesearch: bool = False,
    callback=None,
):
    """CP decomposition by ALS, TensorLy's ``parafac``: returns a :class:`CPTensor`
    ``(weights, factors)`` (with ``return_errors``, also the errors after each sweep). With the
    same ``random_state``, the SVD initialisation and the ALS iterates are TensorLy's.

    With ``normalize_factors=False`` (TensorLy's default) the weights are ones and the scale sits
    in the last factor; with ``True`` the factors have unit-norm columns and the scale is in the
    weights."""
    _unsupported(
        orthogonalise=(orthogonalise, False),
        sparsity=(sparsity, None),
        l2_reg=(l2_reg, 0),
        mask=(mask, None),
        cvg_criterion=(cvg_criterion, "abs_rec_error"),
        fixed_modes=(fixed_modes, None),
        linesearch=(linesearch, False),
        callback=(callback, None),
        svd=(svd, "truncated_svd"),
    )
    if not isinstance(rank, numbers.Integral):
        raise TypeError(f"parafac: rank must be an int, got {rank!r}")
    x = _array(tensor)
    r = _report("cp", x, [int(rank)], list(range(x.ndim)), 1, n_iter_max, tol, init, random_state)
    weights, factors = r["weights"], list(r["factors"])
    if not normalize_factors:
        factors[-1] = factors[-1] * weights[np.newaxis, :]
        weights = np.ones_like(weights)
    cp = CPTensor(weights, factors, r)
    _say(verbose, "parafac", cp)
    return (cp, cp.errors) if return_errors else cp


def btd(
    tensor,
    n_terms: int,
    rank,
    modes: Sequence[int] | None = None,
    n_iter_max: int = 100,
    init: str = "svd",
    tol: float = 1e-8,
    random_state=None,
    verbose: bool = False,
):
    """Block term decomposition: ``n_terms`` Tucker terms of rank ``rank`` (per term, one per
    factorized mode) on ``modes`` (default: the channel modes ``[0, 1]`` of a 4-D conv kernel,
    every mode otherwise), by ALS with line search. Returns a :class:`BTDTensor`."""
    x = _array(tensor)
    m = _modes(modes, x.ndim) if modes is not None else ([0, 1] if x.ndim == 4 else list(range(x.ndim)))
    if not isinstance(n_terms, numbers.Integral) or n_terms < 1:
        raise ValueError(f"btd: n_terms must be an int >= 1, got {n_terms!r}")
    r = _report("btd", x, _ranks(rank, len(m), "btd"), m, int(n_terms), n_iter_max, tol, init, random_state)
    terms = [TuckerTensor(c, f, r["modes"]) for c, f in r["terms"]]
    b = BTDTensor(terms, r["modes"], r)
    _say(verbose, "btd", b)
    return b


def collective(
    kernels: Sequence,
    n_terms: int,
    rank,
    n_iter_max: int = 100,
    init: str = "svd",
    tol: float = 1e-8,
    random_state=None,
):
    """Collective factorization of conv kernels ``(d4_l, d3, kh, kw)`` that share
    ``(d3, kh, kw)``: their concatenation along the output mode gets a BTD with ``n_terms``
    terms of rank ``rank = (d4*, d3*)`` on the channel modes, so that every kernel shares the cores
    and input factors and has its own output factors. Returns a
    :class:`CollectiveFactorization`."""
    xs = [_array(k, f"kernel {i}") for i, k in enumerate(kernels)]
    if any(k.dtype == np.float64 for k in xs):
        xs = [k.astype(np.float64, copy=False) for k in xs]
    out_rank, in_rank = _ranks(rank, 2, "collective")
    r = _gbtd.collective(
        xs, int(n_terms), out_rank, in_rank, int(n_iter_max), float(tol), _check_init(init), _seed(random_state)
    )
    return CollectiveFactorization(r)


def _report(method, x, ranks, modes, n_terms, n_iter_max, tol, init, random_state) -> dict:
    if not isinstance(n_iter_max, numbers.Integral) or n_iter_max < 0:
        raise ValueError(f"n_iter_max must be an int >= 0, got {n_iter_max!r}")
    return _gbtd.decompose(
        x, method, ranks, modes, n_terms, int(n_iter_max), float(tol), _check_init(init), _seed(random_state)
    )


def _say(verbose, name, result) -> None:
    if verbose:
        for k, e in enumerate(result.errors, 1):
            print(f"{name}: sweep {k}, reconstruction error={e}")


# --- tensor algebra ------------------------------------------------------------------------


def unfold(tensor, mode: int) -> np.ndarray:
    """The row-major (TensorLy) mode-``mode`` unfolding, ``(d_mode, Π_{k≠mode} d_k)``."""
    return _gbtd.unfold(_array(tensor), int(mode))


def fold(unfolded_tensor, mode: int, shape: Sequence[int]) -> np.ndarray:
    """The tensor of ``shape`` whose mode-``mode`` unfolding is ``unfolded_tensor``."""
    return _gbtd.fold(_array(unfolded_tensor, "unfolded_tensor"), int(mode), [int(s) for s in shape])


def mode_dot(tensor, matrix_or_vector, mode: int, transpose: bool = False) -> np.ndarray:
    """``tensor ×_mode M`` (TensorLy's ``mode_dot``): a matrix ``(I, d_mode)`` makes mode
    ``mode`` of size ``I``; a vector ``(d_mode,)`` contracts the mode away. ``transpose`` uses
    ``Mᵀ``."""
    x = _array(tensor)
    m = _array(matrix_or_vector, "matrix_or_vector")
    dtype = np.result_type(x.dtype, m.dtype)
    x, m = x.astype(dtype, copy=False), m.astype(dtype, copy=False)
    if m.ndim == 1:
        out = _gbtd.mode_dot(x, m.reshape(1, -1), int(mode))
        return np.squeeze(out, axis=int(mode))
    if transpose:
        m = m.T
    return _gbtd.mode_dot(x, m, int(mode))


def multi_mode_dot(tensor, matrix_or_vec_list, modes=None, skip=None, transpose: bool = False) -> np.ndarray:
    """``mode_dot`` along several modes (TensorLy's ``multi_mode_dot``): factor ``i`` multiplies
    mode ``modes[i]`` (default ``i``), except factor ``skip``."""
    mats = list(matrix_or_vec_list)
    modes = list(range(len(mats))) if modes is None else list(modes)
    res = _array(tensor)
    decrement = 0
    # As TensorLy: factors in the order of their modes; `skip` indexes that order.
    for i, (m, mode) in enumerate(sorted(zip(mats, modes), key=lambda p: p[1])):
        if skip is not None and i == skip:
            continue
        res = mode_dot(res, m, mode - decrement, transpose=transpose)
        if np.ndim(m) == 1:
            decrement += 1
    return res


def tucker_to_tensor(tucker_tensor, modes=None, skip_factor=None, transpose_factors=False) -> np.ndarray:
    """The full tensor of a ``(core, factors)`` pair."""
    core, factors = tucker_tensor
    return multi_mode_dot(core, factors, modes=modes, skip=skip_factor, transpose=transpose_factors)


def cp_to_tensor(cp_tensor) -> np.ndarray:
    """The full tensor of a ``(weights, factors)`` pair."""
    weights, factors = cp_tensor
    shape = [f.shape[0] for f in factors]
    krp = factors[0] * weights[np.newaxis, :]
    out = krp
    for f in factors[1:]:
        out = (out[:, np.newaxis, :] * f[np.newaxis, :, :]).reshape(-1, f.shape[1])
    return out.sum(axis=1).reshape(shape)


# --- files ---------------------------------------------------------------------------------


def load(path: str | os.PathLike) -> dict:
    """Every tensor of a ``.pth``/``.pt``/``.bin``/``.ckpt`` PyTorch checkpoint (both
    ``torch.save`` formats), ``.safetensors``, ``.npz`` or ``.npy`` file, as a dict of NumPy
    arrays (``bfloat16`` as ``float32``; a ``.npy`` file's array under the key ``""``). Nothing in
    the file is executed: a checkpoint's pickle may only rebuild tensors and the containers of a
    state dict; anything else (``os.system``, ``exec``, …) is refused with ``OSError``. This is
    ``torch.load(path, weights_only=True)`` without torch."""
    return _gbtd.load(os.fspath(path))


def save(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    """Writes a dict of NumPy arrays (and string metadata) as a ``.safetensors`` file,
    atomically."""
    items = [(str(k), np.ascontiguousarray(_numpy_of(v))) for k, v in tensors.items()]
    _gbtd.save(os.fspath(path), items, None if metadata is None else {str(k): str(v) for k, v in metadata.items()})


def verify(original: str | os.PathLike, compressed: str | os.PathLike, input_size: int = 56, batch: int = 4, seed: int = 0) -> dict:
    """``gbtd verify`` in Python: runs every layer that the compressed checkpoint (written by
    ``gbtd compress`` or :func:`gbtd.torch.save_compressed`) lists, and its original from the model
    file ``original``, on the same seeded Gaussian input (``batch`` images of ``input_size²``), and
    compares each layer's output error with its kernel error. Returns the report: per layer
    ``kernel_error``, ``output_error``, ``expected_output_error`` (the border-weighted kernel error),
    ``tolerance`` and ``agree``; ``all_agree`` overall. A layer that does not agree has factors that
    do not compute the kernel they stand for."""
    import json

    return json.loads(_gbtd.verify(os.fspath(original), os.fspath(compressed), int(input_size), int(batch), int(seed)))


def _numpy_of(v):
    if hasattr(v, "detach") and hasattr(v, "cpu"):
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)
