//! Where compiled kernels are cached on disk (see `cache.rs` for what is stored). This part
//! needs no LLVM, so a build without the `llvm` feature keeps the same API.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable that picks the cache directory; `off` turns the cache off.
pub const CACHE_DIR_ENV: &str = "ENCDECC_CACHE_DIR";

/// Where `compile_with` keeps compiled kernels between processes: `dir: None` compiles in
/// process every time. A directory that cannot be created or written is not an error: the
/// kernels are then compiled in process, as with `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheConfig {
    pub dir: Option<PathBuf>,
}

impl CacheConfig {
    /// No cache: every compile runs LLVM in this process.
    pub fn disabled() -> CacheConfig {
        CacheConfig { dir: None }
    }

    /// A cache in `dir` (created on first use).
    pub fn at(dir: impl Into<PathBuf>) -> CacheConfig {
        CacheConfig {
            dir: Some(dir.into()),
        }
    }

    /// What `compile` uses: `$ENCDECC_CACHE_DIR` if set and not empty (`off` disables the
    /// cache), else `$XDG_CACHE_HOME/encdecc/kernels`, else `~/.cache/encdecc/kernels`;
    /// disabled when none of those can be found.
    pub fn from_env() -> CacheConfig {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        CacheConfig {
            dir: resolve(var(CACHE_DIR_ENV), var("XDG_CACHE_HOME"), var("HOME")),
        }
    }
}

/// The cache directory from the three variables' values (`None`: unset or empty).
fn resolve(
    explicit: Option<OsString>,
    xdg: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    let base = xdg
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home.map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("encdecc").join("kernels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(explicit: Option<&str>, xdg: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
        resolve(
            explicit.map(OsString::from),
            xdg.map(OsString::from),
            home.map(OsString::from),
        )
    }

    #[test]
    fn directory_resolution() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(r(Some("/c"), Some("/x"), Some("/h")), p("/c"));
        assert_eq!(r(Some("rel/dir"), None, None), p("rel/dir"));
        assert_eq!(r(Some("off"), Some("/x"), Some("/h")), None);
        assert_eq!(r(None, Some("/x"), Some("/h")), p("/x/encdecc/kernels"));
        assert_eq!(
            r(None, Some("relative"), Some("/h")),
            p("/h/.cache/encdecc/kernels")
        );
        assert_eq!(r(None, None, Some("/h")), p("/h/.cache/encdecc/kernels"));
        assert_eq!(r(None, None, None), None);
    }
}
