//! A build without the `llvm` feature keeps the API and says why it cannot compile.

#![cfg(not(feature = "llvm"))]

use encdecc_codegen::{compile, emit_llvm_ir, WITHOUT_LLVM};

#[test]
fn every_entry_point_reports_the_missing_backend() {
    assert_eq!(compile(&[]).err().as_deref(), Some(WITHOUT_LLVM));
    assert_eq!(emit_llvm_ir(&[]).err().as_deref(), Some(WITHOUT_LLVM));
    assert!(WITHOUT_LLVM.contains("built without LLVM"));
}
