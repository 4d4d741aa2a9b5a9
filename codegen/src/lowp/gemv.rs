//! Decode GEMV: `out[i, j] = scale_j · Σ_t x[i, t] · w[j, t]` for a few rows of f32 `x`
//! against bf16 or int8 weight rows, streamed once each at memory bandwidth.
//!
//! The entry loops over the weight rows `j_begin..j_end`; for each it runs the rows of `x`
//! in groups of up to `GROUP`, each group one pass over the weight row (the row, ≤ a few KB,
//! is re-read from L1 by the next group, not from memory). A group of `r` rows is its own
//! internal function with `r · unroll` accumulators, so that small groups still keep enough
//! FMA chains in flight; the weights are widened in the loop (bf16: shift into an f32's
//! high half; int8: sign-extend and convert) and the row's scale multiplies the sums once.

use super::text::{bf16_half, lane_mask};
use std::fmt::Write;

/// The most rows of `x` one pass over a weight row takes.
pub const GROUP: usize = 8;

/// The weight element type of a GEMV kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightKind {
    Bf16,
    Int8,
}

impl WeightKind {
    fn name(self) -> &'static str {
        match self {
            WeightKind::Bf16 => "bf16",
            WeightKind::Int8 => "int8",
        }
    }

    fn elem(self) -> &'static str {
        match self {
            WeightKind::Bf16 => "i16",
            WeightKind::Int8 => "i8",
        }
    }
}

/// The entry's symbol.
pub fn symbol(kind: WeightKind) -> String {
    format!("encdecc.lowp.gemv.{}", kind.name())
}

/// Independent 16-lane chains per row of `x`, so a group has about 8 in flight (an FMA's
/// latency × throughput).
fn unroll(rows: usize) -> usize {
    (8 / rows).clamp(1, 4)
}

/// The entry and its group functions.
pub fn functions(kind: WeightKind) -> String {
    let mut o = String::new();
    for r in 1..=GROUP {
        group(&mut o, kind, r);
    }
    entry(&mut o, kind);
    o
}

fn group_symbol(kind: WeightKind, rows: usize) -> String {
    format!("encdecc.lowp.gemv.{}.rows{rows}", kind.name())
}

/// `(x, m, k, w, scales, out, n, j_begin, j_end)`; `scales` may be null (all 1).
fn entry(o: &mut String, kind: WeightKind) {
    let e = kind.elem();
    writeln!(
        o,
        "define void @\"{}\"(float* noalias nocapture readonly %x, i64 %m, i64 %k, \
         {e}* noalias nocapture readonly %w, float* noalias nocapture readonly %scales, \
         float* noalias nocapture %out, i64 %n, i64 %j0, i64 %j1) #0 {{",
        symbol(kind)
    )
    .unwrap();
    writeln!(o, "entry:").unwrap();
    writeln!(o, "  %no.scales = icmp eq float* %scales, null").unwrap();
    writeln!(o, "  %any = icmp slt i64 %j0, %j1").unwrap();
    writeln!(o, "  br i1 %any, label %row, label %exit\n").unwrap();
    writeln!(o, "row:").unwrap();
    writeln!(o, "  %j = phi i64 [ %j0, %entry ], [ %j.next, %row.done ]").unwrap();
    writeln!(o, "  %w.off = mul i64 %j, %k").unwrap();
    writeln!(
        o,
        "  %w.row = getelementptr inbounds {e}, {e}* %w, i64 %w.off"
    )
    .unwrap();
    writeln!(
        o,
        "  br i1 %no.scales, label %scale.one, label %scale.load\n"
    )
    .unwrap();
    writeln!(o, "scale.load:").unwrap();
    writeln!(
        o,
        "  %s.p = getelementptr inbounds float, float* %scales, i64 %j"
    )
    .unwrap();
    writeln!(o, "  %s.l = load float, float* %s.p, align 4").unwrap();
    writeln!(o, "  br label %scale.one\n").unwrap();
    writeln!(o, "scale.one:").unwrap();
    writeln!(o, "  %s = phi float [ 1.0, %row ], [ %s.l, %scale.load ]").unwrap();
    writeln!(o, "  br label %grp\n").unwrap();
    writeln!(o, "grp:").unwrap();
    writeln!(
        o,
        "  %i = phi i64 [ 0, %scale.one ], [ %i.next, %grp.done ]"
    )
    .unwrap();
    writeln!(o, "  %x.off = mul i64 %i, %k").unwrap();
    writeln!(
        o,
        "  %x.g = getelementptr inbounds float, float* %x, i64 %x.off"
    )
    .unwrap();
    writeln!(o, "  %o.off0 = mul i64 %i, %n").unwrap();
    writeln!(o, "  %o.off = add i64 %o.off0, %j").unwrap();
    writeln!(
        o,
        "  %o.g = getelementptr inbounds float, float* %out, i64 %o.off"
    )
    .unwrap();
    writeln!(o, "  %left = sub i64 %m, %i").unwrap();
    writeln!(o, "  %big = icmp sgt i64 %left, {GROUP}").unwrap();
    writeln!(o, "  %r = select i1 %big, i64 {GROUP}, i64 %left").unwrap();
    let cases: Vec<String> = (1..GROUP)
        .map(|r| format!("i64 {r}, label %g{r}"))
        .collect();
    writeln!(
        o,
        "  switch i64 %r, label %g{GROUP} [ {} ]\n",
        cases.join(" ")
    )
    .unwrap();
    for r in 1..=GROUP {
        writeln!(o, "g{r}:").unwrap();
        writeln!(
            o,
            "  call void @\"{}\"(float* %x.g, i64 %k, {e}* %w.row, float %s, float* %o.g, i64 %n)",
            group_symbol(kind, r)
        )
        .unwrap();
        writeln!(o, "  br label %grp.done\n").unwrap();
    }
    writeln!(o, "grp.done:").unwrap();
    writeln!(o, "  %i.next = add i64 %i, %r").unwrap();
    writeln!(o, "  %grp.more = icmp slt i64 %i.next, %m").unwrap();
    writeln!(o, "  br i1 %grp.more, label %grp, label %row.done\n").unwrap();
    writeln!(o, "row.done:").unwrap();
    writeln!(o, "  %j.next = add i64 %j, 1").unwrap();
    writeln!(o, "  %row.more = icmp slt i64 %j.next, %j1").unwrap();
    writeln!(o, "  br i1 %row.more, label %row, label %exit\n").unwrap();
    writeln!(o, "exit:").unwrap();
    writeln!(o, "  ret void").unwrap();
    writeln!(o, "}}\n").unwrap();
}

