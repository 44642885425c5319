//! The layout-and-BLAS engine of the Tucker and CP sweeps: a tensor stored in C order with
//! permuted axes ([`Laid`]), its mode products `X ×_m Aᵀ` and unfolding Gram matrices
//! `X_(m) X_(m)ᵀ` as BLAS calls without materialising unfoldings, and the input tensor with its
//! middle modes moved last once ([`InputLayouts`]).
//!
//! - A product or Gram matrix on the first or last storage axis of a C-order tensor is one BLAS
//!   call; a middle axis with wide trailing slices (at least [`WIDE`] columns) is a loop of
//!   GEMMs, one per slice; a middle axis with narrow slices is moved last by one copy first.
//! - A product on the last storage axis is computed as `Aᵀ · Xᵀ` with the rank axis stored first,
//!   which suits OpenBLAS's packing of the tall operand better than `X · A`; the layout records
//!   each storage axis's mode, so later steps do not care about the order.
//! - Medium products (from [`SPLIT_MIN_WORK`] up to [`crate::linalg::SMALL_BLAS_WORK`] flops) go
//!   in [`CHUNK`]-column BLAS calls and their Gram matrices are sums over fixed pieces of the
//!   contracted index, shared out over [`crate::parallel`]. Each output entry comes from the same
//!   calls whatever the thread count, so results are bitwise the same at 1 or 2 threads.
//!
//! Used by [`crate::tucker`] (HOSVD, HOOI) and [`crate::cp`] (the order-3 MTTKRPs).
use ndarray::linalg::general_mat_mul;
use ndarray::{
    Array, Array2, ArrayD, ArrayView2, ArrayView3, ArrayViewD, ArrayViewMut, ArrayViewMut2, Axis, CowArray,
    Dimension, IxDyn, ShapeBuilder,
};

use crate::error::{GbtdError, Result};
use crate::linalg::{SMALL_BLAS_WORK, mirror_lower, syrk_lower};
use crate::openblas::SingleThreadedBlas;
use crate::parallel::map_items;
use crate::real::Real;

/// Slices at least this wide make per-slice GEMMs efficient; narrower middle modes are moved
/// last by a copy first.
const WIDE: usize = 64;

/// A tensor stored in C order with permuted axes: storage axis `i` holds mode `axes[i]` of the
/// tensor it represents. HOOI keeps the mode it works on at an edge of the storage order, where
/// mode products and Gram matrices are single BLAS calls; the Gram matrix and the leading left
/// singular vectors of an unfolding do not depend on the order of its columns.
pub(crate) struct Laid<'a, T> {
    pub(crate) data: CowArray<'a, T, IxDyn>,
    pub(crate) axes: Vec<usize>,
}

impl<'a, T: Real> Laid<'a, T> {
    /// `x` in its natural axis order (copied into C order if it is not).
    pub(crate) fn natural(x: ArrayViewD<'a, T>) -> Self {
        let axes = (0..x.ndim()).collect();
        let data = if x.is_standard_layout() {
            CowArray::from(x)
        } else {
            CowArray::from(x.as_standard_layout().into_owned())
        };
        Laid { data, axes }
    }

