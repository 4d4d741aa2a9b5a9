//! Host tensors: a shape and a typed buffer, row-major.

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    /// Weights and matmul operands in reduced precision (`--dtype bf16`).
    Bf16(Vec<half::bf16>),
    /// int8 weights (`--dtype int8`), beside their f32 per-row scales.
    I8(Vec<i8>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::F32(v),
        }
    }
    pub fn bf16(shape: Vec<usize>, v: Vec<half::bf16>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::Bf16(v),
        }
    }
    pub fn i8(shape: Vec<usize>, v: Vec<i8>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::I8(v),
        }
    }
    pub fn i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        debug_assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor {
            shape,
            data: Data::I64(v),
        }
    }
    pub fn bool(shape: Vec<usize>, v: Vec<bool>) -> Tensor {
        Tensor {
            shape,
            data: Data::Bool(v),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Bytes of its elements.
    pub fn bytes(&self) -> u64 {
        let each = match self.data {
            Data::F32(_) => 4,
            Data::Bf16(_) => 2,
            Data::I8(_) | Data::Bool(_) => 1,
            Data::I64(_) => 8,
        };
        each * self.numel() as u64
    }
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            Data::F32(_) => "f32",
            Data::Bf16(_) => "bf16",
            Data::I8(_) => "i8",
            Data::I64(_) => "i64",
            Data::Bool(_) => "bool",
        }
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_bf16(&self) -> Option<&[half::bf16]> {
        match &self.data {
            Data::Bf16(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i8(&self) -> Option<&[i8]> {
        match &self.data {
            Data::I8(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }
    /// Every element as f64 (bools as 0/1), for comparisons in tests and tools.
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bf16(v) => v.iter().map(|&x| x.to_f64()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }
}

/// Row-major strides.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
