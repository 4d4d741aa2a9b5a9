//! Reading and writing safetensors. Weights are memory-mapped and converted to f32
//! (f32, bf16 and f16 are read). Every error names the file and the tensor, with the
//! expected and actual shape and dtype.
//!
//! A file's header is checked in full when it is opened (`check_header`), before any
//! tensor is read: every size is computed with overflow checks and compared with what the
//! file holds, so a header that lies (a shape of 2^40 elements, offsets past the end)
//! is an error naming the tensor, never an allocation. The safetensors crate parses it
//! again afterwards; its error, should it still find one, is the last word.
//!
//! Loaded weights are checked for NaN and ±Inf once (`load_params`), unless the files were
//! opened with `allow_non_finite` (`--allow-non-finite`).

mod stored;

use stored::read_int8;
pub use stored::{quantize_rows, store_as};

use crate::finite::first_non_finite_index;
use crate::tensor::{Data, Tensor};
use encdecc_compiler::elab::ParamInfo;
use encdecc_compiler::ir::DType;
use encdecc_compiler::precision::scale_path;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Crash-safe writes (fsynced, unique temporaries): see `atomic_file`.
pub use crate::atomic_file::{temp_path, write_atomic};

/// The tensors of one or more safetensors files, memory-mapped (or in memory: `from_bytes`).
pub struct TensorFiles {
    files: Vec<(PathBuf, Bytes)>,
    /// Let NaN and ±Inf through `load_params` (`--allow-non-finite`); default false.
    allow_non_finite: bool,
}

/// One file's bytes: mapped from disk, or owned (for fuzzing and tests).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// safetensors' own limit on the JSON header.
const MAX_HEADER: u64 = 100_000_000;

