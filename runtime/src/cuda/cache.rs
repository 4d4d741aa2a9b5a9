//! The on-disk cache of compiled CUDA modules (PTX from NVRTC), with the CPU kernel
//! cache's conventions (`codegen/src/cache.rs`): same directory (`ENCDECC_CACHE_DIR`,
//! `off` disables), one file per module named by a digest of its key, the full key stored
//! in the entry and compared on load, a checksum of the payload, written to a temporary
//! file and renamed into place. The key is the kernel text plus everything that changes
//! the PTX: device name and compute capability, driver and NVRTC versions, the compile
//! options and this crate's version. Any cache failure only costs a compile.

use std::fs;
use std::path::{Path, PathBuf};

const MAGIC: &str = "ENCDPTX1";
/// Bump when the entry layout or anything the key does not capture changes.
const FORMAT: u32 = 1;

pub fn key(
    source: &str,
    device: &str,
    cc: (i32, i32),
    driver: i32,
    nvrtc: (i32, i32),
    options: &[String],
) -> String {
    format!(
        "encdecc cuda module cache\nformat {FORMAT}\ncrate {} {}\ndevice {device}\ncompute {}.{}\ndriver {driver}\nnvrtc {}.{}\noptions {}\n---\n{source}",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        cc.0,
        cc.1,
        nvrtc.0,
        nvrtc.1,
        options.join(" ")
    )
}

/// FNV-1a, 64 bits: a file name and a checksum, not a security boundary (the key is
/// compared in full).
fn fnv(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn path(dir: &Path, key: &str) -> PathBuf {
    let k = key.as_bytes();
    dir.join(format!(
        "cuda-{:016x}{:016x}.ptx",
        fnv(k, 0),
        fnv(k, 0x9e37_79b9)
    ))
}

/// `MAGIC key_len payload_len checksum\n` + key + payload.
fn encode(key: &str, ptx: &str) -> Vec<u8> {
    let mut v = format!(
        "{MAGIC} {} {} {:016x}\n",
        key.len(),
        ptx.len(),
        fnv(ptx.as_bytes(), 1)
    )
    .into_bytes();
    v.extend_from_slice(key.as_bytes());
    v.extend_from_slice(ptx.as_bytes());
    v
}

fn decode(bytes: &[u8], key: &str) -> Option<String> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..nl]).ok()?;
    let f: Vec<&str> = header.split(' ').collect();
    let [magic, klen, plen, sum] = f[..] else {
        return None;
    };
    let (klen, plen): (usize, usize) = (klen.parse().ok()?, plen.parse().ok()?);
    let body = &bytes[nl + 1..];
    if magic != MAGIC || body.len() != klen.checked_add(plen)? || &body[..klen] != key.as_bytes() {
        return None;
    }
    let ptx = &body[klen..];
    (format!("{:016x}", fnv(ptx, 1)) == sum).then(|| String::from_utf8(ptx.to_vec()).ok())?
}

pub fn load(dir: &Path, key: &str) -> Option<String> {
    decode(&fs::read(path(dir, key)).ok()?, key)
}

pub fn store(dir: &Path, key: &str, ptx: &str) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dst = path(dir, key);
    crate::atomic_file::write_atomic(&dst, &encode(key, ptx))
        .map_err(|e| format!("cannot store {}: {e}", dst.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_reject_damage() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(
            "extern \"C\" __global__ void f() {}",
            "H100",
            (9, 0),
            13000,
            (13, 0),
            &["--gpu-architecture=compute_90".into()],
        );
        assert_eq!(load(dir.path(), &k), None);
        store(dir.path(), &k, ".version 9.0\n").unwrap();
        assert_eq!(load(dir.path(), &k).as_deref(), Some(".version 9.0\n"));
        // Another device, driver or text is another entry.
        let k2 = key(
            "extern \"C\" __global__ void f() {}",
            "H100",
            (9, 0),
            13010,
            (13, 0),
            &[],
        );
        assert_ne!(path(dir.path(), &k), path(dir.path(), &k2));
        assert_eq!(load(dir.path(), &k2), None);
        // A flipped payload byte or a truncated file is a miss.
        let p = path(dir.path(), &k);
        let mut bytes = fs::read(&p).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&p, &bytes).unwrap();
        assert_eq!(load(dir.path(), &k), None);
        fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
        assert_eq!(load(dir.path(), &k), None);
        // No temporary files are left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
