//! The on-disk kernel cache: a cold compile stores an entry whose code computes what the
//! in-process JIT's does, a warm one loads it without LLVM, a damaged entry is rebuilt, and
//! a disabled or unusable cache falls back to the JIT. Each test has its own directory,
//! passed through `compile_with` (the environment is shared by the parallel tests).
//!
//! `cargo test -p encdecc-codegen --test cache -- --nocapture` prints the timings.

#![cfg(feature = "llvm")]

use encdecc_codegen::{compile_with, CacheConfig, CompiledKernels};
use encdecc_compiler::ir::{BinaryOp as B, DType, ReduceOp, UnaryOp as U};
use encdecc_compiler::kernel::{KOp, LoopKernel, Stride};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;
use Stride::{Dynamic as D, One as O, Zero as Z};
mod common;
use common::{f32c, full, input, kernel, load, per_row, stage};

// ---------------------------------------------------------------------------------------
// The kernels: elementwise with broadcasts, reductions with vector exp (libmvec where the
// host has AVX2), scalar libm calls, integers, bools and casts.

fn un(op: U, a: usize) -> KOp {
    KOp::Unary { op, a }
}
fn bin(op: B, a: usize, b: usize) -> KOp {
    KOp::Binary { op, a, b }
}
fn row(stage: usize) -> KOp {
    KOp::RowValue { stage }
}

/// `(x + bias) * scale`: bias broadcast over rows, scale over the inner axis.
fn add_mul(name: &str) -> LoopKernel {
    kernel(
        name,
        3,
        vec![
            input(DType::F32, &[D, D, O]),
            input(DType::F32, &[Z, Z, O]),
            input(DType::F32, &[D, D, Z]),
        ],
        vec![full(DType::F32)],
        vec![stage(
            vec![
                load(0),
                load(1),
                bin(B::Add, 0, 1),
                load(2),
                bin(B::Mul, 2, 3),
            ],
            None,
            vec![(0, 4)],
        )],
    )
}

/// Gemma's RMSNorm: `x · rsqrt(mean(x²) + eps) · (1 + w)`.
fn rms_norm(name: &str) -> LoopKernel {
    kernel(
        name,
        2,
        vec![input(DType::F32, &[D, O]), input(DType::F32, &[Z, O])],
        vec![full(DType::F32)],
        vec![
            stage(
                vec![load(0), bin(B::Mul, 0, 0)],
                Some((ReduceOp::Sum, 1)),
                vec![],
            ),
            stage(
                vec![
                    row(0),
                    f32c(1000.0),
                    bin(B::Div, 0, 1),
                    f32c(1e-6),
                    bin(B::Add, 2, 3),
                    un(U::Rsqrt, 4),
                    load(0),
                    bin(B::Mul, 6, 5),
                    load(1),
                    f32c(1.0),
                    bin(B::Add, 8, 9),
                    bin(B::Mul, 7, 10),
                ],
                None,
                vec![(0, 11)],
            ),
        ],
    )
}

/// Softmax over the inner axis, with the row max and sum as per-row outputs too.
fn softmax(name: &str) -> LoopKernel {
    let shifted_exp = vec![load(0), row(0), bin(B::Sub, 0, 1), un(U::Exp, 2)];
    let mut divide = shifted_exp.clone();
    divide.extend([row(1), bin(B::Div, 3, 4)]);
    kernel(
        name,
        2,
        vec![input(DType::F32, &[D, O])],
        vec![full(DType::F32), per_row(), per_row()],
        vec![
            stage(vec![load(0)], Some((ReduceOp::Max, 0)), vec![(1, 0)]),
            stage(shifted_exp, Some((ReduceOp::Sum, 3)), vec![(2, 3)]),
            stage(divide, None, vec![(0, 5)]),
        ],
    )
}

/// Scalar libm calls and transcendental functions: tanh, sin, cos, log, pow.
fn transcendental(name: &str) -> LoopKernel {
    kernel(
        name,
        2,
        vec![input(DType::F32, &[D, O])],
        vec![full(DType::F32), full(DType::F32), full(DType::F32)],
        vec![stage(
            vec![
                load(0),
                un(U::Tanh, 0),
                un(U::Sin, 0),
                un(U::Cos, 0),
                bin(B::Add, 2, 3),
                un(U::Abs, 0),
                f32c(1.0),
                bin(B::Add, 5, 6),
                un(U::Log, 7),
                bin(B::Pow, 7, 0),
            ],
            None,
            vec![(0, 1), (1, 4), (2, 9)],
        )],
    )
}

