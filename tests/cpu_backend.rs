//! The CPU backend against the reference interpreter on every fixture (all outputs,
//! probes included): max |cpu - ref| ≤ 1e-5 · max |ref| per tensor.

mod common;
use common::*;
use encdecc_runtime::forward::Backend;

fn check(case: &str, inputs: &str, sets: &[&str]) {
    let dir = fixture(case);
    let inputs = read_all(&dir.join(inputs));
    let want = run_case_on(&dir, sets, &inputs, Backend::Reference);
    let got = run_case_on(&dir, sets, &inputs, Backend::Cpu);
    assert_eq!(want.len(), got.len(), "{case}: outputs differ");
    for (name, w) in &want {
        let d = max_abs_diff(name, &got[name], w);
        let tol = 1e-5 * max_abs(w).max(1e-30);
        assert!(d <= tol, "{case}: `{name}` differs by {d:e} (tolerance {tol:e})");
    }
}

#[test]
fn cpu_matches_reference_on_fixtures() {
    for case in ["t5gemma-tiny", "t5gemma-unbalanced", "adapt-tiny", "gemma2-tiny", "t5g-odd", "t5g-mha", "gemma2-odd"] {
        check(case, "inputs.safetensors", &[]);
    }
    check("t5gemma-tiny", "inputs.safetensors", &["encoder_window_rule=exclusive"]);
    check("t5g-odd", "inputs_labels_only.safetensors", &[]);
    check("gemma2-odd", "inputs_no_mask.safetensors", &[]);
}
