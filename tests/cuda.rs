//! The CUDA backend. Without a GPU: the emitted CUDA C (reviewed snapshots of the manifest
//! and of fused kernels, structural checks on every kernel, a C++ type check of the whole
//! NVRTC module against a shim of CUDA's builtins), the kernels *run* on CPU threads by a
//! small emulator of CUDA's execution model (blocks, `__syncthreads`, warp shuffles) —
//! every distinct loop kernel of the tiny T5Gemma against the CPU backend's evaluator, the
//! attention kernel against the decomposition on every variant — the memory plan's
//! soundness on real models, and the CLI (`--emit cuda`, and a clear error from
//! `--backend cuda` on a machine without a GPU). The g++ checks print a reason and pass
//! where there is no g++. With a GPU: the CUDA backend against the reference interpreter
//! on every fixture; without one that test prints "skipped: no CUDA" and passes.

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

/// CUDA's execution model on CPU threads, enough to run this backend's kernels: one
/// thread per CUDA thread, blocks one after another, `__syncthreads` a barrier of the
/// block, warp shuffles an exchange through memory between two barriers of the warp.
const EMULATOR: &str = r#"
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <climits>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct enc_dim3 { unsigned x = 1, y = 1, z = 1; };
thread_local enc_dim3 threadIdx, blockIdx;
thread_local int enc_tid;
enc_dim3 blockDim, gridDim;
static std::barrier<>* enc_block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> enc_warp_barriers;
static float enc_xchg[1024];
alignas(16) static float enc_shim_smem[48 * 1024 / 4];
static std::mutex enc_atomic;
inline void __syncthreads() { enc_block_barrier->arrive_and_wait(); }
inline float enc_shfl(float v, int src) {
    const int warp = enc_tid / 32;
    enc_xchg[enc_tid] = v;
    enc_warp_barriers[warp]->arrive_and_wait();
    const float r = enc_xchg[warp * 32 + (src & 31)];
    enc_warp_barriers[warp]->arrive_and_wait();
    return r;
}
inline float __shfl_xor_sync(unsigned, float v, int o) { return enc_shfl(v, (enc_tid % 32) ^ o); }
inline float __shfl_sync(unsigned, float v, int l) { return enc_shfl(v, l); }
inline float __int_as_float(int x) { float f; std::memcpy(&f, &x, 4); return f; }
inline double __longlong_as_double(long long x) { double f; std::memcpy(&f, &x, 8); return f; }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long c, unsigned long long v) {
    std::lock_guard<std::mutex> g(enc_atomic);
    unsigned long long o = *p; if (o == c) *p = v; return o;
}
template <class F> void enc_launch(enc_dim3 grid, enc_dim3 block, F f) {
    blockDim = block; gridDim = grid;
    const int n = block.x * block.y * block.z;
    if (n % 32 != 0) { fprintf(stderr, "block of %d threads\n", n); exit(3); }
    for (unsigned bz = 0; bz < grid.z; ++bz) for (unsigned by = 0; by < grid.y; ++by)
    for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> bb(n);
        enc_block_barrier = &bb;
        enc_warp_barriers.clear();
        for (int w = 0; w < n / 32; ++w) enc_warp_barriers.emplace_back(new std::barrier<>(32));
        std::vector<std::thread> ts;
        for (int t = 0; t < n; ++t) ts.emplace_back([&, t] {
            enc_tid = t;
            threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            blockIdx = {bx, by, bz};
            f();
        });
        for (auto& t : ts) t.join();
    }
}
static std::vector<char> enc_read(const char* path) {
    FILE* f = fopen(path, "rb");
    std::vector<char> v;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) v.insert(v.end(), buf, buf + n);
    fclose(f);
    return v;
}
"#;

/// An emulated program: `module` + `main` compiled once with the emulator, run once per
/// input file.
struct Emulator {
    dir: tempfile::TempDir,
    exe: std::path::PathBuf,
}