/// Integer arithmetic, comparisons, a causal-style mask, casts and a transposed read.
fn ints_and_masks(name: &str) -> LoopKernel {
    kernel(
        name,
        2,
        vec![input(DType::F32, &[D, D]), input(DType::Bool, &[Z, O])],
        vec![full(DType::I64), full(DType::Bool), full(DType::F32)],
        vec![stage(
            vec![
                KOp::Index { axis: 0 },
                KOp::Index { axis: 1 },
                bin(B::Mul, 0, 1),
                bin(B::Le, 1, 0),
                load(1),
                bin(B::And, 3, 4),
                load(0),
                KOp::Cast {
                    to: DType::I64,
                    a: 6,
                },
                bin(B::Sub, 2, 7),
                f32c(f64::NEG_INFINITY),
                KOp::Where {
                    cond: 5,
                    a: 6,
                    b: 9,
                },
            ],
            None,
            vec![(0, 8), (1, 5), (2, 10)],
        )],
    )
}

/// The test table: every kind of kernel above, plus a second name for one of them (the
/// cache must keep identical kernels sharing one function).
fn kernels() -> Vec<LoopKernel> {
    vec![
        add_mul("add_mul"),
        rms_norm("rms_norm"),
        softmax("softmax"),
        transcendental("transcendental"),
        ints_and_masks("ints_and_masks"),
        softmax("softmax_again"),
    ]
}

// ---------------------------------------------------------------------------------------
// Running kernels

#[derive(Clone, Debug, PartialEq)]
enum Buf {
    F32(Vec<f32>),
    I64(Vec<i64>),
    Bool(Vec<u8>),
}

impl Buf {
    fn ptr(&mut self) -> *mut u8 {
        match self {
            Buf::F32(v) => v.as_mut_ptr() as *mut u8,
            Buf::I64(v) => v.as_mut_ptr() as *mut u8,
            Buf::Bool(v) => v.as_mut_ptr(),
        }
    }
}

