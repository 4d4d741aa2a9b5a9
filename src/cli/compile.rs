//! `encdecc compile`: elaborate a model and emit its summary, IR, Graphviz or parameter list.

use super::common::{build, ModelArgs};
use clap::{Args, ValueEnum};
use encdecc_compiler::fuse::lower;
use encdecc_compiler::ir::{dot::to_dot, print::print_graph};
use encdecc_compiler::summary::{matmul_flops, parameter_count};
use encdecc_runtime::weights::write_atomic;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    Summary,
    Ir,
    Dot,
    Params,
    /// The kernel program after optimisation and fusion.
    FusedIr,
    /// LLVM IR of the loop kernels (before LLVM's optimisation).
    LlvmIr,
    /// CUDA C of the kernels: with -o, a directory of `.cu` files and `manifest.json`.
    Cuda,
}

#[derive(Args)]
pub struct CompileArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// What to print (repeatable); `summary` by default.
    #[arg(long, value_enum)]
    pub emit: Vec<Emit>,
    /// Write to this file (one --emit) or directory (several) instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// Machine-readable output (summary and params).
    #[arg(long)]
    pub json: bool,
    /// Lower the graph as `run --dtype` does on the host backends before emitting (`bf16`:
    /// bf16 weights and matmul operands, shown in the IR's types). `--emit cuda` shows the
    /// f32 graph: the cuda backend chooses its storage when it runs.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

pub fn compile(a: CompileArgs) -> Result<(), String> {
    let mut e = build(&a.model, None, None, false)?;
    let precision = super::common::parse_dtype(&a.dtype)?;
    let f32_graph = e.graph.clone();
    let lowered = encdecc_compiler::precision::lower(&mut e.graph, precision);
    let stored: HashMap<&str, &str> = lowered
        .stored
        .iter()
        .map(|(p, d)| (p.as_str(), d.name()))
        .collect();
    let emits = if a.emit.is_empty() {
        vec![Emit::Summary]
    } else {
        a.emit.clone()
    };
    let mut texts = vec![];
    for emit in &emits {
        let text = match emit {
            Emit::Summary => {
                let params = parameter_count(&e);
                // FLOPs of every matmul for one token per sequence (batch 1, every length 1).
                let flops = matmul_flops(&e.graph, &HashMap::new());
                if a.json {
                    let j = serde_json::json!({
                        "model": e.model,
                        "entry": e.graph.name,
                        "parameters": params,
                        "parameter_tensors": e.params.len(),
                        "flops_per_token": flops,
                        "nodes": e.graph.dag.node_count(),
                        "entries": e.entries,
                        "presets": e.presets,
                        "config": e.config.to_json(),
                    });
                    format!("{j}\n")
                } else {
                    format!(
                        "model {} (entry {})\nparameters         {}\nparameter tensors  {}\nflops per token    {}\ngraph nodes        {}\n",
                        e.model,
                        e.graph.name,
                        group(params),
                        e.params.len(),
                        group(flops),
                        e.graph.dag.node_count()
                    )
                }
            }
            Emit::Ir => print_graph(&e.graph),
            Emit::FusedIr => encdecc_compiler::fuse::print_program(&lower(&e.graph)?),
            Emit::LlvmIr => encdecc_codegen::emit_llvm_ir(&lower(&e.graph)?.kernels)
                .map_err(|e| format!("error: {e}"))?,
            Emit::Cuda => {
                let kernels = lower(&f32_graph)?.kernels;
                let files = encdecc_codegen::cuda::CudaSources::new(&kernels).files(&kernels);
                if let Some(dir) = &a.output {
                    write_cuda(dir, &files)?;
                }
                files
                    .iter()
                    .map(|(name, text)| format!("// ==== {name} ====\n{text}"))
                    .collect()
            }
            Emit::Dot => to_dot(&e.graph),
            Emit::Params => {
                if a.json {
                    let v: Vec<_> = e.params.iter().map(|p| serde_json::json!({"name": p.ckpt, "path": p.path, "shape": p.shape, "dtype": stored.get(p.path.as_str()).unwrap_or(&"f32")})).collect();
                    format!("{}\n", serde_json::Value::Array(v))
                } else {
                    e.params
                        .iter()
                        .map(|p| match stored.get(p.path.as_str()) {
                            Some(d) => format!("{} {:?} {d}\n", p.ckpt, p.shape),
                            None => format!("{} {:?}\n", p.ckpt, p.shape),
                        })
                        .collect()
                }
            }
        };
        texts.push((emit, text));
    }
    // `--emit cuda` wrote its directory above; the other emits go where they always did.
    texts.retain(|(emit, _)| a.output.is_none() || **emit != Emit::Cuda);
    match &a.output {
        None => texts.iter().for_each(|(_, t)| print!("{t}")),
        Some(_) if texts.is_empty() => {}
        Some(path) if texts.len() == 1 => {
            write_atomic(path, texts[0].1.as_bytes()).map_err(|e| format!("error: {e}"))?
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("error: cannot create `{}`: {e}", dir.display()))?;
            for (emit, t) in &texts {
                let ext = match emit {
                    Emit::Summary => {
                        if a.json {
                            "summary.json"
                        } else {
                            "summary.txt"
                        }
                    }
                    Emit::Ir => "ir",
                    Emit::Dot => "dot",
                    Emit::FusedIr => "fused.ir",
                    Emit::LlvmIr => "ll",
                    Emit::Cuda => unreachable!("written as a directory"),
                    Emit::Params => {
                        if a.json {
                            "params.json"
                        } else {
                            "params.txt"
                        }
                    }
                };
                write_atomic(&dir.join(format!("{}.{ext}", e.graph.name)), t.as_bytes())
                    .map_err(|e| format!("error: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The files of `--emit cuda` into `dir` (created), each written atomically.
fn write_cuda(dir: &std::path::Path, files: &[(String, String)]) -> Result<(), String> {
    if dir.is_file() {
        return Err(format!(
            "error: `--emit cuda` writes a directory, but `{}` is a file",
            dir.display()
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("error: cannot create `{}`: {e}", dir.display()))?;
    for (name, text) in files {
        write_atomic(&dir.join(name), text.as_bytes()).map_err(|e| format!("error: {e}"))?;
    }
    Ok(())
}

/// 312517632 → 312,517,632
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
