//! Storage decoding: a tensor's contiguous bytes as typed data ([`PthData`]), byte-swapped
//! from big-endian files, and its conversion to `f32`/`f64` arrays.

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use super::{DType, PthTensor};

/// Contiguous row-major data in the tensor's own dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum PthData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

impl PthTensor {
    /// The tensor as an `f32` array (integers and bools converted with `as`; bool → 0/1).
    pub fn to_f32(&self) -> ArrayD<f32> {
        let v: Vec<f32> = match &self.data {
            PthData::F32(d) => d.clone(),
            PthData::F64(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::F16(d) => d.iter().map(|x| x.to_f32()).collect(),
            PthData::BF16(d) => d.iter().map(|x| x.to_f32()).collect(),
            PthData::I64(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I32(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I16(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::I8(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::U8(d) => d.iter().map(|&x| x as f32).collect(),
            PthData::Bool(d) => d.iter().map(|&x| x as u8 as f32).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("shape and data length agree")
    }

    /// The tensor as an `f64` array (exact for every dtype except `int64` beyond 2^53).
    pub fn to_f64(&self) -> ArrayD<f64> {
        let v: Vec<f64> = match &self.data {
            PthData::F32(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::F64(d) => d.clone(),
            PthData::F16(d) => d.iter().map(|x| x.to_f64()).collect(),
            PthData::BF16(d) => d.iter().map(|x| x.to_f64()).collect(),
            PthData::I64(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I32(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I16(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::I8(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::U8(d) => d.iter().map(|&x| x as f64).collect(),
            PthData::Bool(d) => d.iter().map(|&x| x as u8 as f64).collect(),
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), v).expect("shape and data length agree")
    }

    /// Whether the dtype is a floating-point one (the tensors worth decomposing).
    pub fn is_float(&self) -> bool {
        super::is_float(self.dtype)
    }
}

/// Decodes contiguous bytes into typed data, byte-swapping big-endian files.
pub(super) fn decode(dtype: DType, b: &[u8], big: bool) -> PthData {
    macro_rules! chunks {
        ($t:ty, $n:expr) => {
            b.chunks_exact($n)
                .map(|c| {
                    let a: [u8; $n] = c.try_into().expect("exact chunk");
                    if big {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }
                })
                .collect()
        };
    }
    match dtype {
        DType::F32 => PthData::F32(chunks!(f32, 4)),
        DType::F64 => PthData::F64(chunks!(f64, 8)),
        DType::F16 => {
            let bits: Vec<u16> = chunks!(u16, 2);
            PthData::F16(bits.into_iter().map(f16::from_bits).collect())
        }
        DType::BF16 => {
            let bits: Vec<u16> = chunks!(u16, 2);
            PthData::BF16(bits.into_iter().map(bf16::from_bits).collect())
        }
        DType::I64 => PthData::I64(chunks!(i64, 8)),
        DType::I32 => PthData::I32(chunks!(i32, 4)),
        DType::I16 => PthData::I16(chunks!(i16, 2)),
        DType::I8 => PthData::I8(b.iter().map(|&x| x as i8).collect()),
        DType::U8 => PthData::U8(b.to_vec()),
        DType::Bool => PthData::Bool(b.iter().map(|&x| x != 0).collect()),
    }
}