    /// A borrowed view of the same tensor.
    pub(crate) fn view(&self) -> Laid<'_, T> {
        Laid {
            data: CowArray::from(self.data.view()),
            axes: self.axes.clone(),
        }
    }

    pub(crate) fn pos(&self, mode: usize) -> Result<usize> {
        self.axes
            .iter()
            .position(|&a| a == mode)
            .ok_or_else(|| GbtdError::internal(format!("mode {mode} is not an axis of the laid-out tensor")))
    }

    pub(crate) fn dim(&self, mode: usize) -> Result<usize> {
        Ok(self.data.shape()[self.pos(mode)?])
    }

    /// `(P, d, Q)`: the storage viewed around the axis at `pos`.
    pub(crate) fn pdq(&self, pos: usize) -> (usize, usize, usize) {
        let shape = self.data.shape();
        (
            shape[..pos].iter().product(),
            shape[pos],
            shape[pos + 1..].iter().product(),
        )
    }

    /// Whether products and Gram matrices on the storage axis `pos` need no copy.
    pub(crate) fn is_edge(&self, pos: usize) -> bool {
        let (p, _, q) = self.pdq(pos);
        p == 1 || q == 1 || q >= WIDE
    }

    /// The same tensor with `mode` at an edge: itself if it is already, else a copy with `mode`
    /// moved to the last storage axis.
    pub(crate) fn edge(self, mode: usize) -> Result<Laid<'a, T>> {
        let pos = self.pos(mode)?;
        if self.is_edge(pos) {
            Ok(self)
        } else {
            self.moved_last(pos)
        }
    }

    /// A C-order copy with the storage axis at `pos` moved last.
    pub(crate) fn moved_last<'b>(&self, pos: usize) -> Result<Laid<'b, T>> {
        let (p, d, q) = self.pdq(pos);
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        // SAFETY: `assign` writes every element of every slice (and reads none).
        let out = unsafe {
            written_by((p, q, d), |mut out| {
                for (src, mut dst) in x3.outer_iter().zip(out.outer_iter_mut()) {
                    dst.assign(&src.t());
                }
            })
        };
        let mut shape = self.data.shape().to_vec();
        let mut axes = self.axes.clone();
        shape.remove(pos);
        shape.push(d);
        let a = axes.remove(pos);
        axes.push(a);
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes,
        })
    }

    /// `self ×_mode Aᵀ` for `A` of shape `(d_mode × r)`: one GEMM at an edge, one GEMM per
    /// slice for wide slices, after a copy moving `mode` last otherwise.
    pub(crate) fn ttm_t<'b>(&self, mode: usize, a: &ArrayView2<'_, T>) -> Result<Laid<'b, T>> {
        let pos = self.pos(mode)?;
        if !self.is_edge(pos) {
            return self.moved_last(pos)?.ttm_t(mode, a);
        }
        let (p, d, q) = self.pdq(pos);
        if a.nrows() != d {
            return Err(GbtdError::internal(format!(
                "projection of mode {mode} (size {d}) on a factor with {} rows",
                a.nrows()
            )));
        }
        let r = a.ncols();
        if q == 1 && p > 1 {
            return self.ttm_t_last(mode, a);
        }
        let mut shape = self.data.shape().to_vec();
        shape[pos] = r;
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        let work = 2.0 * (p * d * q * r) as f64;
        // SAFETY: `at_times` writes all of each output slice (GEMMs with β = 0) and every slice
        // is given to it.
        let out = unsafe {
            written_by((p, r, q), |mut out| {
                if p == 1 {
                    at_times(
                        a,
                        &x3.index_axis(Axis(0), 0),
                        out.index_axis_mut(Axis(0), 0),
                        work,
                        true,
                    );
                } else {
                    // A middle mode with wide slices: out[i] = Aᵀ · x[i], the slices shared out
                    // over the threads.
                    let slices: Vec<_> = x3.outer_iter().zip(out.outer_iter_mut()).collect();
                    map_items(slices, split(work), |(src, dst)| {
                        at_times(a, &src, dst, work, false)
                    });
                }
            })
        };
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes: self.axes.clone(),
        })
    }

    /// [`Self::ttm_t`] on the last storage axis of size > 1, `X (P × d)`: the result is stored rank axis
    /// first, as `Aᵀ · Xᵀ` (`r × P`). OpenBLAS packs the tall `X` faster as the transposed right
    /// operand of a wide product than as the left operand of `X · A` (`examples/pass_timing.rs`
    /// measures the two).
    pub(crate) fn ttm_t_last<'b>(&self, mode: usize, a: &ArrayView2<'_, T>) -> Result<Laid<'b, T>> {
        let pos = self.pos(mode)?;
        let (p, d, _) = self.pdq(pos);
        let r = a.ncols();
        let x2 = self.data.view().into_shape_with_order((p, d))?;
        let work = 2.0 * (p * d * r) as f64;
        // SAFETY: `at_times` writes all of its output (GEMMs with β = 0).
        let out = unsafe { written_by((r, p), |out| at_times(a, &x2.t(), out, work, true)) };
        // Storage axes after `pos` (if any) have size 1: they follow the others.
        let mut shape = vec![r];
        shape.extend_from_slice(&self.data.shape()[..pos]);
        shape.extend_from_slice(&self.data.shape()[pos + 1..]);
        let mut axes = vec![mode];
        axes.extend_from_slice(&self.axes[..pos]);
        axes.extend_from_slice(&self.axes[pos + 1..]);
        Ok(Laid {
            data: CowArray::from(out.into_shape_with_order(IxDyn(&shape))?),
            axes,
        })
    }

    /// The Gram matrix of the unfolding along `mode` (see [`crate::tucker::unfolding_gram`]).
    pub(crate) fn gram(&self, mode: usize) -> Result<Array2<T>> {
        let pos = self.pos(mode)?;
        if !self.is_edge(pos) {
            return self.moved_last(pos)?.gram(mode);
        }
        let (p, d, q) = self.pdq(pos);
        let x3 = self.data.view().into_shape_with_order((p, d, q))?;
        let work = (p * q * d * d) as f64;
        // OpenBLAS does not thread `syrk` with a small output (such as 100 × 100 from a 100³
        // tensor: it takes as long on 2 threads as on 1). A medium Gram matrix is therefore the sum of the Gram
        // matrices of fixed pieces of the contracted index: CHUNK rows (last mode), CHUNK columns
        // (first mode) or slices of about CHUNK columns (middle mode), computed in parallel when
        // the process may use several threads, and added up in order, so the value depends only
        // on the sizes, not on the thread count.
        let mut g = if (SPLIT_MIN_WORK..SMALL_BLAS_WORK).contains(&work) {
            let (axis, size) = match (p, q) {
                (_, 1) => (Axis(0), CHUNK),
                (1, _) => (Axis(2), CHUNK),
                _ => (Axis(0), CHUNK.div_ceil(q)),
            };
            let _single = SingleThreadedBlas::new();
            let pieces: Vec<_> = x3.axis_chunks_iter(axis, size).collect();
            let partial = map_items(pieces, split(work), gram_chunk);
            let mut sum = Array2::<T>::zeros((d, d));
            for g in partial {
                sum += &g?;
            }
            sum
        } else {
            gram_chunk(x3)?
        };
        mirror_lower(&mut g);
        Ok(g)
    }

    /// The tensor in its natural axis order (C order).
    pub(crate) fn into_natural(self) -> ArrayD<T> {
        let mut perm = vec![0; self.axes.len()];
        for (i, &a) in self.axes.iter().enumerate() {
            perm[a] = i;
        }
        let data = self.data.into_owned();
        if perm.iter().enumerate().all(|(i, &p)| i == p) {
            return data;
        }
        data.permuted_axes(IxDyn(&perm)).as_standard_layout().into_owned()
    }
}

