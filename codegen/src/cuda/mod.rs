//! Loop kernels → CUDA C, plus the fixed library kernels (movement, gather, shift,
//! reductions, attention). The runtime compiles one module per kernel program with NVRTC
//! (`runtime/src/cuda`); `encdecc compile --emit cuda` writes the same text as files.
//!
//! Only text is made here: no CUDA toolkit is needed to build or test this module.

mod loops;
mod mem;
mod scalar;

pub use loops::{dynamic_strides, form, kernel_text, kernel_text_with, Form};
pub use mem::{KernelMems, Mem};
pub use scalar::float_literal;

use encdecc_compiler::kernel::LoopKernel;
use std::collections::HashMap;

/// Helpers every kernel uses (integer semantics, row folds).
pub const PRELUDE: &str = include_str!("prelude.cuh");
/// The library kernels.
pub const LIBRARY: &str = include_str!("library.cu");

/// The CUDA C of a kernel program's loop kernels.
#[derive(Clone, Debug)]
pub struct CudaSources {
    /// Distinct kernels: (CUDA function name, text). Kernels identical up to their name
    /// share the first one's function.
    pub kernels: Vec<(String, String)>,
    /// For each loop kernel of the program, in order: its CUDA function name.
    pub function_of: Vec<String>,
    /// For each loop kernel of the program, in order: its operands' memory layout.
    pub mems: Vec<KernelMems>,
}

impl CudaSources {
    /// Every operand at full precision (f32 storage).
    pub fn new(kernels: &[LoopKernel]) -> CudaSources {
        let mems: Vec<KernelMems> = kernels.iter().map(KernelMems::of).collect();
        CudaSources::with_mems(kernels, &mems)
    }

    /// Kernel `i`'s operands laid out as `mems[i]` (bf16 storage of some f32 values).
    pub fn with_mems(kernels: &[LoopKernel], mems: &[KernelMems]) -> CudaSources {
        let mut seen: HashMap<(LoopKernel, KernelMems), String> = HashMap::new();
        let mut out = CudaSources {
            kernels: vec![],
            function_of: vec![],
            mems: mems.to_vec(),
        };
        for (k, m) in kernels.iter().zip(mems) {
            let mut anon = k.clone();
            anon.name.clear();
            let key = (anon, m.clone());
            let name = match seen.get(&key) {
                Some(n) => n.clone(),
                None => {
                    let n = k.name.clone();
                    out.kernels.push((n.clone(), kernel_text_with(k, &n, m)));
                    seen.insert(key, n.clone());
                    n
                }
            };
            out.function_of.push(name);
        }
        out
    }

    /// One NVRTC translation unit: prelude, library, every distinct kernel.
    pub fn module(&self) -> String {
        let mut m = String::from(PRELUDE);
        m.push('\n');
        m.push_str(LIBRARY);
        for (_, text) in &self.kernels {
            m.push('\n');
            m.push_str(text);
        }
        m
    }

    /// The files of `--emit cuda`: `encdecc_prelude.cuh`, `library.cu`, one `<name>.cu` per
    /// distinct kernel (each including the prelude), and `manifest.json`, which lists every
    /// program kernel with its function, file, launch form and parameters.
    pub fn files(&self, program_kernels: &[LoopKernel]) -> Vec<(String, String)> {
        let include = "#include \"encdecc_prelude.cuh\"\n\n";
        let mut files = vec![
            ("encdecc_prelude.cuh".to_string(), PRELUDE.to_string()),
            ("library.cu".to_string(), format!("{include}{LIBRARY}")),
        ];
        for (name, text) in &self.kernels {
            files.push((format!("{name}.cu"), format!("{include}{text}")));
        }
        let entries: Vec<serde_json::Value> = program_kernels
            .iter()
            .zip(&self.function_of)
            .zip(&self.mems)
            .map(|((k, f), m)| {
                // bf16 where stored so, else the IR dtype (what f32 programs always show).
                let name = |d: encdecc_compiler::ir::DType, m: Mem| {
                    if m == Mem::Bf16 { "bf16" } else { d.name() }
                };
                serde_json::json!({
                    "kernel": k.name,
                    "function": f,
                    "file": format!("{f}.cu"),
                    "form": match form(k) { Form::Elementwise => "elementwise", Form::Rows => "rows" },
                    "rank": k.rank,
                    "inputs": k.inputs.iter().zip(&m.inputs).map(|(i, &m)| name(i.dtype, m)).collect::<Vec<_>>(),
                    "outputs": k.outputs.iter().zip(&m.outputs).map(|(o, &m)| serde_json::json!({
                        "dtype": name(o.dtype, m), "per_row": o.per_row
                    })).collect::<Vec<_>>(),
                    "dynamic_strides": dynamic_strides(k),
                })
            })
            .collect();
        // One line per kernel, so that the manifest reads (and diffs) as a table.
        let lines: Vec<String> = entries.iter().map(|e| format!("    {e}")).collect();
        let manifest = format!(
            "{{\n  \"format\": \"encdecc-cuda-1\",\n  \"distinct_kernels\": {},\n  \"library\": \"library.cu\",\n  \"prelude\": \"encdecc_prelude.cuh\",\n  \"kernels\": [\n{}\n  ]\n}}\n",
            self.kernels.len(),
            lines.join(",\n")
        );
        files.push(("manifest.json".to_string(), manifest));
        files
    }
}
