//! The AMX bf16 GEMM micro-kernel: a 32 × 32 tile of `C` as 2 × 2 AMX tiles of 16 × 16
//! f32, accumulated by `tdpbf16ps` from two A tiles (16 rows × 16 pairs) and two B tiles
//! (16 pairs × 16 columns) per step of 16 k-pairs.
//!
//! The tile registers are named by immediates (LLVM 14's non-`.internal` intrinsics), not
//! allocated by LLVM: C in tiles 0–3, A in 4–5, B in 6–7. The kernel expects the calling
//! thread's tiles configured by `configure` (every tile 16 rows × 64 bytes), and the
//! caller to `release` them after its last call: `ldtilecfg` took a quarter of the time
//! of a 32 × 32 × 512 call when the kernel ran it itself.
//!
//! Operands (see `super::GemmFn`), different from the zmm kernels' A panel because a tile
//! row must be contiguous: `kp` is a multiple of 16 and
//! - `a` holds `kp / 16` groups of 32 rows × 16 pairs (`[kp/16][32][16]` u32): a group's
//!   rows 0–15 and 16–31 are the two A tiles, 64 bytes apart per row;
//! - `b` is the zmm kernels' B panel for `nr = 32` (`[kp][32]` u32): rows of 128 bytes,
//!   each row a k-pair of 32 columns, so columns 0–15 and 16–31 are the two B tiles in
//!   VNNI (pair-interleaved) layout, 128 bytes apart per row.
//!
//! A full tile of bf16 weights loads and stores its C tiles in `C` itself; edge tiles and
//! scaled (int8) ones go through a stack scratch block to the common masked store
//! (`super::store`), which handles edges, scales and accumulation.

use super::store::store;
use super::Tile;
use std::fmt::Write;

/// A tile load in the k loop: tile, base pointer, byte offset, row stride in bytes.
type Load = (u8, &'static str, &'static str, u32);

/// The tile this kernel computes.
pub const TILE: Tile = Tile { mr: 32, nr: 32 };

/// The symbol of the micro-kernel.
pub fn symbol() -> String {
    format!("encdecc.lowp.gemm.amx.{}x{}", TILE.mr, TILE.nr)
}

/// The symbols of the functions that load and release the tile configuration.
pub const CONFIGURE: &str = "encdecc.lowp.amx.configure";
pub const RELEASE: &str = "encdecc.lowp.amx.release";

/// The 64-byte tile configuration: palette 1, then every tile 16 rows × 64 bytes
/// (`colsb` as u16 at bytes 16–47, `rows` at bytes 48–63).
fn config() -> String {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    for t in 0..8 {
        bytes[16 + 2 * t] = 64;
        bytes[48 + t] = 16;
    }
    let text: String = bytes.iter().map(|b| format!("\\{b:02X}")).collect();
    let mut o = format!(
        "@encdecc.lowp.amx.config = private unnamed_addr constant [64 x i8] c\"{text}\", align 64\n\n"
    );
    writeln!(o, "define void @\"{CONFIGURE}\"() #0 {{").unwrap();
    writeln!(
        o,
        "  %cfg = getelementptr inbounds [64 x i8], [64 x i8]* @encdecc.lowp.amx.config, i64 0, i64 0"
    )
    .unwrap();
    writeln!(o, "  call void @llvm.x86.ldtilecfg(i8* %cfg)").unwrap();
    writeln!(o, "  ret void\n}}\n").unwrap();
    writeln!(o, "define void @\"{RELEASE}\"() #0 {{").unwrap();
    writeln!(o, "  call void @llvm.x86.tilerelease()").unwrap();
    writeln!(o, "  ret void\n}}\n").unwrap();
    o
}

/// Emits a load (`tileloadd64`) or store (`tilestored64`) of the four C tiles at `base`
/// (an `i8*`), `stride` (an i64 operand) bytes a row; `tag` keeps the names apart.
fn c_tiles(o: &mut String, op: &str, base: &str, stride: &str, tag: &str) {
    writeln!(o, "  %{tag}.half = mul i64 {stride}, 16").unwrap();
    writeln!(
        o,
        "  %{tag}.lo = getelementptr inbounds i8, i8* {base}, i64 %{tag}.half"
    )
    .unwrap();
    for i in 0..2 {
        for j in 0..2 {
            let t = 2 * i + j;
            let row = if i == 0 {
                base.to_string()
            } else {
                format!("%{tag}.lo")
            };
            writeln!(
                o,
                "  %{tag}.{t} = getelementptr inbounds i8, i8* {row}, i64 {}",
                64 * j
            )
            .unwrap();
            writeln!(
                o,
                "  call void @llvm.x86.{op}(i8 {t}, i8* %{tag}.{t}, i64 {stride})"
            )
            .unwrap();
        }
    }
}

