//! A safetensors file written tensor by tensor: the header (every size is known from the
//! plan) then each tensor's bytes, so a 9B checkpoint never has to fit in memory. Written
//! through `atomic_file`, like every file the user owns.

use crate::atomic_file::AtomicFile;
use safetensors::Dtype;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One tensor's entry in the header.
pub struct Entry {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Entry {
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// An open output; `finish` renames it into place, dropping it unfinished removes it.
pub struct Writer {
    path: PathBuf,
    out: BufWriter<AtomicFile>,
    expected: Vec<u64>,
    written: usize,
}

/// The header bytes: JSON with each tensor's dtype, shape and byte range (in `entries`
/// order, back to back), padded with spaces to 8 bytes, after its little-endian length.
pub fn header(entries: &[Entry]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0u64;
    for e in entries {
        let end = offset + e.bytes();
        map.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": format!("{:?}", e.dtype),
                "shape": e.shape,
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(map)).expect("JSON");
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out
}

impl Writer {
    pub fn create(path: &Path, entries: &[Entry]) -> Result<Writer, String> {
        let file = AtomicFile::create(path)?;
        let mut w = Writer {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(1 << 20, file),
            expected: entries.iter().map(|e| e.bytes()).collect(),
            written: 0,
        };
        w.put(&header(entries))?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.out
            .write_all(bytes)
            .map_err(|e| format!("cannot write `{}`: {e}", self.path.display()))
    }

    /// The next tensor's bytes, in header order.
    pub fn tensor(&mut self, bytes: &[u8]) -> Result<(), String> {
        let want = self.expected.get(self.written).copied();
        assert_eq!(
            want,
            Some(bytes.len() as u64),
            "tensor {} of the header has another size",
            self.written
        );
        self.put(bytes)?;
        self.written += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<(), String> {
        assert_eq!(self.written, self.expected.len(), "every tensor written");
        let err = |e: std::io::Error| format!("cannot write `{}`: {e}", self.path.display());
        // Dropping an unfinished writer drops its `AtomicFile`, which removes the temporary.
        let file = self.out.into_inner().map_err(|e| err(e.into_error()))?;
        file.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn streamed_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let entries = vec![
            Entry {
                name: "b".into(),
                dtype: Dtype::F32,
                shape: vec![2, 3],
            },
            Entry {
                name: "a".into(),
                dtype: Dtype::BF16,
                shape: vec![5],
            },
            Entry {
                name: "empty".into(),
                dtype: Dtype::F32,
                shape: vec![0, 4],
            },
        ];
        let b: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let a: Vec<u8> = (0..10).collect();
        let mut w = Writer::create(&path, &entries).unwrap();
        w.tensor(&b).unwrap();
        w.tensor(&a).unwrap();
        w.tensor(&[]).unwrap();
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &b[..]);
        assert_eq!(st.tensor("b").unwrap().shape(), [2, 3]);
        assert_eq!(st.tensor("a").unwrap().data(), &a[..]);
        assert_eq!(st.tensor("a").unwrap().dtype(), Dtype::BF16);
        assert_eq!(st.tensor("empty").unwrap().shape(), [0, 4]);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["m.safetensors"], "no temp file left");
    }

    #[test]
    fn unfinished_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, b"old").unwrap();
        let entries = vec![Entry {
            name: "x".into(),
            dtype: Dtype::F32,
            shape: vec![1],
        }];
        let w = Writer::create(&path, &entries).unwrap();
        drop(w);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"old",
            "the old file is untouched"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
