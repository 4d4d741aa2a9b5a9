//! `LoopKernel`s → the text of an LLVM 14 module (typed pointers), one function per
//! distinct kernel.
//!
//! Why text and not inkwell's builder: the reductions need per-instruction fast-math flags
//! (`reassoc` on the sum, `nnan nsz` on the max) for the loop vectoriser to accept them,
//! and LLVM 14's C API cannot set them (`LLVMSetFastMathFlags` arrived in LLVM 17). Text
//! also makes the printed module deterministic and exactly what LLVM parses, which is what
//! `--emit llvm-ir` and the snapshots want. inkwell parses, optimises and JITs it.
//!
//! Shape of a kernel function (see `encdecc_compiler::kernel::KernelFn`):
//!
//! ```text
//! entry:  load dims, dynamic strides, typed buffer pointers (once per call)
//! row.begin: for row in [row_begin, row_end): multi-index of the row, row base pointers
//!   s<k>.loop: for j in [0, inner): ops, fold into the stage's reduction, full stores
//!   s<k>.done: reduction result `%red<k>` (read by later stages), per-row stores
//! ```
//! Each stage's inner loop is one basic block whose only loop-carried values are `j` and
//! the accumulator, with addresses `row_base + j·stride`, so the loop vectoriser handles
//! it; row-invariant ops (RMSNorm's `rsqrt(mean + eps)`) are left to LICM.

use crate::check::{check, KernelTypes};
use crate::scalar::{self, float_const, llvm_type, Prelude};
use encdecc_compiler::ir::{DType, ReduceOp};
use encdecc_compiler::kernel::{KOp, LoopKernel, Stride};
use std::collections::HashMap;
use std::fmt::Write;

/// What the module is compiled for. Every function carries `cpu` and `features` as
/// attributes: MCJIT ignores the host unless each function names it (without them it emits
/// SSE-only code, 2–2.4× slower on this project's machines).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    pub triple: String,
    pub data_layout: String,
    pub cpu: String,
    pub features: String,
}

/// One function of the module: the kernel compiled, and every kernel name that uses it.
#[derive(Clone, Debug)]
pub struct UniqueKernel<'a> {
    pub kernel: &'a LoopKernel,
    pub names: Vec<&'a str>,
}

/// Groups kernels that are identical up to their name (fusion produces many identical
/// residual adds and norms); the first name of each group names the function.
pub fn unique_kernels(kernels: &[LoopKernel]) -> Result<Vec<UniqueKernel<'_>>, String> {
    let mut by_body: HashMap<LoopKernel, usize> = HashMap::new();
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    let mut unique: Vec<UniqueKernel> = vec![];
    for k in kernels {
        check_name(&k.name)?;
        let body = LoopKernel {
            name: String::new(),
            ..k.clone()
        };
        let i = *by_body.entry(body).or_insert_with(|| {
            unique.push(UniqueKernel {
                kernel: k,
                names: vec![],
            });
            unique.len() - 1
        });
        match by_name.insert(&k.name, i) {
            Some(j) if j != i => {
                return Err(format!("two different kernels are named `{}`", k.name))
            }
            Some(_) => {}
            None => unique[i].names.push(&k.name),
        }
    }
    Ok(unique)
}

/// Names LLVM or this module already uses cannot name a kernel.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with("llvm.") || name.starts_with("encdecc.") {
        return Err(format!(
            "kernel name `{name}` is reserved (empty, or starting with `llvm.` or `encdecc.`)"
        ));
    }
    Ok(())
}

/// The module text for the kernels grouped by `unique_kernels`, before optimisation.
pub fn module_text(unique: &[UniqueKernel], target: &TargetSpec) -> Result<String, String> {
    let mut prelude = Prelude::new();
    let mut body = String::new();
    for u in unique {
        let types = check(u.kernel)?;
        if u.names.len() > 1 {
            let also: Vec<String> = u.names[1..].iter().map(|n| symbol(n)).collect();
            writeln!(body, "; also compiled as: {}", also.join(", ")).unwrap();
        }
        function(&mut body, &mut prelude, u.kernel, &types);
        body.push('\n');
    }
    let mut out = String::new();
    writeln!(out, "; ModuleID = 'encdecc'").unwrap();
    writeln!(out, "source_filename = \"encdecc\"").unwrap();
    writeln!(out, "target datalayout = \"{}\"", target.data_layout).unwrap();
    writeln!(out, "target triple = \"{}\"\n", target.triple).unwrap();
    out.push_str(&body);
    for item in &prelude {
        writeln!(out, "{item}\n").unwrap();
    }
    let attrs = format!(
        "\"target-cpu\"=\"{}\" \"target-features\"=\"{}\"",
        target.cpu, target.features
    );
    writeln!(out, "attributes #0 = {{ nounwind {attrs} }}").unwrap();
    writeln!(
        out,
        "attributes #1 = {{ nofree norecurse nosync nounwind readnone willreturn {attrs} }}"
    )
    .unwrap();
    Ok(out)
}