/// Emits `%{name}`: 16 weights from `%w` at element offset `off` as f32, loaded under
/// `mask` (an operand) when given.
fn weights(o: &mut String, kind: WeightKind, name: &str, off: &str, mask: Option<&str>) {
    let e = kind.elem();
    writeln!(
        o,
        "  %{name}.p = getelementptr inbounds {e}, {e}* %w, i64 {off}"
    )
    .unwrap();
    writeln!(o, "  %{name}.vp = bitcast {e}* %{name}.p to <16 x {e}>*").unwrap();
    match mask {
        None => writeln!(
            o,
            "  %{name}.raw = load <16 x {e}>, <16 x {e}>* %{name}.vp, align 1"
        )
        .unwrap(),
        Some(m) => writeln!(
            o,
            "  %{name}.raw = call <16 x {e}> @llvm.masked.load.v16{e}.p0v16{e}(<16 x {e}>* %{name}.vp, \
             i32 1, <16 x i1> {m}, <16 x {e}> zeroinitializer)"
        )
        .unwrap(),
    }
    match kind {
        WeightKind::Bf16 => {
            writeln!(o, "  %{name}.z = zext <16 x i16> %{name}.raw to <16 x i32>").unwrap();
            bf16_half(o, name, &format!("%{name}.z"), true);
        }
        WeightKind::Int8 => {
            writeln!(o, "  %{name}.z = sext <16 x i8> %{name}.raw to <16 x i32>").unwrap();
            writeln!(o, "  %{name} = sitofp <16 x i32> %{name}.z to <16 x float>").unwrap();
        }
    }
}

/// Emits `%{name}`: 16 values of `x` row `row` at element offset `off`, masked when given.
fn activations(o: &mut String, name: &str, row: usize, off: &str, mask: Option<&str>) {
    writeln!(o, "  %{name}.o = add i64 %x.row{row}, {off}").unwrap();
    writeln!(
        o,
        "  %{name}.p = getelementptr inbounds float, float* %x, i64 %{name}.o"
    )
    .unwrap();
    writeln!(
        o,
        "  %{name}.vp = bitcast float* %{name}.p to <16 x float>*"
    )
    .unwrap();
    match mask {
        None => writeln!(
            o,
            "  %{name} = load <16 x float>, <16 x float>* %{name}.vp, align 4"
        )
        .unwrap(),
        Some(m) => writeln!(
            o,
            "  %{name} = call <16 x float> @llvm.masked.load.v16f32.p0v16f32(<16 x float>* %{name}.vp, \
             i32 4, <16 x i1> {m}, <16 x float> zeroinitializer)"
        )
        .unwrap(),
    }
}

