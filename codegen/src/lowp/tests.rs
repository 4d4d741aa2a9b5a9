//! The kernels called directly on tiny packed operands, against plain loops; and what
//! LLVM made of them (the instructions the design relies on are in the assembly).

use super::*;

fn bf16(v: f32) -> u16 {
    // Round to nearest even; the test values are small and finite.
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn widen(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Packs `x` `[rows, k]` (rows ≤ mr) and `w` `[cols, k]` (cols ≤ nr) as the kernel reads
/// them, runs it on a `C` with padding columns, and checks `C` against f64 sums.
fn check_gemm(kernel: GemmKernel, rows: usize, cols: usize, k: usize, scaled: bool, acc: bool) {
    let Tile { mr, nr } = kernel.tile;
    let amx = kernel.variant == GemmVariant::Amx;
    // AMX steps 16 pairs at a time and groups A by 16 pairs (see `GemmFn`).
    let kp = if amx {
        k.div_ceil(2).next_multiple_of(16)
    } else {
        k.div_ceil(2)
    };
    let x: Vec<u16> = (0..rows * k)
        .map(|i| bf16((i % 7) as f32 * 0.25 - 0.5))
        .collect();
    let w: Vec<u16> = (0..cols * k)
        .map(|i| bf16((i % 5) as f32 * 0.5 - 1.0))
        .collect();
    let pair = |m: &[u16], r: usize, p: usize| -> u32 {
        let at = |t: usize| if t < k { m[r * k + t] as u32 } else { 0 };
        at(2 * p) | at(2 * p + 1) << 16
    };
    let mut a = vec![0u32; kp * mr];
    let mut b = vec![0u32; kp * nr];
    for p in 0..kp {
        for r in 0..rows {
            let at = if amx {
                (p / 16) * 16 * mr + r * 16 + p % 16
            } else {
                p * mr + r
            };
            a[at] = pair(&x, r, p);
        }
        for j in 0..cols {
            b[p * nr + j] = pair(&w, j, p);
        }
    }
    let scales: Vec<f32> = (0..nr).map(|j| 0.5 + j as f32 * 0.125).collect();
    let amx_kernel = compile_lowp().unwrap().amx.filter(|_| amx);
    let ldc = nr + 3;
    let mut c = vec![7.0f32; mr * ldc];
    let s = if scaled {
        scales.as_ptr()
    } else {
        std::ptr::null()
    };
    // SAFETY: the panels hold `kp` steps of `mr` and `nr` pairs; `c` holds `mr` rows of
    // `ldc`; the AMX kernel runs between `configure` and `release`, with the permission.
    unsafe {
        if let Some(k) = amx_kernel {
            (k.configure)();
        }
        (kernel.f)(
            kp as i64,
            a.as_ptr(),
            b.as_ptr(),
            c.as_mut_ptr(),
            ldc as i64,
            rows as i64,
            cols as i64,
            acc as i32,
            s,
        );
        if let Some(k) = amx_kernel {
            (k.release)();
        }
    };
    for r in 0..mr {
        for j in 0..ldc {
            let got = c[r * ldc + j];
            let want = if r < rows && j < cols {
                let dot: f64 = (0..k)
                    .map(|t| widen(x[r * k + t]) as f64 * widen(w[j * k + t]) as f64)
                    .sum();
                dot * if scaled { scales[j] as f64 } else { 1.0 } + if acc { 7.0 } else { 0.0 }
            } else {
                7.0
            };
            assert!(
                (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{:?} {rows}x{cols} k={k} scaled={scaled} acc={acc} [{r},{j}]: {got} vs {want}",
                kernel.variant
            );
        }
    }
}

/// Linux's permission for this process to use AMX tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`, by hand: the codegen crate has no libc); the runtime asks for it
/// the same way before it runs the AMX kernel.
fn amx_permitted() -> bool {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let ret: i64;
        // SAFETY: arch_prctl (158) with ARCH_REQ_XCOMP_PERM only changes this process's
        // permitted xsave features; `syscall` clobbers rcx and r11.
        unsafe {
            std::arch::asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64,
                in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack))
        };
        ret == 0
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    false
}

#[test]
fn micro_kernels_compute_full_and_edge_tiles() {
    let ks = compile_lowp().unwrap();
    let mut kernels: Vec<GemmKernel> = ks.native.into_iter().chain([ks.emulated]).collect();
    // To stderr itself: the harness hides a passing test's `eprintln!`.
    use std::io::Write;
    let skip = |why: &str| writeln!(std::io::stderr(), "skipping the AMX kernel: {why}");
    match ks.amx {
        Some(amx) if amx_permitted() => kernels.push(amx.gemm),
        Some(_) => drop(skip("Linux refused the tile data permission")),
        None => drop(skip("this CPU has no AMX-BF16")),
    }
    for kernel in kernels {
        let Tile { mr, nr } = kernel.tile;
        for &(rows, cols) in &[(mr, nr), (1, 1), (mr - 1, nr - 1), (3, 17), (mr, 16)] {
            for k in [0, 1, 2, 5, 64, 129, 300] {
                check_gemm(kernel, rows, cols, k, false, false);
            }
            check_gemm(kernel, rows, cols, 33, true, false);
            check_gemm(kernel, rows, cols, 33, true, true);
            check_gemm(kernel, rows, cols, 33, false, true);
        }
    }
}

fn check_gemv(m: usize, k: usize, n: usize, int8: bool) {
    let ks = compile_lowp().unwrap();
    let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
    let wb: Vec<u16> = (0..n * k)
        .map(|i| bf16((i % 9) as f32 * 0.25 - 1.0))
        .collect();
    let wq: Vec<i8> = (0..n * k).map(|i| ((i * 37) % 255) as i32 as i8).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32).collect();
    let mut out = vec![f32::NAN; m * n];
    let (j0, j1) = (n / 3, n);
    // SAFETY: the buffers have the shapes the kernel is told.
    unsafe {
        if int8 {
            (ks.gemv_int8)(
                x.as_ptr(),
                m as i64,
                k as i64,
                wq.as_ptr(),
                scales.as_ptr(),
                out.as_mut_ptr(),
                n as i64,
                j0 as i64,
                j1 as i64,
            )
        } else {
            (ks.gemv_bf16)(
                x.as_ptr(),
                m as i64,
                k as i64,
                wb.as_ptr(),
                std::ptr::null(),
                out.as_mut_ptr(),
                n as i64,
                j0 as i64,
                j1 as i64,
            )
        }
    };
    for i in 0..m {
        for j in 0..n {
            let got = out[i * n + j];
            if j < j0 {
                assert!(got.is_nan(), "wrote outside the rows asked for");
                continue;
            }
            let (dot, mag): (f64, f64) = (0..k)
                .map(|t| {
                    let w = if int8 {
                        wq[j * k + t] as f64
                    } else {
                        widen(wb[j * k + t]) as f64
                    };
                    let p = x[i * k + t] as f64 * w;
                    (p, p.abs())
                })
                .fold((0.0, 0.0), |(s, a), (p, q)| (s + p, a + q));
            let s = if int8 { scales[j] as f64 } else { 1.0 };
            let tol = (k as f64 + 2.0) * f32::EPSILON as f64 * mag * s;
            assert!(
                (got as f64 - dot * s).abs() <= tol,
                "int8={int8} {m}x{k}x{n} [{i},{j}]: {got} vs {}",
                dot * s
            );
        }
    }
}

