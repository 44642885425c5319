//! Tensor views: where one tensor's elements lie in its storage ([`Entry`], checked against the
//! storage's size before anything is read) and their gathering into contiguous row-major bytes.

use super::pickle::TensorRef;
use super::{DType, PthError, PthResult};

/// A view may always materialise this many elements, even beyond its storage's size.
const VIEW_FLOOR: u64 = 1 << 20;

/// Where one tensor's data lives and how to gather it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) dtype: DType,
    pub(super) shape: Vec<usize>,
    pub(super) stride: Vec<usize>,
    /// Element offset into the storage.
    pub(super) offset: usize,
    pub(super) key: String,
    /// Bytes of the storage a gather touches: `(max index + 1) · element size` (0 when empty).
    pub(super) needed: u64,
}

/// The storage a tensor's persistent id names, as far as the container knows it.
pub(super) struct Storage {
    pub(super) dtype: DType,
    pub(super) key: String,
    /// Element offset of a pre-1.0 storage view into its root storage.
    pub(super) view_offset: u64,
    /// Elements of the storage.
    pub(super) numel: u64,
    /// Bytes of the storage present in the file.
    pub(super) avail_bytes: u64,
}

/// Checks the view `t` of tensor `name` against its storage: sizes, strides and offset
/// non-negative, every product free of overflow, the last element inside the storage and its
/// bytes in the file, and at most `max(storage elements, 2^20)` elements materialised.
pub(super) fn check_view(name: String, t: &TensorRef, s: Storage) -> PthResult<Entry> {
    let Storage {
        dtype,
        key,
        view_offset,
        numel: storage_numel,
        avail_bytes,
    } = s;
    let bad = |what: String| PthError::BadTensor {
        name: name.clone(),
        what,
    };
    if t.shape.len() != t.stride.len() {
        return Err(bad(format!(
            "{} sizes but {} strides",
            t.shape.len(),
            t.stride.len()
        )));
    }
    if t.offset < 0 || t.shape.iter().chain(&t.stride).any(|&x| x < 0) {
        return Err(bad("negative size, stride or offset".into()));
    }
    let shape: Vec<usize> = t.shape.iter().map(|&x| x as usize).collect();
    let stride: Vec<usize> = t.stride.iter().map(|&x| x as usize).collect();
    let count = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or_else(|| bad("element count overflows".into()))?;
    let offset = (t.offset as u64)
        .checked_add(view_offset)
        .ok_or_else(|| bad("offset overflows".into()))?;
    let needed = if count == 0 {
        0
    } else {
        let last = shape
            .iter()
            .zip(&stride)
            .try_fold(offset, |a, (&d, &s)| {
                (d as u64 - 1)
                    .checked_mul(s as u64)
                    .and_then(|x| a.checked_add(x))
            })
            .ok_or_else(|| bad("view extent overflows".into()))?;
        if last >= storage_numel {
            return Err(bad(format!(
                "view reaches element {last} of a {storage_numel}-element storage `{key}`"
            )));
        }
        (last + 1)
            .checked_mul(dtype.size() as u64)
            .ok_or_else(|| bad("byte size overflows".into()))?
    };
    if needed > avail_bytes {
        return Err(PthError::BadStorage {
            key,
            what: format!("needs {needed} bytes but holds {avail_bytes}"),
        });
    }
    if count > storage_numel.max(VIEW_FLOOR) {
        return Err(bad(format!(
            "a view of {count} elements over a {storage_numel}-element storage is larger than the file justifies"
        )));
    }
    Ok(Entry {
        name,
        dtype,
        shape,
        stride,
        offset: offset as usize,
        key,
        needed,
    })
}

/// Copies a strided view out of `storage` into row-major order.
pub(super) fn gather(mut storage: Vec<u8>, e: &Entry) -> Vec<u8> {
    let es = e.dtype.size();
    let count: usize = e.shape.iter().product();
    if count == 0 {
        return Vec::new();
    }
    // Row-major contiguous view: one slice.
    let mut expect = 1;
    let mut contiguous = true;
    for (&d, &s) in e.shape.iter().zip(&e.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect *= d;
    }
    if contiguous {
        if e.offset == 0 {
            storage.truncate(count * es);
            return storage;
        }
        return storage[e.offset * es..(e.offset + count) * es].to_vec();
    }
    let mut out = Vec::with_capacity(count * es);
    let nd = e.shape.len();
    let mut idx = vec![0usize; nd];
    let mut at = e.offset;
    for _ in 0..count {
        out.extend_from_slice(&storage[at * es..(at + 1) * es]);
        // Odometer increment, last axis fastest.
        for ax in (0..nd).rev() {
            idx[ax] += 1;
            at += e.stride[ax];
            if idx[ax] < e.shape[ax] {
                break;
            }
            at -= e.stride[ax] * e.shape[ax];
            idx[ax] = 0;
        }
    }
    out
}