/// `@"name"` with LLVM's `\XX` escapes, so any kernel name is a valid symbol.
pub fn symbol(name: &str) -> String {
    let mut s = String::from("@\"");
    for b in name.bytes() {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            s.push(b as char);
        } else {
            write!(s, "\\{b:02X}").unwrap();
        }
    }
    s.push('"');
    s
}

fn memory_type(t: DType) -> &'static str {
    match t {
        DType::Bool => "i8",
        t => llvm_type(t),
    }
}

fn align(t: DType) -> usize {
    match t {
        DType::F32 => 4,
        DType::Bf16 => 2,
        DType::I8 => 1,
        DType::I64 => 8,
        DType::Bool => 1,
    }
}

/// The element stride of input `i` on `axis`, as an operand.
fn stride(k: &LoopKernel, i: usize, axis: usize) -> Option<String> {
    match k.inputs[i].strides[axis] {
        Stride::Zero => None,
        Stride::One => Some("1".into()),
        Stride::Dynamic => Some(format!("%in{i}.st{axis}")),
    }
}

fn function(out: &mut String, pre: &mut Prelude, k: &LoopKernel, types: &KernelTypes) {
    let r = k.rank;
    let inner = format!("%dim{}", r - 1);
    let n_in = k.inputs.len();
    writeln!(
        out,
        "define void {}(i8** noalias nocapture readonly %buffers, i64* noalias nocapture readonly %dims, \
         i64* noalias nocapture readonly %strides, i64 %row_begin, i64 %row_end) #0 {{",
        symbol(&k.name)
    )
    .unwrap();
    writeln!(out, "entry:").unwrap();
    for a in 0..r {
        writeln!(
            out,
            "  %dim{a}.p = getelementptr inbounds i64, i64* %dims, i64 {a}"
        )
        .unwrap();
        writeln!(out, "  %dim{a} = load i64, i64* %dim{a}.p, align 8").unwrap();
    }
    let buffers = k
        .inputs
        .iter()
        .map(|i| i.dtype)
        .chain(k.outputs.iter().map(|o| o.dtype));
    for (b, dtype) in buffers.enumerate() {
        let name = if b < n_in {
            format!("%in{b}")
        } else {
            format!("%out{}", b - n_in)
        };
        let ty = memory_type(dtype);
        writeln!(
            out,
            "  {name}.pp = getelementptr inbounds i8*, i8** %buffers, i64 {b}"
        )
        .unwrap();
        writeln!(out, "  {name}.raw = load i8*, i8** {name}.pp, align 8").unwrap();
        writeln!(out, "  {name} = bitcast i8* {name}.raw to {ty}*").unwrap();
    }
    for (i, input) in k.inputs.iter().enumerate() {
        for (a, s) in input.strides.iter().enumerate() {
            if *s == Stride::Dynamic {
                let at = i * r + a;
                writeln!(
                    out,
                    "  %in{i}.st{a}.p = getelementptr inbounds i64, i64* %strides, i64 {at}"
                )
                .unwrap();
                writeln!(
                    out,
                    "  %in{i}.st{a} = load i64, i64* %in{i}.st{a}.p, align 8"
                )
                .unwrap();
            }
        }
    }
    writeln!(out, "  %empty = icmp sge i64 %row_begin, %row_end").unwrap();
    writeln!(out, "  br i1 %empty, label %exit, label %row.begin\n").unwrap();

    writeln!(out, "row.begin:").unwrap();
    writeln!(
        out,
        "  %row = phi i64 [ %row_begin, %entry ], [ %row.next, %row.end ]"
    )
    .unwrap();
    row_index(out, r);
    for i in 0..n_in {
        let terms: Vec<String> = (0..r - 1)
            .filter_map(|a| stride(k, i, a).map(|s| (a, s)))
            .map(|(a, s)| {
                if s == "1" {
                    format!("%ix{a}")
                } else {
                    writeln!(out, "  %in{i}.off{a} = mul i64 %ix{a}, {s}").unwrap();
                    format!("%in{i}.off{a}")
                }
            })
            .collect();
        let off = sum(out, &format!("%in{i}.off"), &terms);
        let ty = memory_type(k.inputs[i].dtype);
        writeln!(
            out,
            "  %in{i}.row = getelementptr inbounds {ty}, {ty}* %in{i}, i64 {off}"
        )
        .unwrap();
    }
    writeln!(out, "  %row.off = mul i64 %row, {inner}").unwrap();
    for (o, output) in k.outputs.iter().enumerate() {
        if !output.per_row {
            let ty = memory_type(output.dtype);
            writeln!(
                out,
                "  %out{o}.row = getelementptr inbounds {ty}, {ty}* %out{o}, i64 %row.off"
            )
            .unwrap();
        }
    }
    let mut block = "row.begin".to_string();
    for s in 0..k.stages.len() {
        stage(out, pre, k, types, s, &inner, &mut block);
    }
    writeln!(out, "  br label %row.end\n").unwrap();
    writeln!(out, "row.end:").unwrap();
    writeln!(out, "  %row.next = add nsw i64 %row, 1").unwrap();
    writeln!(out, "  %row.more = icmp slt i64 %row.next, %row_end").unwrap();
    writeln!(out, "  br i1 %row.more, label %row.begin, label %exit\n").unwrap();
    writeln!(out, "exit:").unwrap();
    writeln!(out, "  ret void").unwrap();
    writeln!(out, "}}").unwrap();
}

