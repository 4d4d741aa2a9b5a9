//! `compile` takes its cache directory from the environment. One test in its own binary:
//! the environment is process-global, and the tests of one binary run in parallel.

#![cfg(feature = "llvm")]

use encdecc_codegen::{compile, CACHE_DIR_ENV};
use encdecc_compiler::ir::{BinaryOp, DType};
use encdecc_compiler::kernel::{KOp, KernelInput, KernelOutput, LoopKernel, Stage, Stride};

fn double() -> LoopKernel {
    LoopKernel {
        name: "double".into(),
        rank: 1,
        inputs: vec![KernelInput {
            dtype: DType::F32,
            strides: vec![Stride::One],
        }],
        outputs: vec![KernelOutput {
            dtype: DType::F32,
            per_row: false,
        }],
        stages: vec![Stage {
            ops: vec![
                KOp::Load { input: 0 },
                KOp::Binary {
                    op: BinaryOp::Add,
                    a: 0,
                    b: 0,
                },
            ],
            reduce: None,
            stores: vec![(0, 1)],
        }],
    }
}

fn run(k: &encdecc_codegen::CompiledKernels) -> Vec<f32> {
    let mut x = [1.0f32, -2.5, 3.0];
    let mut y = [0.0f32; 3];
    let buffers = [x.as_mut_ptr() as *mut u8, y.as_mut_ptr() as *mut u8];
    let dims = [3i64];
    let strides = [1i64];
    let f = k.get("double").unwrap();
    // SAFETY: both buffers hold the 3 elements of the one row.
    unsafe { f(buffers.as_ptr(), dims.as_ptr(), strides.as_ptr(), 0, 1) };
    y.to_vec()
}

#[test]
fn compile_uses_the_directory_in_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("from-env");
    let kernels = [double()];
    // This binary's only test: no other thread reads the environment meanwhile.
    std::env::set_var(CACHE_DIR_ENV, &dir);
    let cold = compile(&kernels).unwrap();
    assert!(!cold.from_cache());
    assert_eq!(cold.cache_file().unwrap().parent(), Some(dir.as_path()));
    let warm = compile(&kernels).unwrap();
    assert!(warm.from_cache());
    assert_eq!(run(&warm), [2.0, -5.0, 6.0]);
    std::env::set_var(CACHE_DIR_ENV, "off");
    let off = compile(&kernels).unwrap();
    assert!(!off.from_cache() && off.cache_file().is_none());
    assert_eq!(run(&off), [2.0, -5.0, 6.0]);
    std::env::remove_var(CACHE_DIR_ENV);
}