/// Bytes per element of a safetensors dtype, or None for one the format does not define.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// A JSON value for a message, cut short: a header may hold megabytes in one field.
fn brief(v: &serde_json::Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// Checks the header of the safetensors file `bytes` (named `file` in messages) against
/// the file: a length that fits, JSON text, and for every tensor a known dtype, a shape
/// whose byte size fits in 64 bits and in the file, and data offsets that agree with it;
/// the tensors must tile the data section without gaps or overlaps. Every error names
/// the file, and the tensor where one is at fault. Allocates only what the header's text
/// takes; never panics, on any bytes.
pub fn check_header(file: &str, bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    let Some((prefix, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(format!(
            "`{file}` is {len} bytes, too short for a safetensors file (which starts with an \
             8-byte header length); is it truncated?"
        ));
    };
    let n = u64::from_le_bytes(*prefix);
    if n > rest.len() as u64 {
        return Err(format!(
            "`{file}` declares a header of {n} bytes, past the end of the file ({len} bytes); \
             is it truncated, or not a safetensors file?"
        ));
    }
    if n > MAX_HEADER {
        return Err(format!(
            "`{file}` declares a header of {n} bytes, more than safetensors allows \
             ({MAX_HEADER} bytes)"
        ));
    }
    let (header, data) = rest.split_at(n as usize);
    let header = std::str::from_utf8(header).map_err(|e| {
        format!(
            "the header of `{file}` is not UTF-8 text (bad byte at offset {}); \
             is it a safetensors file?",
            8 + e.valid_up_to()
        )
    })?;
    let j: serde_json::Value = serde_json::from_str(header).map_err(|e| {
        format!("the header of `{file}` is not valid JSON ({e}); is it a safetensors file?")
    })?;
    let obj = j.as_object().ok_or(format!(
        "the header of `{file}` is {}, not a JSON object of tensors",
        brief(&j)
    ))?;
    let data_len = data.len() as u64;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            let ok = entry.is_null()
                || entry
                    .as_object()
                    .is_some_and(|m| m.values().all(|v| v.is_string()));
            if !ok {
                return Err(format!(
                    "`__metadata__` in the header of `{file}` is {}, expected an object of strings",
                    brief(entry)
                ));
            }
            continue;
        }
        let t = |msg: String| format!("tensor `{name}` in `{file}`: {msg}");
        let e = entry.as_object().ok_or_else(|| {
            t(format!(
                "its header entry is {}, expected an object with dtype, shape and data_offsets",
                brief(entry)
            ))
        })?;
        let field = |k: &str| {
            e.get(k)
                .ok_or_else(|| t(format!("its header entry has no `{k}`")))
        };
        let dtype = field("dtype")?;
        let size = dtype
            .as_str()
            .and_then(dtype_size)
            .ok_or_else(|| t(format!("unknown dtype {}", brief(dtype))))?;
        let dtype = dtype.as_str().unwrap_or_default();
        let shape = field("shape")?;
        let dims = shape
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|d| d.iter().all(|&x| usize::try_from(x).is_ok()))
            .ok_or_else(|| {
                t(format!(
                    "shape {} is not a list of non-negative integers",
                    brief(shape)
                ))
            })?;
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                t(format!(
                    "shape {dims:?} has more elements than fit in 64 bits"
                ))
            })?;
        let nbytes = elements
            .checked_mul(size)
            .filter(|b| usize::try_from(*b).is_ok())
            .ok_or_else(|| {
                t(format!(
                    "shape {dims:?} of {dtype} ({elements} elements) is more bytes than fit in 64 bits"
                ))
            })?;
        if nbytes > data_len {
            return Err(t(format!(
                "shape {dims:?} of {dtype} is {elements} elements ({nbytes} bytes), more than the \
                 file's whole data section ({data_len} bytes); is the file truncated?"
            )));
        }
        let offsets = field("data_offsets")?;
        let (start, end) = offsets
            .as_array()
            .and_then(|a| match a.as_slice() {
                [s, e] => Some((s.as_u64()?, e.as_u64()?)),
                _ => None,
            })
            .ok_or_else(|| {
                t(format!(
                    "data_offsets {} is not two non-negative integers [start, end]",
                    brief(offsets)
                ))
            })?;
        if end < start {
            return Err(t(format!(
                "data_offsets [{start}, {end}] end before they start"
            )));
        }
        if end > data_len {
            return Err(t(format!(
                "data_offsets [{start}, {end}] run past the end of the data section \
                 ({data_len} bytes); is the file truncated?"
            )));
        }
        if end - start != nbytes {
            return Err(t(format!(
                "data_offsets [{start}, {end}] hold {} bytes, but shape {dims:?} of {dtype} is \
                 {nbytes} bytes",
                end - start
            )));
        }
        spans.push((start, end, name));
    }
    spans.sort_unstable();
    let mut at = 0u64;
    let mut prev: Option<&str> = None;
    for &(start, end, name) in &spans {
        if start < at {
            return Err(format!(
                "tensor `{name}` in `{file}` overlaps tensor `{}` (its data starts at byte \
                 {start}, before the other's end at {at})",
                prev.unwrap_or_default()
            ));
        }
        if start > at {
            return Err(format!(
                "tensor `{name}` in `{file}` starts at byte {start} of the data section, but the \
                 data before it ends at {at}: {} bytes belong to no tensor",
                start - at
            ));
        }
        at = end;
        prev = Some(name);
    }
    if at != data_len {
        return Err(match prev {
            Some(last) => format!(
                "`{file}` has {} bytes after its last tensor `{last}` that belong to no tensor \
                 (the data section is {data_len} bytes, the tensors end at {at})",
                data_len - at
            ),
            None => {
                format!("`{file}` has no tensors but {data_len} bytes of data after its header")
            }
        });
    }
    Ok(())
}

/// `check_header`, then the safetensors crate's own parse, which must agree.
fn validate(file: &str, bytes: &[u8]) -> Result<(), String> {
    check_header(file, bytes)?;
    SafeTensors::deserialize(bytes)
        .map(|_| ())
        .map_err(|e| format!("`{file}` is not a valid safetensors file ({e}); is it truncated?"))
}

