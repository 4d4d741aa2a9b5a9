//! The `.edl` language: grammar (pest), syntax tree with spans, parsing, module loading
//! with imports, and code-framed diagnostics. It knows nothing of graphs or tensors.

pub mod ast;
pub mod diagnostic;
pub mod load;
pub mod parse;
pub mod source;

pub use diagnostic::Diagnostic;
pub use load::{load_program, Program};
pub use source::{SourceMap, Span, Spanned};
