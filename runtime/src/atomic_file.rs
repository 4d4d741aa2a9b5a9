//! Crash-safe file replacement. A file is written under a temporary name of its own in the
//! target's directory, fsynced, renamed over the target and the directory fsynced, so that
//! after a crash (a SIGKILL, a power cut) the target is either the old file or the new one,
//! never a mixture or an empty file. The temporary name is unique per write (process id, a
//! process-wide counter and the clock), so two threads or processes writing the same target
//! never share a temporary, and a write that fails or is dropped removes its temporary.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// The directory a path lives in (`.` for a bare file name).
/// The directory `path` is in (`.` for a bare name).
pub fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A fresh name beside `path`: `.<name>.tmp-<pid>-<n>-<nanos>`. The prefix `.<name>.tmp`
/// is what a clean-up of stale temporaries matches (see `stale_temps`).
pub fn temp_path(path: &Path) -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or(format!("`{}` is not a file path", path.display()))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // The clock too, for processes of different PID namespaces sharing the directory.
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Ok(parent(path).join(format!(
        ".{}.tmp-{}-{n}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// The temporaries that writes of `path` left behind (a killed writer's), oldest name
/// first. Only for callers that know no other writer of `path` is running.
pub fn stale_temps(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name() else {
        return vec![];
    };
    let prefix = format!(".{}.tmp", name.to_string_lossy());
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent(path))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Removes the temporaries (files or directories) that killed writers of `path` left, as
/// `stale_temps` finds them; a failure to remove one is ignored. Only for callers that know
/// no other writer of `path` is running.
pub fn remove_stale_temps(path: &Path) {
    for t in stale_temps(path) {
        let _ = std::fs::remove_dir_all(&t).or_else(|_| std::fs::remove_file(&t));
    }
}

/// Makes the directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync `{}`: {e}", dir.display()))
}

/// A file being written in place of `path`: `commit` puts it there, dropping it instead
/// removes the temporary and leaves `path` as it was.
pub struct AtomicFile {
    tmp: PathBuf,
    path: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile, String> {
        let tmp = temp_path(path)?;
        // `create_new`: a name another writer holds is an error, never shared.
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
            file: Some(file),
        })
    }

    /// The file `commit` will rename into place (for tests and error messages).
    pub fn temp(&self) -> &Path {
        &self.tmp
    }

    /// fsync, rename over `path`, fsync the directory.
    pub fn commit(mut self) -> Result<(), String> {
        let err = |e: std::io::Error| format!("cannot write `{}`: {e}", self.path.display());
        let file = self.file.take().expect("open until committed");
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(err)?;
        // Renamed: nothing for `drop` to remove even if the directory sync fails.
        self.tmp = PathBuf::new();
        sync_dir(parent(&self.path))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("open until committed").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("open until committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Replaces `path` with `data` crash-safely (see the module doc).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data)
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(entries(dir.path()), ["a.json"]);
    }

    #[test]
    fn a_failed_or_dropped_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"half").unwrap();
            assert!(f.temp().exists());
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(dir.path()), ["a.json"]);
        // The rename fails (the target is a non-empty directory): the temporary goes too.
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("x"), b"x").unwrap();
        let e = write_atomic(&d, b"new").unwrap_err();
        assert!(e.contains("cannot write"), "{e}");
        assert_eq!(entries(dir.path()), ["a.json", "d"]);
        // No such directory: an error, nothing written.
        assert!(write_atomic(&dir.path().join("no/such.json"), b"x").is_err());
    }

    #[test]
    fn concurrent_writers_never_share_a_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared.bin");
        let names: Vec<PathBuf> = (0..1000).map(|_| temp_path(&p).unwrap()).collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        // Whole writes only: one thread's bytes, all of them.
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|&b| b == data[0]));
        assert_eq!(entries(dir.path()), ["shared.bin"]);
    }

    #[test]
    fn stale_temporaries_are_found_by_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ckpt");
        let t = temp_path(&p).unwrap();
        std::fs::create_dir(&t).unwrap();
        std::fs::write(dir.path().join("ckpt.prev"), b"").unwrap();
        std::fs::write(dir.path().join(".other.tmp-1"), b"").unwrap();
        assert_eq!(stale_temps(&p), [t]);
    }
}