#[test]
fn gemvs_cover_every_group_size_and_tails() {
    for int8 in [false, true] {
        for m in [1, 2, 3, 4, 5, 7, 8, 9, 16] {
            for k in [1, 15, 16, 17, 63, 64, 65, 200] {
                check_gemv(m, k, 5, int8);
            }
        }
    }
}

#[test]
fn assembly_uses_the_instructions_the_kernels_are_for() {
    let asm = emit_lowp(Emit::Asm).unwrap();
    let ks = compile_lowp().unwrap();
    if ks.native.is_some() {
        assert!(
            asm.contains("vdpbf16ps"),
            "no vdpbf16ps in the native kernel"
        );
    }
    assert!(asm.contains("vfmadd231ps\t(%") || asm.contains("vfmadd231ps\t%zmm"));
    if ks.amx.is_some() {
        for op in [
            "ldtilecfg",
            "tileloadd",
            "tdpbf16ps",
            "tilestored",
            "tilerelease",
        ] {
            assert!(asm.contains(op), "no {op} in the AMX kernel");
        }
    }
    assert!(
        asm.contains("zmm"),
        "the kernels were not vectorised to 512 bits"
    );
}

#[test]
fn the_text_is_deterministic_and_parses() {
    let a = emit_lowp(Emit::LlvmIr).unwrap();
    assert_eq!(a, emit_lowp(Emit::LlvmIr).unwrap());
    assert!(a.contains("define void @\"encdecc.lowp.gemv.int8\""));
}