/// Bitwise equality (so NaNs compare equal to themselves).
fn same(a: &Buf, b: &Buf) -> bool {
    match (a, b) {
        (Buf::F32(x), Buf::F32(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => a == b,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn f32(&mut self) -> f32 {
        -4.0 + 8.0 * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// Runs kernel `k` from `compiled` on deterministic inputs over a `[.., inner]` shape, in
/// two row ranges, and returns its outputs.
fn run(compiled: &CompiledKernels, k: &LoopKernel, inner: usize) -> Vec<Buf> {
    let f = compiled
        .get(&k.name)
        .unwrap_or_else(|| panic!("no entry point for `{}`", k.name));
    let mut dims = vec![3usize; k.rank];
    dims[k.rank - 1] = inner;
    let rows: usize = dims[..k.rank - 1].iter().product();
    // Every input is a dense buffer of the whole shape (broadcast axes get stride 0), laid
    // out row-major, or with the inner axis outermost where its stride is `Dynamic` (a
    // transposed read).
    let mut strides = vec![];
    for i in &k.inputs {
        let mut order: Vec<usize> = (0..k.rank).collect();
        if i.strides[k.rank - 1] == D {
            order.rotate_right(1);
        }
        let mut st = vec![0i64; k.rank];
        let mut n = 1i64;
        for &a in order.iter().rev() {
            if i.strides[a] != Z {
                st[a] = n;
                n *= dims[a] as i64;
            }
        }
        strides.extend(st);
    }
    let size: usize = dims.iter().product();
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let mut inputs: Vec<Buf> = k
        .inputs
        .iter()
        .map(|i| match i.dtype {
            DType::F32 => Buf::F32((0..size).map(|_| rng.f32()).collect()),
            DType::I64 => Buf::I64((0..size).map(|_| rng.next() as i64 % 100).collect()),
            DType::Bool => Buf::Bool(
                (0..size)
                    .map(|_| !rng.next().is_multiple_of(3) as u8)
                    .collect(),
            ),
            DType::Bf16 | DType::I8 => unreachable!("an f32 model's kernels read no bf16 or i8"),
        })
        .collect();
    let mut outputs: Vec<Buf> = k
        .outputs
        .iter()
        .map(|o| {
            let n = if o.per_row { rows } else { size };
            match o.dtype {
                DType::F32 => Buf::F32(vec![0.0; n]),
                DType::I64 => Buf::I64(vec![0; n]),
                DType::Bool => Buf::Bool(vec![0; n]),
                DType::Bf16 | DType::I8 => {
                    unreachable!("an f32 model's kernels write no bf16 or i8")
                }
            }
        })
        .collect();
    let buffers: Vec<*mut u8> = inputs
        .iter_mut()
        .chain(outputs.iter_mut())
        .map(Buf::ptr)
        .collect();
    let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
    let half = rows as i64 / 2;
    for (begin, end) in [(0, half), (half, rows as i64)] {
        // SAFETY: every buffer holds the whole shape, which covers every offset addressed.
        unsafe {
            f(
                buffers.as_ptr(),
                dims.as_ptr(),
                strides.as_ptr(),
                begin,
                end,
            )
        };
    }
    outputs
}

/// Every kernel of the table, at an inner size with a vector remainder and at one with
/// long vector loops.
fn outputs(compiled: &CompiledKernels, kernels: &[LoopKernel]) -> Vec<Vec<Buf>> {
    let mut all = vec![];
    for k in kernels {
        for inner in [37, 1000] {
            all.push(run(compiled, k, inner));
        }
    }
    all
}

fn assert_same_outputs(what: &str, got: &[Vec<Buf>], want: &[Vec<Buf>]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (o, (a, b)) in g.iter().zip(w).enumerate() {
            assert!(same(a, b), "{what}: run {i} output {o} differs");
        }
    }
}

/// The JIT's outputs for the table: what every cached compile must reproduce bit for bit.
fn jit_outputs(kernels: &[LoopKernel]) -> Vec<Vec<Buf>> {
    let jit = compile_with(kernels, &CacheConfig::disabled()).unwrap();
    assert!(!jit.from_cache() && jit.cache_file().is_none());
    outputs(&jit, kernels)
}

// ---------------------------------------------------------------------------------------
// The cache directory

fn cache_dir() -> (tempfile::TempDir, CacheConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = CacheConfig::at(dir.path().join("kernels"));
    (dir, config)
}

/// The directory's file names, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn entry_of(c: &CompiledKernels) -> PathBuf {
    c.cache_file().expect("a cache entry").to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn cold_compile_stores_an_entry_that_computes_what_the_jit_does() {
    let (_tmp, config) = cache_dir();
    let dir = config.dir.clone().unwrap();
    let ks = kernels();
    let cold = compile_with(&ks, &config).unwrap();
    assert!(!cold.from_cache());
    let entry = entry_of(&cold);
    assert_eq!(entry.parent(), Some(dir.as_path()));
    // One entry, no temporary files left behind.
    let names = files(&dir);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".so") && entry.ends_with(&names[0]));
    assert!(fs::metadata(&entry).unwrap().len() > 0);
    // Identical kernels still share one function.
    assert_eq!(cold.function_count(), ks.len() - 1);
    assert_eq!(
        cold.get("softmax").unwrap() as usize,
        cold.get("softmax_again").unwrap() as usize
    );
    assert!(cold.get("missing").is_none());
    assert_same_outputs("cold", &outputs(&cold, &ks), &jit_outputs(&ks));
}

#[test]
fn warm_compile_loads_the_entry_without_llvm() {
    let (_tmp, config) = cache_dir();
    let dir = config.dir.clone().unwrap();
    let ks = kernels();
    let t = Instant::now();
    let jit = compile_with(&ks, &CacheConfig::disabled()).unwrap();
    let jit_time = t.elapsed();
    let t = Instant::now();
    let cold = compile_with(&ks, &config).unwrap();
    let cold_time = t.elapsed();
    let t = Instant::now();
    let warm = compile_with(&ks, &config).unwrap();
    let warm_time = t.elapsed();
    eprintln!(
        "{} kernels: in-process JIT {jit_time:.2?}, cold (compile, link, store) {cold_time:.2?}, \
         warm (load) {warm_time:.2?}",
        ks.len()
    );
    assert!(!cold.from_cache());
    assert!(warm.from_cache());
    assert_eq!(entry_of(&warm), entry_of(&cold));
    assert_eq!(files(&dir).len(), 1);
    assert_eq!(warm.function_count(), cold.function_count());
    let want = outputs(&jit, &ks);
    assert_same_outputs("warm", &outputs(&warm, &ks), &want);
    // The cold entry points stay valid while the warm ones exist, and after they are gone.
    drop(warm);
    assert_same_outputs("cold after warm", &outputs(&cold, &ks), &want);

    // Another set of kernels is another entry; a subset is not the whole set's entry.
    let subset = &ks[..2];
    let other = compile_with(subset, &config).unwrap();
    assert!(!other.from_cache());
    assert_ne!(entry_of(&other), entry_of(&cold));
    assert_eq!(files(&dir).len(), 2);
    assert!(compile_with(subset, &config).unwrap().from_cache());
    // Renaming a kernel changes the module, so it misses.
    let mut renamed = ks.clone();
    renamed[0].name = "add_mul_renamed".into();
    let r = compile_with(&renamed, &config).unwrap();
    assert!(!r.from_cache());
    assert!(r.get("add_mul_renamed").is_some() && r.get("add_mul").is_none());
}

/// Ways an entry can be damaged: each must be detected, rebuilt, and hit afterwards.
#[test]
fn damaged_entries_are_rebuilt_never_loaded() {
    type Damage = fn(&Path, &Path);
    let damages: Vec<(&str, Damage)> = vec![
        ("emptied", |p, _| fs::write(p, b"").unwrap()),
        ("truncated to half", |p, _| truncate(p, |n| n / 2)),
        ("last byte cut", |p, _| truncate(p, |n| n - 1)),
        ("footer cut", |p, _| truncate(p, |n| n - 40)),
        ("image byte flipped", |p, _| flip(p, |n| n / 4)),
        ("key byte flipped", |p, _| flip(p, |n| n - 100)),
        ("junk appended", |p, _| {
            let mut b = fs::read(p).unwrap();
            b.extend_from_slice(b"junk");
            fs::write(p, b).unwrap();
        }),
        ("replaced by text", |p, _| {
            fs::write(p, "not a library\n".repeat(100)).unwrap()
        }),
        ("replaced by another module's entry", |p, other| {
            fs::copy(other, p).unwrap();
        }),
        ("replaced by a bare ELF library", |p, other| {
            // A real library without the footer, e.g. written by something else.
            let b = fs::read(other).unwrap();
            let image_len = u64::from_le_bytes(b[b.len() - 40..b.len() - 32].try_into().unwrap());
            fs::write(p, &b[..image_len as usize]).unwrap();
        }),
        ("removed", |p, _| fs::remove_file(p).unwrap()),
    ];
    let ks = kernels();
    let want = jit_outputs(&ks);
    for (what, damage) in damages {
        let (_tmp, config) = cache_dir();
        let dir = config.dir.clone().unwrap();
        let other = entry_of(&compile_with(&ks[..1], &config).unwrap());
        let entry = entry_of(&compile_with(&ks, &config).unwrap());
        damage(&entry, &other);
        let rebuilt = compile_with(&ks, &config).unwrap();
        assert!(!rebuilt.from_cache(), "{what}: loaded a damaged entry");
        assert_eq!(entry_of(&rebuilt), entry, "{what}");
        assert_same_outputs(what, &outputs(&rebuilt, &ks), &want);
        let warm = compile_with(&ks, &config).unwrap();
        assert!(warm.from_cache(), "{what}: the rebuilt entry does not hit");
        assert_same_outputs(what, &outputs(&warm, &ks), &want);
        assert_eq!(files(&dir).len(), 2, "{what}: {:?}", files(&dir));
    }
}

fn truncate(p: &Path, len: impl Fn(u64) -> u64) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    let n = f.metadata().unwrap().len();
    f.set_len(len(n)).unwrap();
}

fn flip(p: &Path, at: impl Fn(usize) -> usize) {
    let mut b = fs::read(p).unwrap();
    let i = at(b.len());
    b[i] ^= 0x55;
    fs::write(p, b).unwrap();
}

#[test]
fn disabled_or_unusable_cache_compiles_in_process() {
    let ks = kernels();
    let want = jit_outputs(&ks);
    let tmp = tempfile::tempdir().unwrap();
    // A directory that cannot be created: its parent is a file. (Tests may run as root,
    // for whom permission bits do not make a directory unwritable.)
    let file = tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    for config in [
        CacheConfig::disabled(),
        CacheConfig::at(file.join("kernels")),
    ] {
        let c = compile_with(&ks, &config).unwrap();
        assert!(!c.from_cache() && c.cache_file().is_none(), "{config:?}");
        assert_same_outputs(&format!("{config:?}"), &outputs(&c, &ks), &want);
    }
    assert!(!file.join("kernels").exists());
    // Errors in the kernels are reported as without a cache, and store nothing.
    let (_tmp, config) = cache_dir();
    let mut bad = kernels();
    bad.push(LoopKernel {
        name: "add_mul".into(),
        ..rms_norm("x")
    });
    let err = compile_with(&bad, &config).err().expect("an error");
    assert!(
        err.contains("two different kernels are named `add_mul`"),
        "{err}"
    );
    assert!(files(config.dir.as_ref().unwrap()).is_empty());
}

#[test]
fn concurrent_compiles_of_the_same_kernels_share_one_entry() {
    let (_tmp, config) = cache_dir();
    let dir = config.dir.clone().unwrap();
    let ks = kernels();
    let want = jit_outputs(&ks);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| compile_with(&ks, &config).unwrap()))
            .collect();
        for h in handles {
            let c = h.join().unwrap();
            assert!(c.cache_file().is_some());
            assert_same_outputs("concurrent", &outputs(&c, &ks), &want);
        }
    });
    assert_eq!(files(&dir).len(), 1, "{:?}", files(&dir));
    assert!(compile_with(&ks, &config).unwrap().from_cache());
}