/// Below this many floating-point operations a product is not worth a second thread.
pub(crate) const SPLIT_MIN_WORK: f64 = 4e6;

/// Columns per BLAS call in [`at_times`].
pub(crate) const CHUNK: usize = 512;

/// Whether a product of `work` flops over `X` (or a projection of it) is shared out over the
/// worker pool ([`crate::parallel`]): medium products (from [`SPLIT_MIN_WORK`] up to
/// [`SMALL_BLAS_WORK`], which run inside a [`SingleThreadedBlas`] scope) are; small ones are not
/// worth a hand-off, large ones are threaded by OpenBLAS itself. For a medium product,
/// [`CHUNK`]-column calls shared out over two pool threads beat one OpenBLAS call on two threads
/// (`OPENBLAS_NUM_THREADS=2 cargo run --release -p gbtd --example pass_timing` compares them).
pub(crate) fn split(work: f64) -> bool {
    (SPLIT_MIN_WORK..SMALL_BLAS_WORK).contains(&work)
}

/// A new array of `shape` whose elements `fill` writes, allocated without the zero fill of
/// `Array::zeros` (the products and copies of a sweep overwrite their outputs whole, so a zero
/// fill first is wasted memory traffic).
///
/// # Safety
/// `fill` must write every element of the view it gets and read none before writing it. A GEMM
/// with `β = 0` qualifies: `ndarray::linalg::general_mat_mul` documents that its output then
/// need not be initialised, and BLAS `gemm` never reads it. (ndarray's own `dot` allocates its
/// result this way.)
unsafe fn written_by<T: Real, D: Dimension, Sh: ShapeBuilder<Dim = D>>(
    shape: Sh,
    fill: impl FnOnce(ArrayViewMut<'_, T, D>),
) -> Array<T, D> {
    let mut out = Array::<T, D>::uninit(shape);
    // SAFETY: the view covers exactly `out`'s elements, which are `T`-sized and aligned; its
    // values are written by `fill` before anything reads them (the caller's contract).
    let view = unsafe { out.raw_view_mut().cast::<T>().deref_into_view_mut() };
    fill(view);
    // SAFETY: every element was written by `fill`.
    unsafe { out.assume_init() }
}

/// `out = Aᵀ · b` for `A` `(d × r)` and `b` `(d × n)` (any strides, e.g. a transposed `X`).
///
/// For medium `work` (below [`SMALL_BLAS_WORK`]), the columns go in [`CHUNK`]-wide BLAS calls,
/// whose packed operands stay in cache, shared out over the worker pool when `parallel` and
/// [`split`] allow it. Every output entry comes from the same call whatever the thread count.
/// Larger products are one BLAS call, threaded by OpenBLAS.
pub(crate) fn at_times<T: Real>(
    a: &ArrayView2<'_, T>,
    b: &ArrayView2<'_, T>,
    mut out: ArrayViewMut2<'_, T>,
    work: f64,
    parallel: bool,
) {
    if work >= SMALL_BLAS_WORK || b.ncols() <= CHUNK {
        general_mat_mul(T::one(), &a.t(), b, T::zero(), &mut out);
        return;
    }
    let pieces: Vec<_> = b
        .axis_chunks_iter(Axis(1), CHUNK)
        .zip(out.axis_chunks_iter_mut(Axis(1), CHUNK))
        .collect();
    map_items(pieces, parallel && split(work), |(bc, mut oc)| {
        general_mat_mul(T::one(), &a.t(), &bc, T::zero(), &mut oc);
    });
}

/// The lower triangle of `Σ_p x[p] x[p]ᵀ` for `x` `(P, d, Q)` — of `x_{(P×d)}ᵀ x_{(P×d)}` when
/// `Q = 1` — by BLAS `syrk`.
pub(crate) fn gram_chunk<T: Real>(x: ArrayView3<'_, T>) -> Result<Array2<T>> {
    let d = x.len_of(Axis(1));
    let mut g = Array2::<T>::zeros((d, d));
    if x.len_of(Axis(2)) == 1 {
        syrk_lower(&x.index_axis(Axis(2), 0), true, T::zero(), &mut g)?;
    } else {
        for slice in x.outer_iter() {
            syrk_lower(&slice, false, T::one(), &mut g)?;
        }
    }
    Ok(g)
}

/// The input tensor, in natural order and, once asked for, with a middle mode moved last.
pub(crate) struct InputLayouts<'a, T> {
    natural: Laid<'a, T>,
    moved: Vec<Option<Laid<'a, T>>>,
    pub(crate) sq_norm: f64,
}

