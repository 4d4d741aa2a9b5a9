//! The CUDA backend. Without a GPU: the emitted CUDA C (reviewed snapshots of the manifest
//! and of fused kernels, structural checks on every kernel, and a C++ syntax and type
//! check of the whole NVRTC module against a shim of CUDA's builtins when `g++` is
//! there), the memory plan's soundness on a real model, and the CLI (`--emit cuda`, and a
//! clear error from `--backend cuda` on a machine without a GPU). With a GPU: the CUDA
//! backend against the reference interpreter on every fixture; without one those tests
//! print "skipped: no CUDA" and pass.

mod common;
use common::*;
use encdecc_codegen::cuda::{form, CudaSources, Form};
use encdecc_compiler::fuse::lower;
use encdecc_compiler::kernel::LoopKernel;
use encdecc_runtime::cuda::plan::{plan, step_inputs, step_outputs, views, Home};
use encdecc_runtime::forward::Backend;
use std::collections::HashMap;
use std::process::Command;

fn tiny_kernels() -> Vec<LoopKernel> {
    let dir = fixture("t5gemma-tiny");
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    lower(&model.graph).unwrap().kernels
}

fn sources() -> (Vec<LoopKernel>, CudaSources) {
    let k = tiny_kernels();
    let s = CudaSources::new(&k);
    (k, s)
}

#[test]
fn manifest_snapshot() {
    let (k, s) = sources();
    let files = s.files(&k);
    let (_, manifest) = files.iter().find(|(n, _)| n == "manifest.json").unwrap();
    insta::assert_snapshot!("t5gemma_tiny_cuda_manifest", manifest);
    // Every program kernel maps to a distinct kernel that has a file.
    assert_eq!(s.function_of.len(), k.len());
    for f in &s.function_of {
        assert!(files.iter().any(|(n, _)| *n == format!("{f}.cu")), "{f}");
    }
    assert!(s.kernels.len() < k.len(), "identical kernels are shared");
}

/// Reviewed kernels: an elementwise one, and the row kernels with the most stages
/// (RMSNorm-style and softmax-style folds).
#[test]
fn fused_kernel_snapshots() {
    let (k, s) = sources();
    let text = |name: &str| s.kernels.iter().find(|(n, _)| n == name).unwrap().1.clone();
    let first_elementwise = k.iter().find(|k| form(k) == Form::Elementwise).unwrap();
    insta::assert_snapshot!(
        "t5gemma_tiny_cuda_elementwise",
        text(&s.function_of[k.iter().position(|x| x == first_elementwise).unwrap()])
    );
    let mut rows: Vec<&LoopKernel> = k.iter().filter(|k| form(k) == Form::Rows).collect();
    rows.sort_by_key(|k| std::cmp::Reverse(k.stages.len()));
    let deepest = rows[0];
    let name = &s.function_of[k.iter().position(|x| x == deepest).unwrap()];
    insta::assert_snapshot!("t5gemma_tiny_cuda_rows", text(name));
}

fn balanced(text: &str, open: char, close: char) -> bool {
    let mut depth = 0i64;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth < 0 {
                return false;
            }
        }
    }
    depth == 0
}

#[test]
fn every_kernel_is_well_formed() {
    let (_, s) = sources();
    for (name, text) in &s.kernels {
        assert!(
            text.starts_with(&format!("extern \"C\" __global__ void {name}(")),
            "{name}: {text}"
        );
        assert!(
            balanced(text, '{', '}') && balanced(text, '(', ')') && balanced(text, '[', ']'),
            "{name}: unbalanced\n{text}"
        );
        // Non-finite constants are spelled by their bits; a bare `inf` or `NaN` is not C.
        for bad in ["inf", "NaN"] {
            assert!(
                !text.split(|c: char| !c.is_alphanumeric()).any(|w| w == bad),
                "{name}: `{bad}` in\n{text}"
            );
        }
    }
    let module = s.module();
    assert!(balanced(&module, '{', '}') && balanced(&module, '(', ')'));
    assert!(module.contains("extern \"C\" __global__ void enc_attention_f32("));
    // Library kernels for each element size are stamped out by macros.
    for f in [
        "ENC_COPY(enc_copy_b4,",
        "ENC_GATHER(enc_gather_b8,",
        "ENC_REDUCE(enc_reduce_i64,",
        "ENC_FILL(enc_fill_b1,",
    ] {
        assert!(module.contains(f), "{f}");
    }
}

