//! Tensors as the endpoints see them: an element type, flat row-major
//! elements, and a shape.

use tract_onnx::prelude::*;

/// The element types the endpoints take and give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    I64,
    I32,
    U8,
}

impl DType {
    /// The Open Inference Protocol's name (`FP32`, `INT64`, …).
    pub fn oip_name(self) -> &'static str {
        match self {
            Self::F32 => "FP32",
            Self::I64 => "INT64",
            Self::I32 => "INT32",
            Self::U8 => "UINT8",
        }
    }

    /// The code of the WASM TensorView ABI: 0 = f32, 1 = i32, 2 = i64,
    /// 3 = u8.
    pub fn abi_code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::I32 => 1,
            Self::I64 => 2,
            Self::U8 => 3,
        }
    }

    pub fn from_abi_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::F32,
            1 => Self::I32,
            2 => Self::I64,
            3 => Self::U8,
            _ => return None,
        })
    }

    pub fn from_oip(name: &str) -> Option<Self> {
        Some(match name {
            "FP32" => Self::F32,
            "INT64" => Self::I64,
            "INT32" => Self::I32,
            "UINT8" => Self::U8,
            _ => return None,
        })
    }

    pub(crate) fn of(dt: DatumType) -> Option<Self> {
        Some(match dt {
            DatumType::F32 => Self::F32,
            DatumType::I64 => Self::I64,
            DatumType::I32 => Self::I32,
            DatumType::U8 => Self::U8,
            _ => return None,
        })
    }
}

/// A tensor's elements, flat and row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::U8(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) => DType::F32,
            Self::I64(_) => DType::I64,
            Self::I32(_) => DType::I32,
            Self::U8(_) => DType::U8,
        }
    }

    /// An empty tensor of `dtype` with room for `n` elements.
    pub fn with_capacity(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => Self::F32(Vec::with_capacity(n)),
            DType::I64 => Self::I64(Vec::with_capacity(n)),
            DType::I32 => Self::I32(Vec::with_capacity(n)),
            DType::U8 => Self::U8(Vec::with_capacity(n)),
        }
    }

    /// Appends `other` (of the same type; a different one is ignored).
    pub fn extend(&mut self, other: &Data) {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::I32(a), Self::I32(b)) => a.extend_from_slice(b),
            (Self::U8(a), Self::U8(b)) => a.extend_from_slice(b),
            _ => {}
        }
    }

    /// The elements as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Self::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::U8(v) => v.clone(),
        }
    }

    /// Elements of `dtype` from little-endian bytes (a partial element at
    /// the end is ignored).
    pub fn from_le_bytes(dtype: DType, b: &[u8]) -> Data {
        fn each<const N: usize, T>(b: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        match dtype {
            DType::F32 => Self::F32(each(b, f32::from_le_bytes)),
            DType::I32 => Self::I32(each(b, i32::from_le_bytes)),
            DType::I64 => Self::I64(each(b, i64::from_le_bytes)),
            DType::U8 => Self::U8(b.to_vec()),
        }
    }

    /// Elements `range` as their own tensor.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Data {
        match self {
            Self::F32(v) => Self::F32(v[range].to_vec()),
            Self::I64(v) => Self::I64(v[range].to_vec()),
            Self::I32(v) => Self::I32(v[range].to_vec()),
            Self::U8(v) => Self::U8(v[range].to_vec()),
        }
    }

    pub(crate) fn tensor(&self, shape: &[usize]) -> TractResult<Tensor> {
        match self {
            Self::F32(v) => Tensor::from_shape(shape, v),
            Self::I64(v) => Tensor::from_shape(shape, v),
            Self::I32(v) => Tensor::from_shape(shape, v),
            Self::U8(v) => Tensor::from_shape(shape, v),
        }
    }

    pub(crate) fn of(t: &Tensor) -> TractResult<Data> {
        let v = t.try_as_plain_ram()?;
        Ok(match t.datum_type() {
            DatumType::I64 => Self::I64(v.as_slice::<i64>()?.to_vec()),
            DatumType::I32 => Self::I32(v.as_slice::<i32>()?.to_vec()),
            DatumType::U8 => Self::U8(v.as_slice::<u8>()?.to_vec()),
            DatumType::F32 => Self::F32(v.as_slice::<f32>()?.to_vec()),
            _ => {
                let f = t.cast_to::<f32>()?;
                Self::F32(f.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
            }
        })
    }
}

/// A tensor: its full shape and its elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Shaped {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Shaped {
    pub(crate) fn of(t: &Tensor) -> TractResult<Shaped> {
        Ok(Shaped {
            shape: t.shape().to_vec(),
            data: Data::of(t)?,
        })
    }

    /// Examples `rows` (of the first dimension) as their own tensor.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Shaped {
        let total = self.shape.first().copied().unwrap_or(0).max(1);
        let per = self.data.len() / total;
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        Shaped {
            shape,
            data: self.data.slice(rows.start * per..rows.end * per),
        }
    }
}
