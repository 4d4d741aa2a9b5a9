//! The on-disk cache of compiled kernels: one shared library per kernel module, so that a
//! second process compiling the same kernels skips LLVM's optimiser and code generator.
//!
//! An entry is `<dir>/<digest>.so`, where `digest` hashes the `Key`: the module text and
//! everything else that changes the machine code (target triple, CPU name and features,
//! the LLVM library, the vector math setting, the pass pipeline, this crate's version and
//! `FORMAT`). On a miss the optimised module is emitted as an object file by the host
//! target machine and linked by the system linker (`cc -shared`, with libm and, when the
//! code calls it, libmvec) into a temporary file in `dir`; the key and a footer are appended
//! (after the ELF image, where the loader never looks) and the file is renamed into place,
//! so readers see a whole entry or none and concurrent processes are safe.
//!
//! Before an entry is loaded its footer is checked: magic, lengths, a checksum of the
//! image and the key, and the key itself byte for byte, so a truncated or corrupted entry,
//! or a digest collision, is a miss (and the entry is rebuilt), never a crash or wrong code.
//!
//! Every failure here (no linker, an unwritable or `noexec` directory, …) makes the caller
//! compile in process instead; the cache never fails a compile.

use crate::llvm_ir::TargetSpec;
use crate::target;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Bump when the entry layout or anything the key does not capture changes the code.
pub const FORMAT: u32 = 1;

const MAGIC: &[u8; 8] = b"ENCDKC01";
/// `image length u64, key length u64, checksum u128, MAGIC`, little-endian.
const FOOTER: usize = 8 + 8 + 16 + 8;
/// Entries kept per directory; storing one more removes the least recently used.
const MAX_ENTRIES: usize = 256;
/// Temporary files older than this were left by a process that died; they are removed.
const STALE: Duration = Duration::from_secs(3600);
const LINKER: &str = "cc";

/// What an entry is for: its full text is stored in the entry and compared on load.
pub struct Key {
    text: String,
    digest: u128,
}

impl Key {
    pub fn new(module_text: &str, spec: &TargetSpec, vector_math: bool) -> Key {
        let text = format!(
            "encdecc kernel cache\nformat {FORMAT}\ncrate {} {}\nllvm {}\ntriple {}\ncpu {}\n\
             features {}\nvector-math {}\npipeline {}\nobject pic, linked by `{LINKER} -shared`\n\
             ---\n{module_text}",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION"),
            llvm_identity(),
            spec.triple,
            spec.cpu,
            spec.features,
            if vector_math { "libmvec-x86" } else { "off" },
            target::PIPELINE_DESCRIPTION,
        );
        let digest = hash128(text.as_bytes());
        Key { text, digest }
    }

    fn file_name(&self) -> String {
        format!("{:032x}.so", self.digest)
    }

