//! Reading and writing safetensors. Weights are memory-mapped and converted to f32
//! (f32, bf16 and f16 are read). Every error names the file and the tensor, with the
//! expected and actual shape and dtype.

use crate::tensor::{Data, Tensor};
use encdecc_compiler::elab::ParamInfo;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The tensors of one or more safetensors files, memory-mapped.
pub struct TensorFiles {
    files: Vec<(PathBuf, Mmap)>,
}

fn open_mmap(path: &Path) -> Result<Mmap, String> {
    let f = File::open(path).map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
    // SAFETY: the file is opened read-only and not modified while mapped (we never write to
    // files we read; outputs are written to a temp file and renamed).
    let m =
        unsafe { Mmap::map(&f) }.map_err(|e| format!("cannot map `{}`: {e}", path.display()))?;
    SafeTensors::deserialize(&m).map_err(|e| {
        format!(
            "`{}` is not a valid safetensors file ({e}); is it truncated?",
            path.display()
        )
    })?;
    Ok(m)
}

impl TensorFiles {
    pub fn open(path: &Path) -> Result<TensorFiles, String> {
        Ok(TensorFiles {
            files: vec![(path.to_path_buf(), open_mmap(path)?)],
        })
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
        Ok(TensorFiles { files })
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
        for (path, st) in self.views() {
            let Ok(view) = st.tensor(name) else { continue };
            let shape = view.shape().to_vec();
            let bytes = view.data();
            let bad = || {
                format!("tensor `{name}` in `{}` has dtype {:?}, expected F32, BF16 or F16 (or an integer type for ids)", path.display(), view.dtype())
            };
            let data = match view.dtype() {
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
    let mut out = HashMap::new();
    let mut missing = vec![];
    let mut errors = vec![];
    for p in params {
        match files.get(&p.ckpt)? {
            None => missing.push(format!("{} (expected f32{:?})", p.ckpt, p.shape)),
            Some(t) => {
                let expected: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
                if t.as_f32().is_none() {
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
    let used: std::collections::HashSet<&str> = params.iter().map(|p| p.ckpt.as_str()).collect();
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

/// Crash-safe writes (fsynced, unique temporaries): see `atomic_file`.
pub use crate::atomic_file::{temp_path, write_atomic};
