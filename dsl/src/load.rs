//! Loading a program: the root file, the standard prelude and every `import`, each
//! parsed once. Imports are resolved relative to the importing file; `std/...` names
//! resolve to the prelude bundled in this crate so that models compile on any machine.

use crate::ast::{Item, Module};
use crate::diagnostic::Diagnostic;
use crate::parse::parse_module;
use crate::source::SourceMap;
use std::path::{Path, PathBuf};

/// The prelude of blocks written in the DSL itself (RMSNorm, RoPE, attention, GeGLU …).
pub const PRELUDE: &str = include_str!("../../models/prelude.edl");
pub const PRELUDE_NAME: &str = "std/prelude.edl";

/// The only language version this compiler reads.
pub const VERSION: i64 = 1;

#[derive(Clone)]
pub struct Program {
    pub sources: SourceMap,
    /// Modules in dependency order: imports before the files that import them; the root last.
    pub modules: Vec<Module>,
}

impl Program {
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.modules.iter().flat_map(|m| m.items.iter())
    }
}

/// Loads `path` and, transitively, its imports. The prelude is always loaded first.
pub fn load_program(path: &Path) -> Result<Program, (SourceMap, Diagnostic)> {
    let mut prog = Program {
        sources: SourceMap::default(),
        modules: vec![],
    };
    let mut seen: Vec<PathBuf> = vec![];
    let r = load_text(
        &mut prog,
        &mut seen,
        PathBuf::from(PRELUDE_NAME),
        PRELUDE.to_string(),
    )
    .and_then(|_| load_file(&mut prog, &mut seen, path.to_path_buf(), None));
    match r {
        Ok(()) => Ok(prog),
        Err(d) => Err((prog.sources, d)),
    }
}

/// Loads a program from text (tests, `--emit` of generated sources).
pub fn load_program_text(name: &str, text: &str) -> Result<Program, (SourceMap, Diagnostic)> {
    let prelude = load_prelude().map_err(|d| (SourceMap::default(), d))?;
    load_program_text_after(&prelude, name, text)
}

/// The prelude alone, loaded once for many `load_program_text_after`.
pub fn load_prelude() -> Result<Program, Diagnostic> {
    let mut prog = Program {
        sources: SourceMap::default(),
        modules: vec![],
    };
    load_text(
        &mut prog,
        &mut vec![],
        PathBuf::from(PRELUDE_NAME),
        PRELUDE.to_string(),
    )?;
    Ok(prog)
}

/// `load_program_text` on a prelude loaded before (`load_prelude`): the fuzzer loads
/// millions of programs, and parsing the prelude for each was most of its time.
pub fn load_program_text_after(
    prelude: &Program,
    name: &str,
    text: &str,
) -> Result<Program, (SourceMap, Diagnostic)> {
    let mut prog = prelude.clone();
    let mut seen = vec![PathBuf::from(PRELUDE_NAME)];
    match load_text(&mut prog, &mut seen, PathBuf::from(name), text.to_string()) {
        Ok(()) => Ok(prog),
        Err(d) => Err((prog.sources, d)),
    }
}

fn load_file(
    prog: &mut Program,
    seen: &mut Vec<PathBuf>,
    path: PathBuf,
    from: Option<Diagnostic>,
) -> Result<(), Diagnostic> {
    let text = std::fs::read_to_string(&path).map_err(|e| {
        let msg = format!("cannot read `{}`: {e}", path.display());
        match from {
            Some(d) => Diagnostic { message: msg, ..d },
            None => Diagnostic::unlocated(msg),
        }
    })?;
    load_text(prog, seen, path, text)
}

fn load_text(
    prog: &mut Program,
    seen: &mut Vec<PathBuf>,
    path: PathBuf,
    text: String,
) -> Result<(), Diagnostic> {
    seen.push(path.clone());
    let file = prog.sources.add(path.display().to_string(), text);
    let module = parse_module(file, &prog.sources.file(file).text.clone())?;
    if module.version.node != VERSION {
        return Err(Diagnostic::new(
            format!("unsupported language version {}", module.version.node),
            module.version.span,
        )
        .with_label("this compiler reads `edl 1`"));
    }
    for item in &module.items {
        if let Item::Import(target) = item {
            let resolved = if target.node == PRELUDE_NAME {
                continue;
            } else {
                path.parent().unwrap_or(Path::new(".")).join(&target.node)
            };
            if seen.iter().any(|p| same_file(p, &resolved)) {
                continue;
            }
            let d = Diagnostic::new(format!("cannot import `{}`", target.node), target.span)
                .with_label("imported here");
            load_file(prog, seen, resolved, Some(d))?;
        }
    }
    prog.modules.push(module);
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}