/// CUDA's builtins as plain C++, enough to check that the module parses and type-checks
/// (`g++ -fsyntax-only`).
const SHIM: &str = r#"
#include <cmath>
#include <cstring>
#include <climits>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__
struct enc_dim3 { unsigned x, y, z; };
extern enc_dim3 threadIdx, blockIdx, blockDim, gridDim;
inline void __syncthreads() {}
inline float __shfl_xor_sync(unsigned, float v, int) { return v; }
inline float __shfl_sync(unsigned, float v, int) { return v; }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline double __longlong_as_double(long long x) { double f; std::memcpy(&f, &x, 8); return f; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
    unsigned long long o = *p; if (o == c) *p = v; return o;
}
"#;

#[test]
fn module_type_checks_as_cpp() {
    if Command::new("g++").arg("--version").output().is_err() {
        println!("skipped: no C++ compiler (g++) to type-check the CUDA module");
        return;
    }
    let (_, s) = sources();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("module.cpp");
    std::fs::write(&path, format!("{SHIM}\n{}", s.module())).unwrap();
    let out = Command::new("g++")
        .args([
            "-std=c++17",
            "-fsyntax-only",
            "-Wall",
            "-Wno-unused-variable",
            "-Wno-unused-but-set-variable",
        ])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "g++ rejects the CUDA module:\n{stderr}"
    );
    assert!(
        !stderr.contains("warning"),
        "g++ warns about the CUDA module:\n{stderr}"
    );
}

/// The CUDA memory plan of a real model: values live at the same time never share bytes,
/// every stored value has a home inside the arena, reshapes share their operand's.
#[test]
fn memory_plan_is_sound() {
    for case in ["t5gemma-unbalanced", "gemma2-tiny"] {
        let dir = fixture(case);
        let inputs = read_all(&dir.join("inputs.safetensors"));
        let model = compile(&dir, &[], &inputs, false);
        let p = lower(&model.graph).unwrap();
        let v = views(&p);
        let b = encdecc_runtime::interp::bind_inputs(&p.graph, &inputs).unwrap();
        let l = plan(&p, &v, &b).unwrap();
        assert!(l.arena_bytes >= l.live_peak_bytes && l.live_peak_bytes > 0);
        for (a, &(ad, ae, asz)) in &l.lifetimes {
            let Some(Home::Arena(ao)) = l.home.get(a) else {
                panic!("{case}: arena value without an offset")
            };
            assert!(ao + asz <= l.arena_bytes && ao % 256 == 0);
            for (c, &(cd, ce, csz)) in &l.lifetimes {
                let Some(Home::Arena(co)) = l.home.get(c) else {
                    unreachable!()
                };
                if a != c && ad < ce && cd < ae {
                    assert!(
                        ao + asz <= *co || co + csz <= *ao,
                        "{case}: values live together share bytes"
                    );
                }
            }
        }
        // Every value a step reads or writes has storage (views excepted).
        for s in &p.steps {
            for n in step_inputs(&p.graph, &v, s)
                .into_iter()
                .chain(step_outputs(s))
            {
                if !v.contains(&n) {
                    assert!(
                        l.home_of(n).is_some(),
                        "{case}: {:?} has no storage",
                        p.graph.node(n).op
                    );
                }
            }
        }
        let total: u64 = l.lifetimes.values().map(|x| x.2).sum();
        assert!(total > l.arena_bytes, "{case}: no reuse at all");
    }
}

fn encdecc() -> Command {
    Command::new(env!("CARGO_BIN_EXE_encdecc"))
}