/// `(x, k, w, scale, out, n)`: `out[i·n] = scale · x[i·k ..] · w` for `i < rows`.
///
/// Blocks: `main` takes `16·u` weights a step while they last, `tail` 16 at a time under a
/// lane mask (the last partial vector, and what `main` left), then `end` reduces.
fn group(o: &mut String, kind: WeightKind, rows: usize) {
    let e = kind.elem();
    let u = unroll(rows);
    let step = 16 * u;
    writeln!(
        o,
        "define internal void @\"{}\"(float* noalias nocapture readonly %x, i64 %k, \
         {e}* noalias nocapture readonly %w, float %s, float* noalias nocapture %out, i64 %n) \
         alwaysinline #0 {{",
        group_symbol(kind, rows)
    )
    .unwrap();
    writeln!(o, "entry:").unwrap();
    for i in 0..rows {
        writeln!(o, "  %x.row{i} = mul i64 %k, {i}").unwrap();
    }
    writeln!(o, "  %main.end = sub i64 %k, {}", step - 1).unwrap();
    writeln!(o, "  %main.any = icmp sgt i64 %main.end, 0").unwrap();
    writeln!(o, "  br i1 %main.any, label %main, label %main.done\n").unwrap();

    let accs = |o: &mut String, from: &str, init_block: &str, next: &str, back: &str| {
        for i in 0..rows {
            for v in 0..u {
                writeln!(
                    o,
                    "  %{from}.{i}.{v} = phi <16 x float> [ zeroinitializer, %{init_block} ], \
                     [ %{next}.{i}.{v}, %{back} ]"
                )
                .unwrap();
            }
        }
    };
    writeln!(o, "main:").unwrap();
    writeln!(o, "  %t = phi i64 [ 0, %entry ], [ %t.next, %main ]").unwrap();
    accs(o, "a", "entry", "an", "main");
    for v in 0..u {
        writeln!(o, "  %t.{v} = add i64 %t, {}", 16 * v).unwrap();
        weights(o, kind, &format!("w.{v}"), &format!("%t.{v}"), None);
        for i in 0..rows {
            activations(o, &format!("x.{i}.{v}"), i, &format!("%t.{v}"), None);
            writeln!(
                o,
                "  %an.{i}.{v} = call <16 x float> @llvm.fma.v16f32(<16 x float> %x.{i}.{v}, \
                 <16 x float> %w.{v}, <16 x float> %a.{i}.{v})"
            )
            .unwrap();
        }
    }
    writeln!(o, "  %t.next = add nuw nsw i64 %t, {step}").unwrap();
    writeln!(o, "  %main.more = icmp slt i64 %t.next, %main.end").unwrap();
    writeln!(o, "  br i1 %main.more, label %main, label %main.done\n").unwrap();

    // Fold the unrolled chains into chain 0, which the tail continues.
    writeln!(o, "main.done:").unwrap();
    writeln!(o, "  %t.m = phi i64 [ 0, %entry ], [ %t.next, %main ]").unwrap();
    for i in 0..rows {
        for v in 0..u {
            writeln!(
                o,
                "  %d.{i}.{v} = phi <16 x float> [ zeroinitializer, %entry ], [ %an.{i}.{v}, %main ]"
            )
            .unwrap();
        }
    }
    for i in 0..rows {
        let mut sum = format!("%d.{i}.0");
        for v in 1..u {
            writeln!(o, "  %f.{i}.{v} = fadd <16 x float> {sum}, %d.{i}.{v}").unwrap();
            sum = format!("%f.{i}.{v}");
        }
        writeln!(o, "  %f.{i} = fadd <16 x float> {sum}, zeroinitializer").unwrap();
    }
    writeln!(o, "  %tail.any = icmp slt i64 %t.m, %k").unwrap();
    writeln!(o, "  br i1 %tail.any, label %tail, label %end\n").unwrap();

    writeln!(o, "tail:").unwrap();
    writeln!(o, "  %q = phi i64 [ %t.m, %main.done ], [ %q.next, %tail ]").unwrap();
    for i in 0..rows {
        writeln!(
            o,
            "  %b.{i} = phi <16 x float> [ %f.{i}, %main.done ], [ %bn.{i}, %tail ]"
        )
        .unwrap();
    }
    writeln!(o, "  %q.left = sub i64 %k, %q").unwrap();
    lane_mask(o, "qm", "%q.left");
    weights(o, kind, "wq", "%q", Some("%qm"));
    for i in 0..rows {
        activations(o, &format!("xq.{i}"), i, "%q", Some("%qm"));
        writeln!(
            o,
            "  %bn.{i} = call <16 x float> @llvm.fma.v16f32(<16 x float> %xq.{i}, \
             <16 x float> %wq, <16 x float> %b.{i})"
        )
        .unwrap();
    }
    writeln!(o, "  %q.next = add nuw nsw i64 %q, 16").unwrap();
    writeln!(o, "  %tail.more = icmp slt i64 %q.next, %k").unwrap();
    writeln!(o, "  br i1 %tail.more, label %tail, label %end\n").unwrap();

    writeln!(o, "end:").unwrap();
    for i in 0..rows {
        writeln!(
            o,
            "  %z.{i} = phi <16 x float> [ %f.{i}, %main.done ], [ %bn.{i}, %tail ]"
        )
        .unwrap();
    }
    for i in 0..rows {
        writeln!(
            o,
            "  %h.{i} = call reassoc float @llvm.vector.reduce.fadd.v16f32(float -0.0, <16 x float> %z.{i})"
        )
        .unwrap();
        writeln!(o, "  %y.{i} = fmul float %h.{i}, %s").unwrap();
        writeln!(o, "  %o.off.{i} = mul i64 %n, {i}").unwrap();
        writeln!(
            o,
            "  %o.p.{i} = getelementptr inbounds float, float* %out, i64 %o.off.{i}"
        )
        .unwrap();
        writeln!(o, "  store float %y.{i}, float* %o.p.{i}, align 4").unwrap();
    }
    writeln!(o, "  ret void").unwrap();
    writeln!(o, "}}\n").unwrap();
}
