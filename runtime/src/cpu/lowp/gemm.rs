//! The large-`m` route: `x` packed once into A panels (in parallel), then the output cut
//! into blocks of `MC` rows × `NC` columns, one pool part each. A part packs its columns'
//! B panels for the whole k (`NC · k` bf16, ≤ a few hundred KB: L2), then for each k-block
//! of `KC` pairs runs the micro-kernel over its tiles, columns outer and rows inner, so a
//! B micro-panel (`KC · nr` pairs, 16 KB) stays in L1 while the rows' A micro-panels
//! stream from L2 (the part's A block is `MC · KC` pairs, ≤ 512 KB).
//!
//! The AMX kernel takes the same blocks with its own k-block (`AMX_KC`), k padded to a
//! multiple of 16 pairs and A grouped by 16 pairs (`pack`); a part configures the tiles
//! once, before its first call, and releases them after its last.

use super::{pack, WeightRef};
use crate::cpu::gemv::OutPtr;
use crate::cpu::pool;
use encdecc_codegen::lowp::{AmxKernel, GemmKernel, GemmVariant, Tile};
use std::cell::RefCell;

/// k pairs per block (see the module comment).
const KC: usize = 128;
/// k pairs per block for AMX, a multiple of 16. Larger than `KC`: a full tile's C goes
/// through the tiles (loaded from `C` and stored back) once per k-block. At
/// 1024×1024×1024 on 2 threads 512 ran at ~800 GFLOP/s, 256 at ~700 and 128 at ~570 (one
/// run each on a machine shared with other work, so ±20%), though a 64 KB B micro-panel
/// no longer fits L1 (48 KB): the tile loads stream it from L2 fast enough.
const AMX_KC: usize = 512;
/// Output columns per part: a multiple of every tile's `nr` and of 16 (two threads never
/// write one cache line of `out`).
const NC: usize = 256;
/// The most A panels (of `mr` rows) per part.
const MAX_PANELS: usize = 64;

thread_local! {
    /// A part's B panels, kept between calls so that a thread allocates them once.
    static B_PANELS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// The packed A panels, written by several threads at disjoint panels.
#[derive(Clone, Copy)]
struct APtr(*mut u32);
// SAFETY: each part writes its own panels, and `pool::run` waits for all of them.
unsafe impl Send for APtr {}
unsafe impl Sync for APtr {}

impl APtr {
    fn get(self) -> *mut u32 {
        self.0
    }
}

/// `amx` is the AMX kernel's calls when `kernel` is it: each part configures the tiles
/// before its first call and releases them after its last.
pub(super) fn matmul_xwt(
    kernel: GemmKernel,
    amx: Option<AmxKernel>,
    x: &[f32],
    w: WeightRef,
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    threads: usize,
) {
    let Tile { mr, nr } = kernel.tile;
    debug_assert!(NC.is_multiple_of(nr) && NC.is_multiple_of(16));
    // AMX steps (and groups A by) 16 pairs; the zmm kernels one.
    let group = match kernel.variant {
        GemmVariant::Amx => 16,
        _ => 1,
    };
    let kp = k.div_ceil(2).next_multiple_of(group);
    let kc_max = match kernel.variant {
        GemmVariant::Amx => AMX_KC,
        _ => KC,
    };
    let panel = kp * mr;
    let a_panels = m.div_ceil(mr);
    let mut a = vec![0u32; a_panels * panel];
    let parallel = threads > 1 && pool::width() > 1 && m * n * k >= 1 << 18;
    let run = |parts: usize, f: &(dyn Fn(usize) + Sync)| {
        if parallel {
            pool::run(parts, f)
        } else {
            (0..parts).for_each(f)
        }
    };
    let ap = APtr(a.as_mut_ptr());
    run(a_panels, &|p| {
        // SAFETY: panel `p` is `a[p·panel .. (p+1)·panel]`, written by this part only.
        let dst = unsafe { std::slice::from_raw_parts_mut(ap.get().add(p * panel), panel) };
        pack::a_panel(x, (m, k, kp), (mr, group), p * mr, dst);
    });

    // Row blocks: as few as the cache allows, more while there are fewer parts than
    // twice the threads (a part per thread and one to even out).
    let col_blocks = n.div_ceil(NC);
    let mut row_blocks = a_panels.div_ceil(MAX_PANELS);
    while parallel && col_blocks * row_blocks < 2 * threads && row_blocks < a_panels {
        row_blocks = (2 * row_blocks).min(a_panels);
    }
    let per_block = a_panels.div_ceil(row_blocks);
    let row_blocks = a_panels.div_ceil(per_block);
    let scales = match w {
        WeightRef::Int8 { scales, .. } => Some(scales),
        WeightRef::Bf16(_) => None,
    };
    let a = &a;
    let dst = OutPtr(out.as_mut_ptr());
    run(col_blocks * row_blocks, &|part| {
        let (cb, rb) = (part / row_blocks, part % row_blocks);
        let (j0, cols) = (cb * NC, NC.min(n - cb * NC));
        let panels = (rb * per_block)..((rb + 1) * per_block).min(a_panels);
        B_PANELS.with(|b| {
            let mut b = b.borrow_mut();
            let len = cols.div_ceil(nr) * kp * nr;
            if b.len() < len {
                b.resize(len, 0);
            }
            pack::b_panels(w, (k, kp), nr, (j0, cols), &mut b);
            if let Some(amx) = amx {
                // SAFETY: `mod.rs` passes AMX only where the CPU has it and Linux permits it.
                unsafe { (amx.configure)() };
            }
            for p0 in (0..kp).step_by(kc_max) {
                let kc = kc_max.min(kp - p0);
                for jp in 0..cols.div_ceil(nr) {
                    let j = j0 + jp * nr;
                    let bp = &b[jp * kp * nr + p0 * nr..];
                    let s = scales.map_or(std::ptr::null(), |s| s[j..].as_ptr());
                    for ip in panels.clone() {
                        let i = ip * mr;
                        let ap = &a[ip * panel + p0 * mr..];
                        // SAFETY: the panels hold `kc` pairs from `p0` (`ap`, `bp` reach
                        // to their panels' ends); the kernel writes rows `i..i + rows`
                        // and columns `j..j + cols` of `out` (`rows · n` ≤ its length),
                        // a tile no other part writes.
                        unsafe {
                            (kernel.f)(
                                kc as i64,
                                ap.as_ptr(),
                                bp.as_ptr(),
                                dst.get().add(i * n + j),
                                n as i64,
                                mr.min(m - i) as i64,
                                nr.min(n - j) as i64,
                                (p0 > 0) as i32,
                                s,
                            )
                        };
                    }
                }
            }
            if let Some(amx) = amx {
                // SAFETY: as `configure` above.
                unsafe { (amx.release)() };
            }
        });
    });
}
