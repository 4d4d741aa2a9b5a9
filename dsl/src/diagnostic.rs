//! Diagnostics rendered as code frames (`file:line:col`, the source line, carets),
//! in the style of rustc and ruff. Rendering is plain text and deterministic so that
//! snapshots of it are stable.

use crate::source::{SourceMap, Span};
use std::fmt::Write;

#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub message: String,
    /// Where it happened; `None` for errors with no source location (a missing file).
    pub span: Option<Span>,
    /// The caret label.
    pub label: String,
    /// Extra lines: what was expected, how to fix it.
    pub notes: Vec<String>,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>, span: Span) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span: Some(span),
            label: String::new(),
            notes: vec![],
        }
    }
    pub fn unlocated(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            span: None,
            label: String::new(),
            notes: vec![],
        }
    }
    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = label.into();
        self
    }
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Renders the diagnostic with a code frame.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = format!("error: {}\n", self.message);
        if let Some(span) = self.span {
            if (span.file as usize) < sources.files.len() {
                render_frame(&mut out, sources, span, &self.label);
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  = {note}");
        }
        out
    }
}

fn render_frame(out: &mut String, sources: &SourceMap, span: Span, label: &str) {
    let file = sources.file(span.file);
    let (line, col) = sources.line_col(span.file, span.start);
    let (end_line, end_col) = sources.line_col(span.file, span.end);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let _ = writeln!(out, "{pad}--> {}:{line}:{col}", file.path);
    let _ = writeln!(out, "{pad} |");
    let text = file.text.lines().nth(line - 1).unwrap_or("");
    let _ = writeln!(out, "{line} | {text}");
    let width = if end_line == line {
        end_col.saturating_sub(col).max(1)
    } else {
        text.chars().count().saturating_sub(col - 1).max(1)
    };
    let carets = "^".repeat(width);
    let label = if label.is_empty() {
        String::new()
    } else {
        format!(" {label}")
    };
    let _ = writeln!(out, "{pad} | {}{carets}{label}", " ".repeat(col - 1));
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