fn open_mmap(path: &Path) -> Result<Bytes, String> {
    let f = File::open(path).map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
    // SAFETY: the file is opened read-only and not modified while mapped (we never write to
    // files we read; outputs are written to a temp file and renamed).
    let m =
        unsafe { Mmap::map(&f) }.map_err(|e| format!("cannot map `{}`: {e}", path.display()))?;
    validate(&path.display().to_string(), &m)?;
    Ok(Bytes::Mapped(m))
}

/// `first_non_finite_index` over stored little-endian elements of `width` bytes: an element is
/// NaN or ±Inf when all of `mask` (its exponent bits) is set.
fn first_non_finite_raw(bytes: &[u8], width: usize, mask: u64) -> Option<usize> {
    const CHUNK: usize = 4096;
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    let bad = |c: &[u8]| word(c) & mask == mask;
    bytes
        .chunks(CHUNK * width)
        .enumerate()
        .find_map(|(k, block)| {
            block
                .chunks_exact(width)
                .fold(false, |any, c| any | bad(c))
                .then(|| k * CHUNK + block.chunks_exact(width).position(bad).unwrap_or(0))
        })
}

/// Stored float element `i` (f32, bf16, f16 or f64), for messages.
fn element(bytes: &[u8], dtype: Dtype, i: usize) -> f64 {
    let w = dtype.size();
    match (dtype, bytes.get(i * w..(i + 1) * w).unwrap_or_default()) {
        (Dtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]) as f64,
        (Dtype::F64, &[a, b, c, d, e, f, g, h]) => f64::from_le_bytes([a, b, c, d, e, f, g, h]),
        (Dtype::BF16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f64(),
        (Dtype::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f64(),
        _ => f64::NAN,
    }
}

/// `i` as an index into `shape` (row-major).
fn unflatten(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut at = vec![0; shape.len()];
    for (a, &d) in at.iter_mut().zip(shape).rev() {
        *a = i % d.max(1);
        i /= d.max(1);
    }
    at
}

impl TensorFiles {
    pub fn open(path: &Path) -> Result<TensorFiles, String> {
        Ok(TensorFiles {
            files: vec![(path.to_path_buf(), open_mmap(path)?)],
            allow_non_finite: false,
        })
    }

    /// A safetensors file from memory, `name` standing for its path in messages: the
    /// same checks as `open` (the fuzzing entry point). Never panics, on any bytes; nor
    /// do the methods of what it returns.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<TensorFiles, String> {
        validate(name, &bytes)?;
        Ok(TensorFiles {
            files: vec![(PathBuf::from(name), Bytes::Owned(bytes))],
            allow_non_finite: false,
        })
    }

    /// The same files, `load_params` letting NaN and ±Inf weights through when `allow`
    /// (`--allow-non-finite`).
    pub fn allow_non_finite(mut self, allow: bool) -> TensorFiles {
        self.allow_non_finite = allow;
        self
    }

    /// `DIR/model.safetensors`, or the shards named by `DIR/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<TensorFiles, String> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return TensorFiles::open(&single);
        }
        let index = dir.join("model.safetensors.index.json");
        let text = std::fs::read_to_string(&index).map_err(|_| {
            format!(
                "`{}` has no model.safetensors (nor model.safetensors.index.json)",
                dir.display()
            )
        })?;
        let j: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("`{}` is not valid JSON: {e}", index.display()))?;
        let map = j
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or(format!("`{}` has no weight_map", index.display()))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        let files = shards
            .iter()
            .map(|s| Ok((dir.join(s), open_mmap(&dir.join(s))?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(TensorFiles {
            files,
            allow_non_finite: false,
        })
    }

    fn views(&self) -> Vec<(&Path, SafeTensors<'_>)> {
        self.files
            .iter()
            .map(|(p, m)| {
                (
                    p.as_path(),
                    SafeTensors::deserialize(m).expect("validated when opened"),
                )
            })
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .views()
            .iter()
            .flat_map(|(_, st)| st.names().into_iter().cloned())
            .collect();
        v.sort();
        v
    }

    /// Reads one tensor as f32 (from f32, bf16 or f16) or i64 (from i64, i32, u8, bool).
    pub fn get(&self, name: &str) -> Result<Option<Tensor>, String> {
        self.get_as(name, DType::F32)
    }

    /// `get`, with floats read as `float` (f32, or bf16: a bf16 tensor as it is stored,
    /// an f32 or f16 one rounded to nearest even element by element, never through an f32
    /// copy of the whole tensor).
    pub fn get_as(&self, name: &str, float: DType) -> Result<Option<Tensor>, String> {
        for (path, st) in self.views() {
            let Ok(view) = st.tensor(name) else { continue };
            let shape = view.shape().to_vec();
            let bytes = view.data();
            let bad = || {
                format!("tensor `{name}` in `{}` has dtype {:?}, expected F32, BF16 or F16 (or an integer type for ids)", path.display(), view.dtype())
            };
            let to_bf16 = float == DType::Bf16;
            let data = match view.dtype() {
                Dtype::BF16 if to_bf16 => Data::Bf16(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                Dtype::F32 if to_bf16 => Data::Bf16(
                    bytes
                        .chunks_exact(4)
                        .map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                        .collect(),
                ),
                Dtype::F16 if to_bf16 => Data::Bf16(
                    bytes
                        .chunks_exact(2)
                        .map(|c| {
                            half::bf16::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        })
                        .collect(),
                ),
                Dtype::F32 => Data::F32(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                Dtype::BF16 => Data::F32(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::F16 => Data::F32(
                    bytes
                        .chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::I64 => Data::I64(
                    bytes
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                ),
                Dtype::I32 => Data::I64(
                    bytes
                        .chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                        .collect(),
                ),
                Dtype::U8 | Dtype::BOOL => Data::I64(bytes.iter().map(|&b| b as i64).collect()),
                Dtype::I8 if float == DType::I8 => {
                    Data::I8(bytes.iter().map(|&b| b as i8).collect())
                }
                Dtype::I8 => {
                    return Err(format!(
                        "tensor `{name}` in `{}` is int8 (a checkpoint quantised by `encdecc \
                         quantize`): run it with --dtype int8",
                        path.display()
                    ))
                }
                _ => return Err(bad()),
            };
            return Ok(Some(Tensor { shape, data }));
        }
        Ok(None)
    }

    /// The file holding `name`, for messages.
    pub fn file_of(&self, name: &str) -> String {
        self.views()
            .iter()
            .find(|(_, st)| st.tensor(name).is_ok())
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_default()
    }

    /// One tensor as stored: dtype, shape and raw little-endian bytes, borrowed from the
    /// mapping (no conversion, so a copy of it is bitwise).
    pub fn raw(&self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8])> {
        self.files.iter().find_map(|(_, m)| {
            let st = SafeTensors::deserialize(m).expect("validated when opened");
            let v = st.tensor(name).ok()?;
            Some((v.dtype(), v.shape().to_vec(), v.data()))
        })
    }

    /// Every float tensor of the files is finite, or an error names the first that is not
    /// (unless `allow_non_finite`): for commands that copy tensors as stored (`adapt`)
    /// rather than through `load_params`. One pass over the stored bytes.
    pub fn check_finite(&self) -> Result<(), String> {
        if self.allow_non_finite {
            return Ok(());
        }
        for (path, st) in self.views() {
            let mut tensors = st.tensors();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, v) in tensors {
                // Per dtype: bytes per element, and the exponent bits all set in NaN and ±Inf.
                let (width, mask): (usize, u64) = match v.dtype() {
                    Dtype::F32 => (4, 0x7f80_0000),
                    Dtype::BF16 => (2, 0x7f80),
                    Dtype::F16 => (2, 0x7c00),
                    Dtype::F64 => (8, 0x7ff0_0000_0000_0000),
                    _ => continue,
                };
                if let Some(i) = first_non_finite_raw(v.data(), width, mask) {
                    return Err(format!(
                        "tensor `{name}` in `{}` has a non-finite value ({}) at index {:?} \
                         (element {i} of shape {:?}); --allow-non-finite lets it through",
                        path.display(),
                        element(v.data(), v.dtype(), i),
                        unflatten(i, v.shape()),
                        v.shape()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn dtype_of(&self, name: &str) -> Option<String> {
        self.views()
            .iter()
            .find_map(|(_, st)| st.tensor(name).ok().map(|v| format!("{:?}", v.dtype())))
    }
}

/// Loads every parameter under its checkpoint name, checking shapes and dtypes.
/// Returns the tensors keyed by DSL path and the names in the files that no parameter used.
pub fn load_params(
    files: &TensorFiles,
    params: &[ParamInfo],
) -> Result<(HashMap<String, Tensor>, Vec<String>), String> {
    load_params_as(files, params, &HashMap::new())
}

/// `load_params`, reading the params that `stored` names (by DSL path) in that dtype
/// (bf16: what a graph lowered by `encdecc_compiler::precision` stores); others as f32.
pub fn load_params_as(
    files: &TensorFiles,
    params: &[ParamInfo],
    stored: &HashMap<String, DType>,
) -> Result<(HashMap<String, Tensor>, Vec<String>), String> {
    let mut out = HashMap::new();
    let mut missing = vec![];
    let mut errors = vec![];
    for p in params {
        let want = stored.get(&p.path).copied().unwrap_or(DType::F32);
        if want == DType::I8 {
            match read_int8(files, p)? {
                Some((q, scale)) => {
                    out.insert(scale_path(&p.path), scale);
                    out.insert(p.path.clone(), q);
                }
                None => missing.push(format!("{} (expected f32{:?})", p.ckpt, p.shape)),
            }
            continue;
        }
        match files.get_as(&p.ckpt, want)? {
            None => missing.push(format!("{} (expected f32{:?})", p.ckpt, p.shape)),
            Some(t) => {
                let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
                if t.as_f32().is_none() && t.as_bf16().is_none() {
                    errors.push(format!(
                        "tensor `{}` in `{}` has dtype {}, expected a float dtype (F32, BF16 or F16) with shape {expected:?}",
                        p.ckpt,
                        files.file_of(&p.ckpt),
                        files.dtype_of(&p.ckpt).unwrap_or_default()
                    ));
                } else if t.shape != expected {
                    let hint = if t.shape.len() == 2
                        && expected.len() == 2
                        && t.shape[0] == expected[1]
                        && t.shape[1] == expected[0]
                    {
                        " (transposed? PyTorch Linear weights are [out, in])"
                    } else {
                        ""
                    };
                    errors.push(format!(
                        "tensor `{}` has shape {:?} ({}), expected {expected:?} (f32){hint}",
                        p.ckpt,
                        t.shape,
                        files.dtype_of(&p.ckpt).unwrap_or_default()
                    ));
                } else if let Some(i) = (!files.allow_non_finite)
                    .then(|| match &t.data {
                        Data::Bf16(v) => v.iter().position(|x| !x.is_finite()),
                        _ => t.as_f32().and_then(first_non_finite_index),
                    })
                    .flatten()
                {
                    let x = t.to_f64()[i];
                    errors.push(format!(
                        "tensor `{}` in `{}` has a non-finite value ({x}) at index {:?} \
                         (element {i} of shape {:?}); --allow-non-finite lets it through",
                        p.ckpt,
                        files.file_of(&p.ckpt),
                        unflatten(i, &t.shape),
                        t.shape
                    ));
                } else {
                    out.insert(p.path.clone(), t);
                }
            }
        }
    }
    if !missing.is_empty() {
        errors.insert(
            0,
            format!(
                "{} tensor(s) missing from the checkpoint:\n    {}",
                missing.len(),
                missing.join("\n    ")
            ),
        );
    }
    if !errors.is_empty() {
        return Err(errors.join("\n  "));
    }
    let scales: Vec<String> = params
        .iter()
        .filter(|p| stored.get(&p.path) == Some(&DType::I8))
        .map(|p| scale_path(&p.ckpt))
        .collect();
    let used: std::collections::HashSet<&str> = params
        .iter()
        .map(|p| p.ckpt.as_str())
        .chain(scales.iter().map(|s| s.as_str()))
        .collect();
    let unexpected = files
        .names()
        .into_iter()
        .filter(|n| !used.contains(n.as_str()))
        .collect();
    Ok((out, unexpected))
}

/// Writes tensors as safetensors atomically: a temp file beside `path`, then a rename, so
/// an existing file is never left half-written.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<(), String> {
    use safetensors::tensor::TensorView;
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, t)| {
            let (dt, b) = match &t.data {
                Data::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::Bf16(v) => (
                    Dtype::BF16,
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
                Data::I8(v) => (Dtype::I8, v.iter().map(|&x| x as u8).collect()),
                Data::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Data::Bool(v) => (Dtype::U8, v.iter().map(|&x| x as u8).collect()),
            };
            (k.clone(), dt, t.shape.clone(), b)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(k, dt, s, b)| TensorView::new(*dt, s.clone(), b).map(|v| (k.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot serialise tensors: {e}"))?;
    let data = safetensors::serialize(views, &None)
        .map_err(|e| format!("cannot serialise tensors: {e}"))?;
    write_atomic(path, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file from a JSON header and a data section.
    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// `from_bytes` fails, the message naming the file and holding every `expect`.
    fn check(bytes: Vec<u8>, expect: &[&str]) {
        let Err(e) = TensorFiles::from_bytes("in.safetensors", bytes) else {
            panic!("expected an error holding {expect:?}");
        };
        assert!(e.contains("`in.safetensors`"), "names the file: {e}");
        for x in expect {
            assert!(e.contains(x), "{e:?} lacks {x:?}");
        }
    }

    fn one(dtype: &str, shape: &str, offsets: &str) -> String {
        format!(r#"{{"w": {{"dtype": "{dtype}", "shape": {shape}, "data_offsets": {offsets}}}}}"#)
    }

    #[test]
    fn header_problems_name_the_tensor() {
        let d4 = [0u8; 4];
        check(
            file(&one("F32", "[4294967296, 4294967296, 16]", "[0, 4]"), &d4),
            &["tensor `w`", "more elements than fit in 64 bits"],
        );
        check(
            file(&one("F64", "[2147483648, 2147483648]", "[0, 4]"), &d4),
            &["tensor `w`", "more bytes than fit in 64 bits"],
        );
        check(
            file(&one("F32", "[1099511627776]", "[0, 4398046511104]"), &d4),
            &[
                "tensor `w`",
                "1099511627776 elements",
                "data section (4 bytes)",
            ],
        );
        check(
            file(&one("F32", "[1]", "[4, 8]"), &d4),
            &["tensor `w`", "[4, 8] run past the end"],
        );
        check(
            file(&one("F32", "[1]", "[4, 2]"), &d4),
            &["tensor `w`", "end before they start"],
        );
        check(
            file(&one("F32", "[2]", "[0, 4]"), &[0; 8]),
            &[
                "tensor `w`",
                "hold 4 bytes, but shape [2] of F32 is 8 bytes",
            ],
        );
        check(
            file(&one("Q4", "[4]", "[0, 4]"), &d4),
            &["tensor `w`", "unknown dtype \"Q4\""],
        );
        check(
            file(&one("F32", "[-1]", "[0, 4]"), &d4),
            &["tensor `w`", "not a list of non-negative integers"],
        );
        check(
            file(&one("F32", "[1.5]", "[0, 4]"), &d4),
            &["tensor `w`", "not a list of non-negative integers"],
        );
        check(
            file(&one("F32", "[1]", "[0]"), &d4),
            &["tensor `w`", "not two non-negative integers"],
        );
        check(
            file(r#"{"w": 3}"#, &d4),
            &["tensor `w`", "expected an object"],
        );
        check(
            file(r#"{"w": {"dtype": "F32", "shape": [1]}}"#, &d4),
            &["tensor `w`", "no `data_offsets`"],
        );
        let two = r#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#;
        check(file(two, &d4), &["tensor `b`", "overlaps tensor `a`"]);
        check(
            file(&one("F32", "[1]", "[4, 8]"), &[0; 8]),
            &["tensor `w`", "4 bytes belong to no tensor"],
        );
        check(
            file(&one("F32", "[1]", "[0, 4]"), &[0; 6]),
            &["2 bytes after its last tensor `w`"],
        );
    }

    #[test]
    fn file_problems_name_the_file() {
        check(vec![1, 2, 3], &["3 bytes, too short"]);
        let mut b = file(&one("F32", "[1]", "[0, 4]"), &[0; 4]);
        b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        check(b, &["header of 1099511627776 bytes, past the end"]);
        check(file("{\"w\": [", &[]), &["not valid JSON"]);
        check(file("[1, 2]", &[]), &["not a JSON object"]);
        check(file("\u{1}\u{2}", &[]), &["not valid JSON"]);
        let mut b = file("{}  ", &[]);
        b[10] = 0xff;
        check(b, &["not UTF-8"]);
        check(
            file(r#"{"__metadata__": {"a": 1}}"#, &[]),
            &["`__metadata__`"],
        );
    }

    #[test]
    fn a_good_file_loads_from_bytes() {
        let h = r#"{"__metadata__": {"format": "pt"},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [12, 12]}}"#;
        let data: Vec<u8> = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f = TensorFiles::from_bytes("x", file(h, &data)).unwrap();
        assert_eq!(f.names(), ["a", "b", "e"]);
        let a = f.get("a").unwrap().unwrap();
        assert_eq!(
            (a.shape.clone(), a.as_f32().unwrap()),
            (vec![2], &[1.0, 2.0][..])
        );
        assert!(f.check_finite().is_ok());
    }

    #[test]
    fn first_non_finite_raw_finds_the_first() {
        let bf16: Vec<u8> = [1.0f32, 1e38, f32::NAN]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(first_non_finite_raw(&bf16, 2, 0x7f80), Some(2));
        let f16: Vec<u8> = [1.0f32, 65504.0, 1e6]
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect();
        assert_eq!(first_non_finite_raw(&f16, 2, 0x7c00), Some(2));
    }

    #[test]
    fn non_finite_weights_are_named_unless_allowed() {
        let h = one("F32", "[2, 3]", "[0, 24]");
        let data: Vec<u8> = [0.0f32, 1.0, 2.0, 3.0, f32::INFINITY, 5.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let params = [ParamInfo {
            path: "p.w".into(),
            ckpt: "w".into(),
            shape: vec![2, 3],
            node: encdecc_compiler::ir::NodeId::new(0),
        }];
        let f = TensorFiles::from_bytes("x.safetensors", file(&h, &data)).unwrap();
        let Err(e) = load_params(&f, &params) else {
            panic!("an infinite weight loaded")
        };
        assert!(e.contains("tensor `w` in `x.safetensors`"), "{e}");
        assert!(
            e.contains("(inf) at index [1, 1] (element 4 of shape [2, 3])"),
            "{e}"
        );
        let e = f.check_finite().unwrap_err();
        assert!(
            e.contains("`w` in `x.safetensors` has a non-finite value (inf) at index [1, 1]"),
            "{e}"
        );
        let bf: Vec<u8> = [1.0f32, f32::NEG_INFINITY]
            .iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect();
        let g = TensorFiles::from_bytes("y", file(&one("BF16", "[2]", "[0, 4]"), &bf)).unwrap();
        let e = g.check_finite().unwrap_err();
        assert!(e.contains("(-inf) at index [1]"), "{e}");
        let f = f.allow_non_finite(true);
        assert!(load_params(&f, &params).is_ok());
        assert!(f.check_finite().is_ok());
    }
}
