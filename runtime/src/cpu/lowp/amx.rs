//! Whether this process may run the AMX micro-kernel: the CPU has AMX-TILE and AMX-BF16
//! (CPUID leaf 7, EDX bits 24 and 22) and Linux granted the process the tile data state.
//!
//! Linux (5.16 on) keeps the 8 KB of tile data out of every thread's xsave area until the
//! process asks for it with `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`; a tile
//! instruction before that raises SIGILL. The permission is the process's, threads made
//! before or after included; the kernel grows a thread's buffer on its first tile
//! instruction (the pool's workers run the kernel in the tests, on two threads).

use std::sync::OnceLock;

/// Whether the AMX kernel may run here; asks Linux for the permission on the first call.
pub fn permitted() -> bool {
    static PERMITTED: OnceLock<bool> = OnceLock::new();
    *PERMITTED.get_or_init(|| cpu_has_amx_bf16() && request())
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_bf16() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // Leaf 7 only where leaf 0 says it exists.
    let max = __cpuid_count(0, 0).eax;
    if max < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_amx_bf16() -> bool {
    false
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn request() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: the request changes only which xsave features this process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn request() -> bool {
    false
}