    #[cfg(test)]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// A loaded entry: the library (unloaded on drop) and the address of each symbol asked for.
pub struct Loaded {
    pub library: libloading::Library,
    pub path: PathBuf,
    pub addresses: Vec<usize>,
}

/// The entry for `key` in `dir`, loaded, with `symbols` resolved; `Err` says why not (a
/// miss, an invalid entry, a failed load).
pub fn load(dir: &Path, key: &Key, symbols: &[&str]) -> Result<Loaded, String> {
    if unusable(dir) {
        return Err(format!("{} is unusable in this process", dir.display()));
    }
    let path = dir.join(key.file_name());
    let loaded = load_file(&path, key, symbols)?;
    touch(&path);
    Ok(loaded)
}

/// Builds the entry for `key` with `object` (called only once the directory is known to be
/// writable and a linker is there: it runs LLVM), stores it and loads it.
pub fn store(
    dir: &Path,
    key: &Key,
    symbols: &[&str],
    object: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Loaded, String> {
    if unusable(dir) {
        return Err(format!("{} is unusable in this process", dir.display()));
    }
    if !linker_available() {
        return Err(format!("no `{LINKER}` to link the kernels with"));
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let temp = Temp::new(dir, key);
    // Creating the object file first checks that the directory is writable before LLVM runs.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.object)
        .map_err(|e| format!("cannot write to {}: {e}", dir.display()))?;
    let object = object()?;
    file.write_all(&object)
        .and_then(|_| file.flush())
        .map_err(|e| format!("cannot write {}: {e}", temp.object.display()))?;
    drop(file);
    link(&temp.object, &temp.library, uses_libmvec(&object))?;
    append_footer(&temp.library, key)?;
    let path = dir.join(key.file_name());
    fs::rename(&temp.library, &path)
        .map_err(|e| format!("cannot rename into {}: {e}", path.display()))?;
    // The rename itself durable. codegen sits below the runtime, so it cannot use
    // `encdecc_runtime::atomic_file`; its temporaries are already unique (see `Temp`).
    let _ = File::open(dir).and_then(|d| d.sync_all());
    drop(temp);
    sweep(dir, &path);
    load_file(&path, key, symbols)
}

fn load_file(path: &Path, key: &Key, symbols: &[&str]) -> Result<Loaded, String> {
    let bytes = fs::read(path).map_err(|e| format!("no entry {}: {e}", path.display()))?;
    check_entry(&bytes, key).map_err(|e| format!("invalid entry {}: {e}", path.display()))?;
    drop(bytes);
    let library = open(path)?;
    let mut addresses = Vec::with_capacity(symbols.len());
    for s in symbols {
        // SAFETY: the entry's key matched, so `s` is a kernel function of that library; only
        // its address is read here.
        let address = unsafe { library.get::<*const u8>(s.as_bytes()) }
            .map(|sym| *sym as usize)
            .map_err(|e| format!("{} has no symbol `{s}`: {e}", path.display()))?;
        if address == 0 {
            return Err(format!("{}: symbol `{s}` is null", path.display()));
        }
        addresses.push(address);
    }
    Ok(Loaded {
        library,
        path: path.to_path_buf(),
        addresses,
    })
}

/// Loads a library, resolving all its undefined symbols now (a missing one fails the load
/// instead of a later call).
fn open(path: &Path) -> Result<libloading::Library, String> {
    #[cfg(unix)]
    // SAFETY: the library is one this module linked from LLVM's object code for the key
    // just compared; it has no initialisers beyond the C runtime's.
    let library = unsafe {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        Library::open(Some(path), RTLD_NOW | RTLD_LOCAL).map(Into::into)
    };
    #[cfg(not(unix))]
    // SAFETY: as above.
    let library = unsafe { libloading::Library::new(path) };
    library.map_err(|e| {
        // The entry was checked, so unless another process removed it meanwhile (`sweep`),
        // this is the directory or the system (a `noexec` mount, say): a rebuilt entry would
        // not load either. Stop trying in this process.
        if path.is_file() {
            mark_unusable(path.parent().unwrap_or(path));
        }
        format!("cannot load {}: {e}", path.display())
    })
}

/// Checks the footer of an entry's bytes against `key`.
fn check_entry(bytes: &[u8], key: &Key) -> Result<(), String> {
    if bytes.len() < FOOTER {
        return Err("shorter than its footer".into());
    }
    let (body, footer) = bytes.split_at(bytes.len() - FOOTER);
    if &footer[32..] != MAGIC {
        return Err("no footer (truncated?)".into());
    }
    let u64_at = |i: usize| u64::from_le_bytes(footer[i..i + 8].try_into().unwrap());
    let (image_len, key_len) = (u64_at(0), u64_at(8));
    let checksum = u128::from_le_bytes(footer[16..32].try_into().unwrap());
    if image_len.checked_add(key_len) != Some(body.len() as u64) {
        return Err("lengths do not add up".into());
    }
    if hash128(body) != checksum {
        return Err("checksum mismatch".into());
    }
    let (image, stored_key) = body.split_at(image_len as usize);
    if !image.starts_with(b"\x7fELF") {
        return Err("not an ELF image".into());
    }
    if stored_key != key.text.as_bytes() {
        return Err("built for another key".into());
    }
    Ok(())
}

/// The bytes appended to a linked library: the key and the footer.
fn footer(image: &[u8], key: &Key) -> Vec<u8> {
    let mut body = Vec::with_capacity(image.len() + key.text.len());
    body.extend_from_slice(image);
    body.extend_from_slice(key.text.as_bytes());
    let mut tail = key.text.as_bytes().to_vec();
    tail.extend_from_slice(&(image.len() as u64).to_le_bytes());
    tail.extend_from_slice(&(key.text.len() as u64).to_le_bytes());
    tail.extend_from_slice(&hash128(&body).to_le_bytes());
    tail.extend_from_slice(MAGIC);
    tail
}

fn append_footer(library: &Path, key: &Key) -> Result<(), String> {
    let err = |e: std::io::Error| format!("cannot finish {}: {e}", library.display());
    let image = fs::read(library).map_err(err)?;
    let mut file = OpenOptions::new().append(true).open(library).map_err(err)?;
    // Synced before the rename into place, so a crash never leaves a torn entry under the
    // final name (a torn one would be rejected by `check_entry`, but cost a recompile).
    file.write_all(&footer(&image, key))
        .and_then(|_| file.sync_all())
        .map_err(err)
}

/// Whether the object code calls glibc's vector math (its symbols are `_ZGV…`).
fn uses_libmvec(object: &[u8]) -> bool {
    object.windows(4).any(|w| w == b"_ZGV")
}

fn link(object: &Path, library: &Path, libmvec: bool) -> Result<(), String> {
    let mut cmd = Command::new(LINKER);
    cmd.arg("-shared")
        .arg("-o")
        .arg(library)
        .arg(object)
        .arg("-lm");
    if libmvec {
        // The library LLVM was told about (see `target::use_vector_math`).
        cmd.arg("-l:libmvec.so.1");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{LINKER}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{LINKER} -shared` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn linker_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        Command::new(LINKER)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Directories where a checked library failed to load, so not worth another LLVM run.
fn unusable_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
}

fn unusable(dir: &Path) -> bool {
    unusable_dirs()
        .lock()
        .map(|d| d.contains(dir))
        .unwrap_or(false)
}

fn mark_unusable(dir: &Path) {
    if let Ok(mut d) = unusable_dirs().lock() {
        d.insert(dir.to_path_buf());
    }
}

/// The temporary files of one store, removed on drop (the library is renamed away first
/// when the store succeeds).
struct Temp {
    object: PathBuf,
    library: PathBuf,
}

impl Temp {
    fn new(dir: &Path, key: &Key) -> Temp {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // The clock too, for processes of different PID namespaces sharing the directory
        // (the object file is created exclusively anyway, see `store`).
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let stem = format!(
            ".tmp-{:032x}-{}-{n}-{nanos}",
            key.digest,
            std::process::id()
        );
        Temp {
            object: dir.join(format!("{stem}.o")),
            library: dir.join(format!("{stem}.so")),
        }
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.object);
        let _ = fs::remove_file(&self.library);
    }
}

/// Marks an entry as just used, for `sweep`'s least-recently-used order (best effort: a
/// read-only cache still serves hits).
fn touch(path: &Path) {
    if let Ok(f) = File::open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Removes stale temporary files and, past `MAX_ENTRIES`, the least recently used entries
/// (never `keep`). Best effort: another process may be sweeping too. Removing an entry that
/// a process has loaded is harmless (its mapping stays).
fn sweep(dir: &Path, keep: &Path) {
    let Ok(read) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    let mut entries: Vec<(SystemTime, PathBuf)> = vec![];
    for e in read.flatten() {
        let (path, name) = (e.path(), e.file_name());
        let Some(name) = name.to_str() else {
            continue;
        };
        let Ok(modified) = e.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if name.starts_with(".tmp-") {
            if now.duration_since(modified).is_ok_and(|age| age > STALE) {
                let _ = fs::remove_file(&path);
            }
        } else if is_entry_name(name) && path != keep {
            entries.push((modified, path));
        }
    }
    // `keep` is one more entry.
    if entries.len() < MAX_ENTRIES {
        return;
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() + 1 - MAX_ENTRIES] {
        let _ = fs::remove_file(path);
    }
}

fn is_entry_name(name: &str) -> bool {
    name.strip_suffix(".so")
        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Which LLVM compiles the code: with a shared libLLVM (`llvm14-0-prefer-dynamic`), the
/// library's path, size and modification time, so that an upgraded LLVM misses (LLVM 14's C
/// API has no `LLVMGetVersion`); with LLVM linked in, this executable's.
fn llvm_identity() -> &'static str {
    static IDENTITY: OnceLock<String> = OnceLock::new();
    IDENTITY.get_or_init(|| {
        let library = fs::read_to_string("/proc/self/maps").ok().and_then(|maps| {
            maps.lines()
                .filter_map(|l| l.split_whitespace().nth(5))
                .find(|p| {
                    Path::new(p)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libLLVM"))
                })
                .map(PathBuf::from)
        });
        let (what, path) = match library {
            Some(p) => ("shared", Some(p)),
            None => ("linked in", std::env::current_exe().ok()),
        };
        let stamp = path
            .as_ref()
            .and_then(|p| fs::metadata(p).ok().map(|m| (p, m)))
            .map(|(p, m)| {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{} size {} mtime {mtime}", p.display(), m.len())
            })
            .unwrap_or_else(|| "unknown".into());
        format!("14 (llvm-sys 140), {what}: {stamp}")
    })
}

/// A fast 128-bit hash (two multiply–rotate lanes over 8-byte words, then a murmur3-style
/// finish): the entry name and the corruption check. Not cryptographic, and need not be:
/// the stored key is compared in full.
pub fn hash128(data: &[u8]) -> u128 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let mut a = 0x243F_6A88_85A3_08D3 ^ data.len() as u64;
    let mut b = 0x1319_8A2E_0370_7344u64;
    let mut mix = |w: u64| {
        a = (a ^ w).wrapping_mul(K1).rotate_left(29);
        b = (b.rotate_left(23) ^ w).wrapping_mul(K2);
    };
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        mix(u64::from_le_bytes(w.try_into().unwrap()));
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    mix(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
    let hi = fmix(a ^ b.rotate_left(32));
    let lo = fmix(b ^ hi);
    ((hi as u128) << 64) | lo as u128
}

fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TargetSpec {
        TargetSpec {
            triple: "x86_64-unknown-linux-gnu".into(),
            data_layout: "e".into(),
            cpu: "skylake".into(),
            features: "+avx2".into(),
        }
    }

    #[test]
    fn hash_sees_every_byte_and_the_length() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let h = hash128(&data);
        let mut seen = HashSet::new();
        seen.insert(h);
        for i in [0, 1, 7, 8, 9, 500, 998, 999] {
            for bit in [0, 3, 7] {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                assert!(seen.insert(hash128(&d)), "flip of byte {i} bit {bit}");
            }
        }
        for n in [0, 1, 7, 8, 9, 999] {
            assert!(seen.insert(hash128(&data[..n])), "prefix of {n}");
        }
        assert!(seen.insert(hash128(&[0u8; 3])) && seen.insert(hash128(&[0u8; 4])));
    }

    #[test]
    fn key_covers_module_target_and_vector_math() {
        let base = Key::new("module", &spec(), true);
        let other_cpu = TargetSpec {
            cpu: "znver3".into(),
            ..spec()
        };
        let other_features = TargetSpec {
            features: "+avx2,+avx512f".into(),
            ..spec()
        };
        let keys = [
            Key::new("module ", &spec(), true),
            Key::new("module", &other_cpu, true),
            Key::new("module", &other_features, true),
            Key::new("module", &spec(), false),
        ];
        for k in &keys {
            assert_ne!(k.digest, base.digest);
            assert_ne!(k.text, base.text);
        }
        assert_eq!(Key::new("module", &spec(), true).digest, base.digest);
        let text = base.text();
        for needle in [
            "format 1",
            "llvm 14",
            "cpu skylake",
            "features +avx2",
            "libmvec",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    #[test]
    fn entries_are_checked_before_loading() {
        let key = Key::new("module", &spec(), false);
        let image = b"\x7fELF and the rest of a library".to_vec();
        let mut entry = image.clone();
        entry.extend(footer(&image, &key));
        assert_eq!(check_entry(&entry, &key), Ok(()));
        let other = Key::new("other module", &spec(), false);
        assert!(check_entry(&entry, &other)
            .unwrap_err()
            .contains("another key"));
        for n in [0, 1, FOOTER - 1, FOOTER, entry.len() / 2, entry.len() - 1] {
            assert!(check_entry(&entry[..n], &key).is_err(), "truncated to {n}");
        }
        for i in 0..entry.len() {
            let mut bad = entry.clone();
            bad[i] ^= 0x10;
            assert!(check_entry(&bad, &key).is_err(), "byte {i} flipped");
        }
        let mut not_elf = b"\x7fELG and the rest of a library".to_vec();
        not_elf.extend(footer(b"\x7fELG and the rest of a library", &key));
        assert!(check_entry(&not_elf, &key).unwrap_err().contains("ELF"));
    }

    #[test]
    fn entry_names() {
        assert!(is_entry_name(&format!("{:032x}.so", 1u128 << 100)));
        assert!(!is_entry_name(".tmp-0-1-2.so"));
        assert!(!is_entry_name("0123.so"));
    }
}
