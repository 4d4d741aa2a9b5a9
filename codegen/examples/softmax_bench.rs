//! A by-hand microbenchmark (not a test): the JIT's softmax over [4096, 1024] f32 against
//! a plain Rust loop, single-threaded, best of several runs. Also writes the optimised IR,
//! the target machine's assembly and the JIT's actual machine code (for `objdump`) to
//! `$OUT_DIR` or /tmp, to check that the inner loops use AVX2.
//!
//! cargo run --release -p encdecc-codegen --example softmax_bench

use encdecc_codegen::{compile, emit, Emit};
use encdecc_compiler::ir::{BinaryOp, DType, ReduceOp, UnaryOp};
use encdecc_compiler::kernel::{KOp, KernelInput, KernelOutput, LoopKernel, Stage, Stride};
use std::time::Instant;

fn softmax_kernel() -> LoopKernel {
    let exp_shifted = vec![
        KOp::Load { input: 0 },
        KOp::RowValue { stage: 0 },
        KOp::Binary {
            op: BinaryOp::Sub,
            a: 0,
            b: 1,
        },
        KOp::Unary {
            op: UnaryOp::Exp,
            a: 2,
        },
    ];
    let mut divide = exp_shifted.clone();
    divide.extend([
        KOp::RowValue { stage: 1 },
        KOp::Binary {
            op: BinaryOp::Div,
            a: 3,
            b: 4,
        },
    ]);
    LoopKernel {
        name: "softmax".into(),
        rank: 2,
        inputs: vec![KernelInput {
            dtype: DType::F32,
            strides: vec![Stride::Dynamic, Stride::One],
        }],
        outputs: vec![KernelOutput {
            dtype: DType::F32,
            per_row: false,
        }],
        stages: vec![
            Stage {
                ops: vec![KOp::Load { input: 0 }],
                reduce: Some((ReduceOp::Max, 0)),
                stores: vec![],
            },
            Stage {
                ops: exp_shifted,
                reduce: Some((ReduceOp::Sum, 3)),
                stores: vec![],
            },
            Stage {
                ops: divide,
                reduce: None,
                stores: vec![(0, 5)],
            },
        ],
    }
}

fn rust_softmax(x: &[f32], out: &mut [f32], n: usize) {
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let m = xr.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s: f32 = xr.iter().map(|&v| (v - m).exp()).sum();
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = (v - m).exp() / s;
        }
    }
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// The bytes of the JIT mapping that holds `addr`, from `addr` to the mapping's end.
fn jit_code(addr: usize) -> Vec<u8> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let range = line.split(' ').next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            // SAFETY: [addr, hi) is inside a readable mapping (JIT code is r-x).
            return unsafe { std::slice::from_raw_parts(addr as *const u8, hi - addr) }.to_vec();
        }
    }
    vec![]
}

fn main() {
    let (rows, n) = (4096usize, 1024usize);
    let k = softmax_kernel();
    let t = Instant::now();
    let compiled = compile(std::slice::from_ref(&k)).unwrap();
    let compile_s = t.elapsed().as_secs_f64();
    let f = compiled.get("softmax").unwrap();

    let mut seed = 1u64;
    let x: Vec<f32> = (0..rows * n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 16.0 - 8.0
        })
        .collect();
    let mut out_jit = vec![0f32; rows * n];
    let mut out_rust = vec![0f32; rows * n];
    let dims = [rows as i64, n as i64];
    let strides = [n as i64, 1];
    let jit = best_of(7, || {
        let bufs = [x.as_ptr() as *mut u8, out_jit.as_mut_ptr() as *mut u8];
        // SAFETY: buffers of rows·n f32 each, contiguous strides.
        unsafe {
            f(
                bufs.as_ptr(),
                dims.as_ptr(),
                strides.as_ptr(),
                0,
                rows as i64,
            )
        };
    });
    let rust = best_of(7, || rust_softmax(&x, &mut out_rust, n));
    let max_rel = out_jit
        .iter()
        .zip(&out_rust)
        .map(|(a, b)| ((a - b) / b).abs())
        .fold(0f32, f32::max);
    let gb = (2 * rows * n * 4) as f64 / 1e9; // one read pass and one write, at least
    println!("softmax [{rows}, {n}] f32, 1 thread, best of 7");
    println!("  compile        {:8.1} ms", compile_s * 1e3);
    println!(
        "  JIT kernel     {:8.2} ms  ({:.2} GB/s of input+output)",
        jit * 1e3,
        gb / jit
    );
    println!(
        "  plain Rust     {:8.2} ms  ({:.2} GB/s)",
        rust * 1e3,
        gb / rust
    );
    println!("  Rust / JIT     {:8.2}x", rust / jit);
    println!("  max rel diff   {max_rel:.2e}");

    let dir = std::env::var("OUT_DIR").unwrap_or_else(|_| "/tmp".into());
    let ir = emit(std::slice::from_ref(&k), Emit::OptimizedIr).unwrap();
    let asm = emit(std::slice::from_ref(&k), Emit::Asm).unwrap();
    std::fs::write(format!("{dir}/softmax.opt.ll"), &ir).unwrap();
    std::fs::write(format!("{dir}/softmax.s"), &asm).unwrap();
    std::fs::write(format!("{dir}/softmax.jit.bin"), jit_code(f as usize)).unwrap();
    let count =
        |text: &str, pats: &[&str]| pats.iter().map(|p| text.matches(p).count()).sum::<usize>();
    println!(
        "  optimised IR: {} <8 x float> / {} <16 x float> ops, {} libmvec calls; asm: {} ymm / {} zmm",
        count(&ir, &["<8 x float>"]),
        count(&ir, &["<16 x float>"]),
        count(&ir, &["call <8 x float> @_ZGV", "call <4 x float> @_ZGV"]),
        count(&asm, &["ymm"]),
        count(&asm, &["zmm"]),
    );
    println!("  wrote {dir}/softmax.{{opt.ll,s,jit.bin}}");
    println!("  check the JIT's own code: objdump -D -b binary -m i386:x86-64 {dir}/softmax.jit.bin | grep -c mm");
}
