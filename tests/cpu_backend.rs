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
        assert!(
            d <= tol,
            "{case}: `{name}` differs by {d:e} (tolerance {tol:e})"
        );
    }
}

#[test]
fn cpu_matches_reference_on_fixtures() {
    for case in [
        "t5gemma-tiny",
        "t5gemma-unbalanced",
        "adapt-tiny",
        "gemma2-tiny",
        "t5g-odd",
        "t5g-mha",
        "gemma2-odd",
    ] {
        check(case, "inputs.safetensors", &[]);
    }
    check(
        "t5gemma-tiny",
        "inputs.safetensors",
        &["encoder_window_rule=exclusive"],
    );
    check("t5g-odd", "inputs_labels_only.safetensors", &[]);
    check("gemma2-odd", "inputs_no_mask.safetensors", &[]);
}

/// The memory plan of a real model: values that are live at the same time never share
/// bytes (in-place reuse only at a loop kernel's own output), the arena is at least the
/// live peak, and no value lies outside the arena.
#[test]
fn memory_plan_is_sound() {
    use encdecc_runtime::cpu;
    let dir = fixture("t5gemma-unbalanced");
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let m = cpu::prepare(&model.graph).unwrap();
    let b = encdecc_runtime::interp::bind_inputs(&m.program.graph, &inputs).unwrap();
    let p = cpu::plan::plan(&m, &b).unwrap();
    assert!(p.arena_bytes >= p.live_peak_bytes && p.live_peak_bytes > 0);
    let all: Vec<_> = p.offsets.values().collect();
    assert!(all.iter().all(|(o, s)| o + s <= p.arena_bytes));
    for (a, &(ao, asz)) in &p.offsets {
        for (b, &(bo, bsz)) in &p.offsets {
            let ((ad, ae), (bd, be)) = (p.lifetimes[a], p.lifetimes[b]);
            if a != b && ad < be && bd < ae {
                assert!(
                    ao + asz <= bo || bo + bsz <= ao,
                    "values live together share bytes"
                );
            }
        }
    }
    // An output takes an input's bytes only exactly (in place), never shifted over them.
    for s in &m.program.steps {
        let encdecc_compiler::fuse::Step::Loop {
            inputs, outputs, ..
        } = s
        else {
            continue;
        };
        for o in outputs {
            for x in inputs {
                let (Some(&(oo, osz)), Some(&(xo, xsz))) = (p.offsets.get(o), p.offsets.get(x))
                else {
                    continue;
                };
                assert!(
                    oo == xo || oo + osz <= xo || xo + xsz <= oo,
                    "an output overlaps its input shifted"
                );
            }
        }
    }
    // Sharing must be rare relative to the number of values, or the plan is not reusing.
    let total: u64 = all.iter().map(|(_, s)| s).sum();
    assert!(
        total > p.arena_bytes,
        "no reuse at all: {total} vs {}",
        p.arena_bytes
    );
}
