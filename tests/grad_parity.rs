//! Gradient parity with torch autograd (HF transformers 5.24) on every fixture: the loss and
//! d(loss)/d(parameter) for every parameter, per tensor within 1e-4 of that reference
//! gradient's largest magnitude (fixtures README), on the reference interpreter and on the
//! CPU backend. The `hf-extra` cases were not looked at while writing autodiff.

mod common;
use common::*;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::grad::run_grad;
use encdecc_runtime::weights::TensorFiles;

fn check(case: &str, backend: Backend) {
    let dir = fixture(case);
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let weights = TensorFiles::open_dir(&dir).unwrap();
    let got =
        run_grad(&model, &weights, &inputs, backend).unwrap_or_else(|e| panic!("{case}: {e}"));
    let want = read_all(&dir.join("grads.safetensors"));
    let loss_want = read_all(&dir.join("outputs.safetensors"))["loss"].to_f64()[0];
    let loss = got.outputs["loss"].to_f64()[0];
    assert!(
        (loss - loss_want).abs() <= 1e-4,
        "{case}: loss {loss} vs {loss_want}"
    );
    assert_eq!(
        got.grads.len(),
        want.len(),
        "{case}: {} gradients, the reference has {}",
        got.grads.len(),
        want.len()
    );
    for (name, w) in &want {
        let g = got
            .grads
            .get(name)
            .unwrap_or_else(|| panic!("{case}: no gradient for `{name}`"));
        let d = max_abs_diff(name, g, w);
        let tol = 1e-4 * max_abs(w);
        assert!(
            d <= tol,
            "{case} ({backend:?}): gradient of `{name}` differs by {d:e} (tolerance {tol:e})"
        );
    }
}

fn check_both(case: &str) {
    // The gradient graph has a printed form that parses back, like every graph.
    let dir = fixture(case);
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let gg =
        encdecc_runtime::grad::grad_graph(&compile(&dir, &[], &inputs, false), "loss").unwrap();
    let text = encdecc_compiler::ir::print::print_graph(&gg.graph);
    assert!(
        text.contains("scatter_add"),
        "{case}: embedding gradients are scatter-adds"
    );
    // Every fixture ties an embedding to the output projection: that table's gradient is
    // the projection's with the input rows scattered onto it (`scatter_add idx, rows,
    // base`), not a sum of two table-sized tensors.
    assert!(
        text.lines().any(|l| l.contains("= scatter_add")
            && l.matches('%').count() == 4
            && l.contains("@grad.")),
        "{case}: the tied embedding's gradient scatters onto the projection's"
    );
    assert!(encdecc_compiler::ir::parse::parse_graph(&text).unwrap() == gg.graph);
    check(case, Backend::Reference);
    check(case, Backend::Cpu);
}

#[test]
fn t5gemma_tiny() {
    check_both("t5gemma-tiny");
}

#[test]
fn t5gemma_unbalanced() {
    check_both("t5gemma-unbalanced");
}

#[test]
fn adapt_tiny() {
    check_both("adapt-tiny");
}

#[test]
fn gemma2_tiny() {
    check_both("gemma2-tiny");
}

#[test]
fn unseen_t5gemma_odd() {
    check_both("t5g-odd");
}

#[test]
fn unseen_t5gemma_mha() {
    check_both("t5g-mha");
}

#[test]
fn unseen_gemma2_odd() {
    check_both("gemma2-odd");
}