/// The configuration constant, `configure`, `release` and the micro-kernel.
///
/// A full tile without scales (the bf16 weights' interior tiles) goes straight between
/// the C tiles and `C`: loaded from `C` when accumulating, stored to it at the end. Every
/// other tile starts from zero and ends in the scratch block and the masked store.
pub fn function() -> String {
    let mut o = config();
    writeln!(
        o,
        "define void @\"{}\"(i64 %kp, i32* noalias nocapture readonly %a, i32* noalias nocapture readonly %b, \
         float* noalias nocapture %c, i64 %ldc, i64 %rows, i64 %cols, i32 %accumulate, \
         float* noalias nocapture readonly %scales) #0 {{",
        symbol()
    )
    .unwrap();
    writeln!(o, "entry:").unwrap();
    writeln!(o, "  %scratch = alloca [1024 x float], align 64").unwrap();
    writeln!(o, "  %c8 = bitcast float* %c to i8*").unwrap();
    writeln!(o, "  %ldc.bytes = mul i64 %ldc, 4").unwrap();
    writeln!(o, "  %full.r = icmp sge i64 %rows, {}", TILE.mr).unwrap();
    writeln!(o, "  %full.c = icmp sge i64 %cols, {}", TILE.nr).unwrap();
    writeln!(o, "  %unscaled = icmp eq float* %scales, null").unwrap();
    writeln!(o, "  %full = and i1 %full.r, %full.c").unwrap();
    writeln!(o, "  %direct = and i1 %full, %unscaled").unwrap();
    writeln!(o, "  %acc = icmp ne i32 %accumulate, 0").unwrap();
    writeln!(o, "  %from.c = and i1 %direct, %acc").unwrap();
    writeln!(o, "  br i1 %from.c, label %init.c, label %init.zero\n").unwrap();
    writeln!(o, "init.c:").unwrap();
    c_tiles(&mut o, "tileloadd64", "%c8", "%ldc.bytes", "ic");
    writeln!(o, "  br label %k\n").unwrap();
    writeln!(o, "init.zero:").unwrap();
    for t in 0..4 {
        writeln!(o, "  call void @llvm.x86.tilezero(i8 {t})").unwrap();
    }
    writeln!(o, "  br label %k\n").unwrap();
    writeln!(o, "k:").unwrap();
    writeln!(o, "  %a8 = bitcast i32* %a to i8*").unwrap();
    writeln!(o, "  %b8 = bitcast i32* %b to i8*").unwrap();
    writeln!(o, "  %any = icmp sgt i64 %kp, 0").unwrap();
    writeln!(o, "  br i1 %any, label %loop, label %done\n").unwrap();

    // The k loop: 16 pairs a step, 128 bytes of each panel (`p · 32` u32).
    writeln!(o, "loop:").unwrap();
    writeln!(o, "  %p = phi i64 [ 0, %k ], [ %p.next, %loop ]").unwrap();
    writeln!(o, "  %off = mul i64 %p, 128").unwrap();
    writeln!(o, "  %off.a1 = add i64 %off, 1024").unwrap();
    writeln!(o, "  %off.b1 = add i64 %off, 64").unwrap();
    // Each load just before the first product that reads it: a tile load waits for the
    // products still reading its tile, and with all four loads first the profile put a
    // third of the kernel's time on the first (the interleaved order measured 3–8% faster
    // on a shared machine, L1- and L2-resident panels).
    // C tile (row half i, column half j) is tile 2i + j, from A tile 4 + i and B tile 6 + j.
    let steps: [(&[Load], (u8, u8)); 4] = [
        (&[(4, "a8", "off", 64), (6, "b8", "off", 128)], (0, 0)),
        (&[(7, "b8", "off.b1", 128)], (0, 1)),
        (&[(5, "a8", "off.a1", 64)], (1, 0)),
        (&[], (1, 1)),
    ];
    for (loads, (i, j)) in steps {
        for &(t, base, off, stride) in loads {
            writeln!(
                o,
                "  %t{t}.p = getelementptr inbounds i8, i8* %{base}, i64 %{off}"
            )
            .unwrap();
            writeln!(
                o,
                "  call void @llvm.x86.tileloadd64(i8 {t}, i8* %t{t}.p, i64 {stride})"
            )
            .unwrap();
        }
        writeln!(
            o,
            "  call void @llvm.x86.tdpbf16ps(i8 {}, i8 {}, i8 {})",
            2 * i + j,
            4 + i,
            6 + j
        )
        .unwrap();
    }
    writeln!(o, "  %p.next = add nuw nsw i64 %p, 16").unwrap();
    writeln!(o, "  %more = icmp slt i64 %p.next, %kp").unwrap();
    writeln!(o, "  br i1 %more, label %loop, label %done\n").unwrap();

    writeln!(o, "done:").unwrap();
    writeln!(o, "  br i1 %direct, label %to.c, label %to.scratch\n").unwrap();
    writeln!(o, "to.c:").unwrap();
    c_tiles(&mut o, "tilestored64", "%c8", "%ldc.bytes", "oc");
    writeln!(o, "  ret void\n").unwrap();

    // Edges and scales: the C tiles to the scratch block (32 rows of 128 bytes), then the
    // common store.
    writeln!(o, "to.scratch:").unwrap();
    writeln!(o, "  %s8 = bitcast [1024 x float]* %scratch to i8*").unwrap();
    c_tiles(&mut o, "tilestored64", "%s8", "128", "os");
    writeln!(
        o,
        "  %sums = getelementptr inbounds [1024 x float], [1024 x float]* %scratch, i64 0, i64 0"
    )
    .unwrap();
    store(&mut o, TILE.mr, TILE.nr / 16, Some("%sums"));
    o
}