impl<'a, T: Real> InputLayouts<'a, T> {
    pub(crate) fn new(x: ArrayViewD<'a, T>) -> Self {
        let n = x.ndim();
        let sq_norm = sq_norm(&x);
        InputLayouts {
            natural: Laid::natural(x),
            moved: (0..n).map(|_| None).collect(),
            sq_norm,
        }
    }

    /// Makes [`Self::get`] return a layout with `mode` at an edge (a no-op for `None`).
    pub(crate) fn prepare(&mut self, mode: Option<usize>) -> Result<()> {
        if let Some(m) = mode {
            let pos = self.natural.pos(m)?;
            if !self.natural.is_edge(pos) && self.moved[m].is_none() {
                self.moved[m] = Some(self.natural.moved_last(pos)?);
            }
        }
        Ok(())
    }

    /// A layout of `X` with `mode` at an edge if [`Self::prepare`] was called for it (the
    /// natural layout otherwise, and for `None`).
    pub(crate) fn get(&self, mode: Option<usize>) -> &Laid<'a, T> {
        match mode.and_then(|m| self.moved[m].as_ref()) {
            Some(l) => l,
            None => &self.natural,
        }
    }
}

/// `‖X‖²`, accumulated in `f64`.
pub(crate) fn sq_norm<T: Real>(x: &ArrayViewD<'_, T>) -> f64 {
    x.iter().map(|v| v.to_f64_exact().powi(2)).sum()
}