/// `%ix<a>` = the row's index on each leading axis (row-major). The outermost index is the
/// last quotient, so a 2-d kernel needs no division at all.
fn row_index(out: &mut String, r: usize) {
    if r < 2 {
        return;
    }
    let mut rest = "%row".to_string();
    for a in (1..r - 1).rev() {
        writeln!(out, "  %ix{a} = urem i64 {rest}, %dim{a}").unwrap();
        writeln!(out, "  %q{a} = udiv i64 {rest}, %dim{a}").unwrap();
        rest = format!("%q{a}");
    }
    writeln!(out, "  %ix0 = add i64 {rest}, 0").unwrap();
}

/// `terms[0] + terms[1] + …` as an operand (`0` when empty).
fn sum(out: &mut String, name: &str, terms: &[String]) -> String {
    let Some(first) = terms.first() else {
        return "0".into();
    };
    let mut acc = first.clone();
    for (n, t) in terms[1..].iter().enumerate() {
        writeln!(out, "  {name}.{n} = add i64 {acc}, {t}").unwrap();
        acc = format!("{name}.{n}");
    }
    acc
}

fn stage(
    out: &mut String,
    pre: &mut Prelude,
    k: &LoopKernel,
    types: &KernelTypes,
    s: usize,
    inner: &str,
    block: &mut String,
) {
    let st = &k.stages[s];
    if st.reduce.is_none() && st.stores.is_empty() {
        return; // nothing observable
    }
    let init = match st.reduce {
        Some((ReduceOp::Sum, _)) => float_const(0.0),
        Some((ReduceOp::Max, _)) => float_const(f32::NEG_INFINITY),
        None => String::new(),
    };
    let (pred, j) = (block.clone(), format!("%j{s}"));
    writeln!(out, "  %s{s}.go = icmp sgt i64 {inner}, 0").unwrap();
    writeln!(
        out,
        "  br i1 %s{s}.go, label %s{s}.loop, label %s{s}.done\n"
    )
    .unwrap();
    writeln!(out, "s{s}.loop:").unwrap();
    writeln!(
        out,
        "  {j} = phi i64 [ 0, %{pred} ], [ {j}.next, %s{s}.loop ]"
    )
    .unwrap();
    if st.reduce.is_some() {
        writeln!(
            out,
            "  %acc{s} = phi float [ {init}, %{pred} ], [ %acc{s}.next, %s{s}.loop ]"
        )
        .unwrap();
    }
    let ty = &types[s];
    let mut names: Vec<String> = vec![];
    for (i, op) in st.ops.iter().enumerate() {
        let dst = format!("%v{s}_{i}");
        let name = match *op {
            KOp::Load { input } => {
                let dtype = k.inputs[input].dtype;
                let mty = memory_type(dtype);
                let addr = match stride(k, input, k.rank - 1) {
                    None => format!("%in{input}.row"),
                    Some(st) => {
                        let off = if st == "1" {
                            j.clone()
                        } else {
                            writeln!(out, "  {dst}.off = mul i64 {j}, {st}").unwrap();
                            format!("{dst}.off")
                        };
                        writeln!(out, "  {dst}.p = getelementptr inbounds {mty}, {mty}* %in{input}.row, i64 {off}")
                            .unwrap();
                        format!("{dst}.p")
                    }
                };
                let a = align(dtype);
                if dtype == DType::Bool {
                    writeln!(out, "  {dst}.byte = load i8, i8* {addr}, align 1").unwrap();
                    writeln!(out, "  {dst} = icmp ne i8 {dst}.byte, 0").unwrap();
                } else {
                    writeln!(out, "  {dst} = load {mty}, {mty}* {addr}, align {a}").unwrap();
                }
                dst
            }
            KOp::Const { value, dtype } => scalar::constant(value.0, dtype),
            KOp::Index { axis } if axis == k.rank - 1 => j.clone(),
            KOp::Index { axis } => format!("%ix{axis}"),
            KOp::RowValue { stage } => format!("%red{stage}"),
            KOp::Unary { op, a } => {
                scalar::unary(out, pre, &dst, op, ty[a], &names[a]);
                dst
            }
            KOp::Binary { op, a, b } => {
                scalar::binary(out, pre, &dst, op, ty[a], &names[a], &names[b]);
                dst
            }
            KOp::Where { cond, a, b } => {
                let t = llvm_type(ty[a]);
                writeln!(
                    out,
                    "  {dst} = select i1 {}, {t} {}, {t} {}",
                    names[cond], names[a], names[b]
                )
                .unwrap();
                dst
            }
            KOp::Cast { to, a } if to == ty[a] => names[a].clone(),
            KOp::Cast { to, a } => {
                scalar::cast(out, pre, &dst, ty[a], to, &names[a]);
                dst
            }
        };
        names.push(name);
    }
    match st.reduce {
        // `reassoc` on the fold alone lets the vectoriser keep several partial sums (more
        // accurate than one serial sum); no other instruction may be reordered.
        Some((ReduceOp::Sum, v)) => writeln!(
            out,
            "  %acc{s}.next = fadd reassoc float %acc{s}, {}",
            names[v]
        )
        .unwrap(),
        // maxnum with `nnan nsz` is what the vectoriser accepts as a max reduction. The
        // operand is made NaN-free first (NaN → -inf, which max ignores, as the interpreter's
        // f64::max fold ignores NaN), so `nnan` is a fact, not an assumption.
        Some((ReduceOp::Max, v)) => {
            writeln!(out, "  %acc{s}.isnan = fcmp uno float {0}, {0}", names[v]).unwrap();
            writeln!(
                out,
                "  %acc{s}.in = select i1 %acc{s}.isnan, float {}, float {}",
                float_const(f32::NEG_INFINITY),
                names[v]
            )
            .unwrap();
            writeln!(
                out,
                "  %acc{s}.next = call nnan nsz float @llvm.maxnum.f32(float %acc{s}, float %acc{s}.in)"
            )
            .unwrap();
            pre.insert("declare float @llvm.maxnum.f32(float, float)".into());
        }
        None => {}
    }
    // Store names use the store's position, so one stage may store to an output twice.
    for (n, &(o, v)) in st.stores.iter().enumerate() {
        let output = &k.outputs[o];
        if output.per_row {
            continue;
        }
        let mty = memory_type(output.dtype);
        let value = if output.dtype == DType::Bool {
            writeln!(out, "  %s{s}.st{n}.byte = zext i1 {} to i8", names[v]).unwrap();
            format!("%s{s}.st{n}.byte")
        } else {
            names[v].clone()
        };
        writeln!(
            out,
            "  %s{s}.st{n}.p = getelementptr inbounds {mty}, {mty}* %out{o}.row, i64 {j}"
        )
        .unwrap();
        writeln!(
            out,
            "  store {mty} {value}, {mty}* %s{s}.st{n}.p, align {}",
            align(output.dtype)
        )
        .unwrap();
    }
    writeln!(out, "  {j}.next = add nuw nsw i64 {j}, 1").unwrap();
    writeln!(out, "  %s{s}.more = icmp slt i64 {j}.next, {inner}").unwrap();
    writeln!(
        out,
        "  br i1 %s{s}.more, label %s{s}.loop, label %s{s}.done\n"
    )
    .unwrap();
    writeln!(out, "s{s}.done:").unwrap();
    if st.reduce.is_some() {
        writeln!(
            out,
            "  %red{s} = phi float [ {init}, %{pred} ], [ %acc{s}.next, %s{s}.loop ]"
        )
        .unwrap();
    }
    for (n, &(o, _)) in st.stores.iter().enumerate() {
        if k.outputs[o].per_row {
            writeln!(
                out,
                "  %s{s}.st{n}.p = getelementptr inbounds float, float* %out{o}, i64 %row"
            )
            .unwrap();
            writeln!(out, "  store float %red{s}, float* %s{s}.st{n}.p, align 4").unwrap();
        }
    }
    *block = format!("s{s}.done");
}