impl Emulator {
    /// `None` (after saying so) without g++.
    fn new(name: &str, module: &str, main: &str) -> Option<Emulator> {
        if Command::new("g++").arg("--version").output().is_err() {
            println!("skipped: no C++ compiler (g++) to emulate the CUDA kernels");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join(format!("{name}.cpp"));
        let module = module.replace(
            "extern __shared__ float enc_smem[];",
            "float* enc_smem = enc_shim_smem;",
        );
        std::fs::write(&src, format!("{EMULATOR}\n{module}\n{main}")).unwrap();
        let exe = dir.path().join(name);
        let out = Command::new("g++")
            .args(["-std=c++20", "-O1", "-pthread", "-w", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Emulator { dir, exe })
    }

    fn run(&self, input: &[u8]) -> Vec<u8> {
        let (inp, outp) = (
            self.dir.path().join("in.bin"),
            self.dir.path().join("out.bin"),
        );
        std::fs::write(&inp, input).unwrap();
        let r = Command::new(&self.exe)
            .arg(&inp)
            .arg(&outp)
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        std::fs::read(&outp).unwrap()
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

const ATTN_MAIN: &str = r#"
int main(int, char** argv) {
    std::vector<char> in = enc_read(argv[1]);
    const i64* h = (const i64*)in.data();
    const i64 b = h[0], hq = h[1], hk = h[2], tq = h[3], tk = h[4], d = h[5], dv = h[6];
    const int causal = (int)h[7], inclusive = (int)h[9], has_mask = (int)h[10];
    const i64 window = h[8];
    enc_dim3 grid{(unsigned)h[11], (unsigned)h[12], (unsigned)h[13]}, block{(unsigned)h[14], 1, 1};
    float scale, cap;
    std::memcpy(&scale, &h[15], 4);
    std::memcpy(&cap, (const char*)&h[15] + 4, 4);
    const float* q = (const float*)(h + 16);
    const float* k = q + b * hq * tq * d;
    const float* v = k + b * hk * tk * d;
    const u8* mask = (const u8*)(v + b * hk * tk * dv);
    std::vector<float> out(b * hq * tq * dv, -12345.0f);
    enc_launch(grid, block, [&] {
        enc_attention_f32(out.data(), q, k, v, has_mask ? mask : nullptr, hq, hk, tq, tk, d, dv,
                          hq * tq * d, tq * d, d, hk * tk * d, tk * d, d, hk * tk * dv, tk * dv, dv,
                          scale, cap, causal, window, inclusive);
    });
    FILE* f = fopen(argv[2], "wb");
    fwrite(out.data(), 4, out.size(), f);
    fclose(f);
}
"#;

struct AttnCase {
    b: usize,
    hq: usize,
    hk: usize,
    tq: usize,
    tk: usize,
    d: usize,
    dv: usize,
    mode: encdecc_compiler::ir::AttnMode,
    window: Option<u64>,
    rule: encdecc_compiler::ir::WindowRule,
    softcap: Option<f64>,
    /// Batch row b keeps keys j < tk - 3b (the last row keeps none: fully masked rows).
    mask: bool,
}

/// The library's attention kernel, emulated, against the decomposition run by the
/// reference interpreter (max abs diff ≤ 1e-5 · max |ref|).
fn check_attention(emu: &Emulator, c: &AttnCase) {
    use encdecc_compiler::decompose::decompose;
    use encdecc_compiler::ir::*;
    use encdecc_runtime::Tensor;
    let mut rng = encdecc_runtime::rng::Rng::new(3);
    let mut rand = |n: usize, amp: f32| -> Vec<f32> {
        (0..n).map(|_| (rng.uniform() - 0.5) * 2.0 * amp).collect()
    };
    let (q, k, v) = (
        rand(c.b * c.hq * c.tq * c.d, 2.0),
        rand(c.b * c.hk * c.tk * c.d, 2.0),
        rand(c.b * c.hk * c.tk * c.dv, 1.0),
    );
    let mask: Vec<bool> = (0..c.b)
        .flat_map(|bi| (0..c.tk).map(move |j| bi + 1 < c.b && j + 3 * bi < c.tk))
        .collect();
    let attrs = AttentionAttrs {
        mode: c.mode,
        window: c.window,
        window_rule: c.rule,
        softcap: c.softcap.map(F64),
        scale: F64(1.0 / (c.d as f64).sqrt()),
    };
    // Reference.
    let mut g = Graph::new("attn");
    let ty = |dt: DType, s: &[usize]| TensorType {
        dtype: dt,
        shape: Shape::known(&s.iter().map(|&x| x as u64).collect::<Vec<_>>()),
    };
    let mut ins = vec![];
    let mut inputs = HashMap::new();
    for (name, s, data) in [
        ("q", [c.b, c.hq, c.tq, c.d], &q),
        ("k", [c.b, c.hk, c.tk, c.d], &k),
        ("v", [c.b, c.hk, c.tk, c.dv], &v),
    ] {
        ins.push(
            g.add(
                Op::Input { name: name.into() },
                &[],
                Some(ty(DType::F32, &s)),
            )
            .unwrap(),
        );
        inputs.insert(name.to_string(), Tensor::f32(s.to_vec(), data.clone()));
    }
    if c.mask {
        ins.push(
            g.add(
                Op::Input { name: "m".into() },
                &[],
                Some(ty(DType::Bool, &[c.b, c.tk])),
            )
            .unwrap(),
        );
        inputs.insert("m".to_string(), Tensor::bool(vec![c.b, c.tk], mask.clone()));
    }
    let o = g.add(Op::Attention(attrs.clone()), &ins, None).unwrap();
    g.outputs.push(("o".into(), o));
    decompose(&mut g).unwrap();
    let want = encdecc_runtime::interp::run(&g, &HashMap::new(), &inputs).unwrap()["o"].clone();
    // The kernel's arguments as the executor makes them.
    let call = encdecc_runtime::cuda::args::AttnCall {
        hq: c.hq,
        hk: c.hk,
        tq: c.tq,
        tk: c.tk,
        d: c.d,
        dv: c.dv,
        strides: [[0; 3]; 3],
    };
    use encdecc_runtime::cuda::args::Arg;
    let sc = encdecc_runtime::cuda::args::attention_scalars(&attrs, &call).unwrap();
    let (Arg::F32(scale), Arg::F32(cap), Arg::I32(causal), Arg::I64(window), Arg::I32(inclusive)) =
        (sc[15], sc[16], sc[17], sc[18], sc[19])
    else {
        panic!("argument layout")
    };
    let l = encdecc_runtime::cuda::launch::attention(c.b, c.hq, c.tq, c.d, c.dv)
        .unwrap()
        .unwrap();
    let header: [i64; 15] = [
        c.b as i64,
        c.hq as i64,
        c.hk as i64,
        c.tq as i64,
        c.tk as i64,
        c.d as i64,
        c.dv as i64,
        causal as i64,
        window,
        inclusive as i64,
        c.mask as i64,
        l.grid.0 as i64,
        l.grid.1 as i64,
        l.grid.2 as i64,
        l.block.0 as i64,
    ];
    let mut bytes: Vec<u8> = header.iter().flat_map(|x| x.to_le_bytes()).collect();
    bytes.extend(scale.to_le_bytes());
    bytes.extend(cap.to_le_bytes());
    for x in q.iter().chain(&k).chain(&v) {
        bytes.extend(x.to_le_bytes());
    }
    bytes.extend(mask.iter().map(|&m| m as u8));
    let got = f32s(&emu.run(&bytes));
    let w = want.as_f32().unwrap();
    let scale_ref = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    for (i, (x, y)) in got.iter().zip(w).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * scale_ref,
            "{i}: {x} vs {y} ({}x{} {:?} w{:?} {:?} cap {:?} mask {})",
            c.tq,
            c.tk,
            c.mode,
            c.window,
            c.rule,
            c.softcap,
            c.mask
        );
    }
}

#[test]
fn attention_kernel_emulated() {
    use encdecc_compiler::ir::{AttnMode::*, WindowRule::*};
    let base = AttnCase {
        b: 2,
        hq: 4,
        hk: 2,
        tq: 9,
        tk: 9,
        d: 16,
        dv: 16,
        mode: Causal,
        window: None,
        rule: Inclusive,
        softcap: None,
        mask: false,
    };
    let cases = [
        AttnCase { ..base },
        AttnCase {
            mode: Bidirectional,
            mask: true,
            ..base
        },
        AttnCase {
            mode: Bidirectional,
            window: Some(2),
            rule: Exclusive,
            softcap: Some(5.0),
            ..base
        },
        AttnCase {
            mode: Bidirectional,
            window: Some(2),
            rule: Inclusive,
            mask: true,
            ..base
        },
        AttnCase {
            mode: Causal,
            window: Some(3),
            softcap: Some(20.0),
            mask: true,
            ..base
        },
        // Cross attention: Tq != Tk, more than one key tile, MQA, Dv != D, wide heads.
        AttnCase {
            tq: 5,
            tk: 70,
            hk: 1,
            d: 40,
            dv: 72,
            mode: Bidirectional,
            mask: true,
            ..base
        },
        AttnCase {
            tq: 17,
            tk: 40,
            d: 256,
            dv: 256,
            b: 1,
            hq: 2,
            hk: 2,
            ..base
        },
        // An empty window: every row sees no key (uniform over all keys).
        AttnCase {
            mode: Bidirectional,
            window: Some(0),
            rule: Exclusive,
            ..base
        },
    ];
    let module = format!(
        "{}\n{}",
        encdecc_codegen::cuda::PRELUDE,
        encdecc_codegen::cuda::LIBRARY
    );
    let Some(emu) = Emulator::new("attn", &module, ATTN_MAIN) else {
        return;
    };
    for c in &cases {
        check_attention(&emu, c);
    }
}

/// The C++ call of one generated kernel with buffers `P` (inputs, then outputs) and
/// scalars `S` (sizes, then dynamic strides), as `args::loop_args` lists them.
fn kernel_call(k: &LoopKernel, function: &str) -> String {
    use encdecc_compiler::ir::DType;
    let ty = |d: DType| match d {
        DType::F32 => "float",
        DType::I64 => "i64",
        DType::Bool => "u8",
    };
    let mut args: Vec<String> = vec![];
    for (i, inp) in k.inputs.iter().enumerate() {
        args.push(format!("(const {}*)P[{i}]", ty(inp.dtype)));
    }
    for (o, out) in k.outputs.iter().enumerate() {
        args.push(format!("({}*)P[{}]", ty(out.dtype), k.inputs.len() + o));
    }
    let scalars = k.rank + encdecc_codegen::cuda::dynamic_strides(k).len();
    args.extend((0..scalars).map(|i| format!("S[{i}]")));
    format!("{function}({})", args.join(", "))
}

/// Every distinct loop kernel of the tiny T5Gemma, emulated on the shapes the fixture
/// gives it with random inputs, against the CPU backend's evaluator of the same kernel:
/// f32 within 1e-5 relative (NaN where it has NaN), integers and bools exactly.
#[test]
fn loop_kernels_emulated() {
    use encdecc_compiler::fuse::Step;
    use encdecc_compiler::ir::DType;
    use encdecc_runtime::cuda::args::{loop_args, Arg};
    use encdecc_runtime::Tensor;
    let dir = fixture("t5gemma-tiny");
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let p = lower(&model.graph).unwrap();
    let s = CudaSources::new(&p.kernels);
    let b = encdecc_runtime::interp::bind_inputs(&p.graph, &inputs).unwrap();
    let mut cases = String::new();
    for (id, (name, _)) in s.kernels.iter().enumerate() {
        let k = p.kernels.iter().find(|k| &k.name == name).unwrap();
        cases.push_str(&format!(
            "    if (id == {id}) enc_launch(grid, block, [&] {{ {}; }});\n",
            kernel_call(k, name)
        ));
    }
    let main = format!(
        r#"
int main(int, char** argv) {{
    std::vector<char> in = enc_read(argv[1]);
    const i64* h = (const i64*)in.data();
    const i64 id = h[0], nbuf = h[4], nscalar = h[5], nout = h[6];
    enc_dim3 grid{{(unsigned)h[1], 1, 1}}, block{{(unsigned)h[2], (unsigned)h[3], 1}};
    const i64* S = h + 7;
    const char* p = (const char*)(S + nscalar);
    std::vector<std::vector<char>> bufs;
    for (i64 i = 0; i < nbuf; ++i) {{
        i64 len;
        std::memcpy(&len, p, 8);
        bufs.emplace_back(p + 8, p + 8 + len);
        bufs.back().resize(len + 8);
        p += 8 + (len + 7) / 8 * 8;
    }}
    std::vector<char*> P;
    for (auto& b : bufs) P.push_back(b.data());
{cases}
    FILE* f = fopen(argv[2], "wb");
    for (i64 i = nbuf - nout; i < nbuf; ++i) fwrite(bufs[i].data(), 1, bufs[i].size() - 8, f);
    fclose(f);
}}
"#
    );
    let module = format!(
        "{}\n{}",
        encdecc_codegen::cuda::PRELUDE,
        s.kernels
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let Some(emu) = Emulator::new("loops", &module, &main) else {
        return;
    };
    let mut rng = encdecc_runtime::rng::Rng::new(11);
    let mut checked = 0;
    for (id, (name, _)) in s.kernels.iter().enumerate() {
        let Some(Step::Loop {
            kernel,
            space,
            inputs: ins,
            ..
        }) = p
            .steps
            .iter()
            .find(|st| matches!(st, Step::Loop { kernel, .. } if s.function_of[*kernel] == *name))
        else {
            continue;
        };
        let k = &p.kernels[*kernel];
        let space = encdecc_runtime::interp::resolve(space, &b).unwrap();
        let shapes: Vec<Vec<usize>> = ins
            .iter()
            .map(|n| encdecc_runtime::interp::resolve(&p.graph.node(*n).ty.shape, &b).unwrap())
            .collect();
        let tensors: Vec<Tensor> = k
            .inputs
            .iter()
            .zip(&shapes)
            .map(|(inp, sh)| {
                let n: usize = sh.iter().product();
                match inp.dtype {
                    DType::F32 => Tensor::f32(
                        sh.clone(),
                        (0..n).map(|_| (rng.uniform() - 0.3) * 4.0).collect(),
                    ),
                    DType::I64 => Tensor::i64(
                        sh.clone(),
                        (0..n).map(|_| rng.below(7) as i64 - 2).collect(),
                    ),
                    DType::Bool => {
                        Tensor::bool(sh.clone(), (0..n).map(|_| rng.below(2) == 1).collect())
                    }
                }
            })
            .collect();
        let refs: Vec<&Tensor> = tensors.iter().collect();
        let mut want = encdecc_runtime::cpu::loops::alloc_outputs(k, &space);
        encdecc_runtime::cpu::loops::run(k, None, &space, &refs, &mut want, 1);
        // Launch shape as the executor picks it (1 multiprocessor: few blocks, so that
        // the grid-stride loops go round).
        let total: u64 = space.iter().map(|&x| x as u64).product();
        let inner = *space.last().unwrap() as u64;
        let l = match form(k) {
            Form::Elementwise => encdecc_runtime::cuda::launch::elementwise(total, 1),
            Form::Rows => encdecc_runtime::cuda::launch::rows(total / inner, inner, 1),
        }
        .unwrap();
        let nin = k.inputs.len();
        let ptrs: Vec<u64> = (0..nin as u64).collect();
        let outs: Vec<u64> = (nin as u64..(nin + k.outputs.len()) as u64).collect();
        let args = loop_args(k, &ptrs, &outs, &space, &shapes).unwrap();
        let scalars: Vec<i64> = args
            .iter()
            .filter_map(|a| match a {
                Arg::I64(x) => Some(*x),
                _ => None,
            })
            .collect();
        let bytes_of = |t: &Tensor| -> Vec<u8> {
            match &t.data {
                encdecc_runtime::Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                encdecc_runtime::Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                encdecc_runtime::Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
            }
        };
        let header = [
            id as i64,
            l.grid.0 as i64,
            l.block.0 as i64,
            l.block.1 as i64,
            (nin + want.len()) as i64,
            scalars.len() as i64,
            want.len() as i64,
        ];
        let mut file: Vec<u8> = header
            .iter()
            .chain(&scalars)
            .flat_map(|x| x.to_le_bytes())
            .collect();
        for t in tensors.iter().chain(&want) {
            let mut data = bytes_of(t);
            if want.iter().any(|w| std::ptr::eq(w, t)) {
                // Outputs start as garbage, so that a missed store shows.
                data.iter_mut().for_each(|x| *x = 0x7f);
            }
            file.extend((data.len() as i64).to_le_bytes());
            let pad = data.len().div_ceil(8) * 8 - data.len();
            file.extend(data);
            file.extend(std::iter::repeat_n(0u8, pad));
        }
        let got = emu.run(&file);
        let mut at = 0;
        for (o, w) in want.iter().enumerate() {
            let n = bytes_of(w).len();
            let g = &got[at..at + n];
            at += n;
            match &w.data {
                encdecc_runtime::Data::F32(v) => {
                    let scale = v
                        .iter()
                        .filter(|x| x.is_finite())
                        .fold(0f32, |m, x| m.max(x.abs()))
                        .max(1e-30);
                    for (i, (x, y)) in f32s(g).iter().zip(v).enumerate() {
                        let same =
                            (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= 1e-5 * scale;
                        assert!(same, "{name} out{o}[{i}]: {x} vs {y} (space {space:?})");
                    }
                }
                _ => assert_eq!(g, &bytes_of(w)[..], "{name} out{o} (space {space:?})"),
            }
        }
        checked += 1;
    }
    assert!(
        checked >= s.kernels.len() - 1,
        "{checked} of {} kernels checked",
        s.kernels.len()
    );
}
