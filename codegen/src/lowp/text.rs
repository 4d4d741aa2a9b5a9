//! The module text around the low-precision kernels: header, intrinsic declarations,
//! attributes, and the few IR idioms (lane masks, splats) both kernel families use.

use crate::llvm_ir::TargetSpec;
use std::fmt::Write;

/// Every intrinsic the kernels may call; LLVM drops the unused declarations.
const DECLARATIONS: &str = "\
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <16 x i32>, <16 x i32>)
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
declare float @llvm.vector.reduce.fadd.v16f32(float, <16 x float>)
declare <16 x float> @llvm.masked.load.v16f32.p0v16f32(<16 x float>*, i32 immarg, <16 x i1>, <16 x float>)
declare void @llvm.masked.store.v16f32.p0v16f32(<16 x float>, <16 x float>*, i32 immarg, <16 x i1>)
declare <16 x i16> @llvm.masked.load.v16i16.p0v16i16(<16 x i16>*, i32 immarg, <16 x i1>, <16 x i16>)
declare <16 x i8> @llvm.masked.load.v16i8.p0v16i8(<16 x i8>*, i32 immarg, <16 x i1>, <16 x i8>)
declare void @llvm.x86.ldtilecfg(i8*)
declare void @llvm.x86.tilezero(i8 immarg)
declare void @llvm.x86.tileloadd64(i8 immarg, i8*, i64)
declare void @llvm.x86.tdpbf16ps(i8 immarg, i8 immarg, i8 immarg)
declare void @llvm.x86.tilestored64(i8 immarg, i8*, i64)
declare void @llvm.x86.tilerelease()
";

/// The whole module: `body` (the functions) between the target header and the attributes.
/// Without the target-cpu and target-features attributes MCJIT emits SSE code (see
/// `llvm_ir::TargetSpec`).
pub fn module(body: &str, target: &TargetSpec) -> String {
    let mut out = String::new();
    writeln!(out, "; ModuleID = 'encdecc.lowp'").unwrap();
    writeln!(out, "source_filename = \"encdecc.lowp\"").unwrap();
    writeln!(out, "target datalayout = \"{}\"", target.data_layout).unwrap();
    writeln!(out, "target triple = \"{}\"\n", target.triple).unwrap();
    out.push_str(body);
    out.push_str(DECLARATIONS);
    writeln!(
        out,
        "\nattributes #0 = {{ nounwind \"target-cpu\"=\"{}\" \"target-features\"=\"{}\" }}",
        target.cpu, target.features
    )
    .unwrap();
    out
}

/// Emits `%{name}` = the `<16 x i1>` mask of the first `min(max(count, 0), 16)` lanes,
/// where `count` is an i64 operand.
pub fn lane_mask(out: &mut String, name: &str, count: &str) {
    writeln!(out, "  %{name}.lo = icmp slt i64 {count}, 0").unwrap();
    writeln!(
        out,
        "  %{name}.c0 = select i1 %{name}.lo, i64 0, i64 {count}"
    )
    .unwrap();
    writeln!(out, "  %{name}.hi = icmp sgt i64 %{name}.c0, 16").unwrap();
    writeln!(
        out,
        "  %{name}.c = select i1 %{name}.hi, i64 16, i64 %{name}.c0"
    )
    .unwrap();
    writeln!(out, "  %{name}.bit = shl i64 1, %{name}.c").unwrap();
    writeln!(out, "  %{name}.bits = add i64 %{name}.bit, -1").unwrap();
    writeln!(out, "  %{name}.i16 = trunc i64 %{name}.bits to i16").unwrap();
    writeln!(out, "  %{name} = bitcast i16 %{name}.i16 to <16 x i1>").unwrap();
}

/// Emits `%{name}` = the i32 operand `value` in all 16 lanes.
pub fn splat_i32(out: &mut String, name: &str, value: &str) {
    writeln!(
        out,
        "  %{name}.v = insertelement <16 x i32> undef, i32 {value}, i32 0"
    )
    .unwrap();
    writeln!(
        out,
        "  %{name} = shufflevector <16 x i32> %{name}.v, <16 x i32> undef, <16 x i32> zeroinitializer"
    )
    .unwrap();
}

/// Emits `%{name}` = the f32 values of the bf16 pairs' low halves (`low`) or high halves
/// of the `<16 x i32>` operand `pairs`: a bf16 is the high half of an f32.
pub fn bf16_half(out: &mut String, name: &str, pairs: &str, low: bool) {
    if low {
        writeln!(
            out,
            "  %{name}.i = shl <16 x i32> {pairs}, {}",
            splat("i32", "16")
        )
        .unwrap();
    } else {
        writeln!(
            out,
            "  %{name}.i = and <16 x i32> {pairs}, {}",
            splat("i32", "-65536")
        )
        .unwrap();
    }
    writeln!(
        out,
        "  %{name} = bitcast <16 x i32> %{name}.i to <16 x float>"
    )
    .unwrap();
}

/// A 16-lane constant vector of `ty` with every lane `value`.
pub fn splat(ty: &str, value: &str) -> String {
    let lanes = vec![format!("{ty} {value}"); 16];
    format!("<{}>", lanes.join(", "))
}
