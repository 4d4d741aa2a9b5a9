//! A by-hand measurement (not a test): compile time of a real model's kernels (T5Gemma,
//! preset S-S, lowered by `fuse::lower`) in process, through a cold on-disk cache, warm in
//! the same process, and warm in a fresh process (the case the cache is for).
//!
//! cargo run --release -p encdecc-codegen --example cache_bench [-- MODEL.edl PRESET]

use encdecc_codegen::{compile_with, CacheConfig};
use encdecc_compiler::elab::{elaborate, ElabOptions};
use encdecc_compiler::fuse::lower;
use encdecc_compiler::kernel::LoopKernel;
use encdecc_dsl::load_program;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn kernels(model: &Path, preset: &str) -> Vec<LoopKernel> {
    let prog = load_program(model).unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
    let opts = ElabOptions {
        preset: Some(preset.into()),
        ..Default::default()
    };
    let e = elaborate(&prog, &opts).unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)));
    lower(&e.graph).unwrap().kernels
}

fn timed(kernels: &[LoopKernel], config: &CacheConfig) -> (Duration, bool, usize) {
    let t = Instant::now();
    let c = compile_with(kernels, config).unwrap();
    (t.elapsed(), c.from_cache(), c.function_count())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let model = args
        .get(1)
        .filter(|a| *a != "--child")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("models/t5gemma.edl"));
    let preset = args.get(2).map_or("s-s", String::as_str);
    // The child: one warm compile in a fresh process, from the directory given.
    if let Some(dir) = std::env::var_os("CACHE_BENCH_CHILD_DIR") {
        let ks = kernels(&model, preset);
        let (t, hit, _) = timed(&ks, &CacheConfig::at(dir));
        println!("{} {hit}", t.as_secs_f64());
        return;
    }
    let t = Instant::now();
    let ks = kernels(&model, preset);
    println!(
        "{}, preset {preset}: {} kernels (elaborated and lowered in {:.2?})",
        model.display(),
        ks.len(),
        t.elapsed()
    );
    let dir = std::env::temp_dir().join(format!("encdecc-cache-bench-{}", std::process::id()));
    let config = CacheConfig::at(&dir);
    // Twice each: the first compile of the process also initialises LLVM's target.
    for run in 1..=2 {
        let (jit, _, functions) = timed(&ks, &CacheConfig::disabled());
        println!(
            "in-process JIT (no cache), run {run}:       {jit:>10.2?}  ({functions} functions)"
        );
    }
    for run in 1..=2 {
        let _ = std::fs::remove_dir_all(&dir);
        let (cold, hit, _) = timed(&ks, &config);
        assert!(!hit);
        let size: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!(
            "cold cache (compile+link+store), run {run}: {cold:>10.2?}  (entry: {size} bytes)"
        );
    }
    let (warm, hit, _) = timed(&ks, &config);
    assert!(hit);
    println!("warm cache, same process:               {warm:>10.2?}");
    for _ in 0..3 {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(&args[1..])
            .env("CACHE_BENCH_CHILD_DIR", &dir)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let mut words = line.split_whitespace();
        let secs: f64 = words.next().expect("child output").parse().unwrap();
        assert_eq!(words.next(), Some("true"), "the child missed the cache");
        println!(
            "warm cache, fresh process:              {:>10.2?}",
            Duration::from_secs_f64(secs)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