#[test]
fn emit_cuda_writes_a_directory() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("cuda");
    let r = encdecc()
        .args([
            "compile",
            "models/t5gemma.edl",
            "--hf-config",
            "tests/fixtures/hf/t5gemma-tiny/config.json",
            "--emit",
            "cuda",
            "-o",
        ])
        .arg(&dir)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let kernels = manifest["kernels"].as_array().unwrap();
    assert!(!kernels.is_empty());
    for k in kernels {
        let file = dir.join(k["file"].as_str().unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("#include \"encdecc_prelude.cuh\""),
            "{}",
            file.display()
        );
    }
    assert!(dir.join("library.cu").exists() && dir.join("encdecc_prelude.cuh").exists());
    // A file where the directory should go is an error, not a panic.
    let file = out.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let r = encdecc()
        .args([
            "compile",
            "models/t5gemma.edl",
            "--preset",
            "s-s",
            "--emit",
            "cuda",
            "-o",
        ])
        .arg(&file)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("is a file"));
}

fn gpu_present() -> bool {
    encdecc_runtime::cuda::libraries_present().is_ok()
}

#[test]
fn run_without_a_gpu_says_so() {
    if gpu_present() {
        println!("skipped: CUDA is present, so `--backend cuda` runs");
        return;
    }
    let dir = fixture("t5gemma-tiny");
    let out = tempfile::tempdir().unwrap();
    let r = encdecc()
        .args(["run", "models/t5gemma.edl", "--hf"])
        .arg(&dir)
        .arg("--inputs")
        .arg(dir.join("inputs.safetensors"))
        .arg("--out")
        .arg(out.path().join("o.safetensors"))
        .args(["--backend", "cuda"])
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("no CUDA driver/GPU found")
            || stderr.contains("built without the CUDA backend"),
        "{stderr}"
    );
    assert!(!out.path().join("o.safetensors").exists());
}

/// CUDA = reference on every fixture, all outputs, within 1e-4 of each tensor's scale
/// (f32 everywhere; the GPU sums in other orders and contracts into FMAs).
#[test]
fn gpu_matches_reference_on_fixtures() {
    if !gpu_present() {
        println!("skipped: no CUDA");
        return;
    }
    let cases: [(&str, &str, &[&str]); 8] = [
        ("t5gemma-tiny", "inputs.safetensors", &[]),
        (
            "t5gemma-tiny",
            "inputs.safetensors",
            &["encoder_window_rule=exclusive"],
        ),
        ("t5gemma-unbalanced", "inputs.safetensors", &[]),
        ("adapt-tiny", "inputs.safetensors", &[]),
        ("gemma2-tiny", "inputs.safetensors", &[]),
        ("t5g-odd", "inputs.safetensors", &[]),
        ("t5g-mha", "inputs.safetensors", &[]),
        ("gemma2-odd", "inputs_no_mask.safetensors", &[]),
    ];
    for (case, inputs, sets) in cases {
        let dir = fixture(case);
        let inputs = read_all(&dir.join(inputs));
        let want = run_case_on(&dir, sets, &inputs, Backend::Reference);
        let got = run_case_on(&dir, sets, &inputs, Backend::Cuda);
        assert_eq!(want.len(), got.len(), "{case}: outputs differ");
        for (name, w) in &want {
            let d = max_abs_diff(name, &got[name], w);
            let tol = 1e-4 * max_abs(w).max(1e-30);
            assert!(
                d <= tol,
                "{case} {sets:?}: `{name}` differs by {d:e} (tolerance {tol:e})"
            );
        }
    }
}

#[test]
fn gpu_plan_keys_are_stable() {
    // The plan must not depend on hash order: two plans of one program agree.
    let dir = fixture("t5gemma-tiny");
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let p = lower(&model.graph).unwrap();
    let v = views(&p);
    let b = encdecc_runtime::interp::bind_inputs(&p.graph, &inputs).unwrap();
    let (x, y) = (plan(&p, &v, &b).unwrap(), plan(&p, &v, &b).unwrap());
    assert_eq!(x.arena_bytes, y.arena_bytes);
    let h = |l: &encdecc_runtime::cuda::plan::Layout| -> HashMap<String, Home> {
        l.home
            .iter()
            .map(|(k, v)| (format!("{k:?}"), v.clone()))
            .collect()
    };
    assert_eq!(h(&x), h(&y));
}
