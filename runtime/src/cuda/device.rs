//! The GPU: finding the CUDA libraries, opening device 0, one stream, a cuBLAS handle.
//!
//! cudarc loads libcuda, libnvrtc and libcublas on first use and panics when one is
//! missing, so each is first loaded here with `libloading` under the same names cudarc
//! tries; an absent library or device becomes an error that says so. cudarc calls run
//! inside `catch_unwind` as a second guard.

use cudarc::cublas::sys::cublasHandle_t;
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: cublasHandle_t,
    pub name: String,
    /// Compute capability, as queried.
    pub cc: (i32, i32),
    pub sms: u32,
    /// `cuDriverGetVersion`, e.g. 13000.
    pub driver: i32,
    pub nvrtc: (i32, i32),
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: created in `open`, destroyed once here.
        unsafe {
            let _ = cudarc::cublas::result::destroy_handle(self.blas);
        }
    }
}

/// The CUDA libraries the backend needs, as cudarc names them, with what each is for.
const LIBRARIES: [(&str, &str); 3] = [
    ("cuda", "the CUDA driver"),
    ("nvrtc", "NVRTC, the CUDA runtime compiler"),
    ("cublas", "cuBLAS"),
];

/// Whether cudarc can load library `lib` ("cuda", "nvrtc", "cublas").
fn loads(lib: &str) -> bool {
    // SAFETY: loading a system library runs its initialisers; these are NVIDIA's own.
    cudarc::get_lib_name_candidates(lib)
        .iter()
        .any(|n| unsafe { libloading::Library::new(n) }.is_ok())
}

/// Checks that every library loads; the error names the first one that does not.
pub fn libraries_present() -> Result<(), String> {
    for (lib, what) in LIBRARIES {
        if !loads(lib) {
            return Err(format!(
                "no CUDA driver/GPU found: {what} (lib{lib}.so) could not be loaded; the CUDA backend needs an NVIDIA GPU with its driver, and NVRTC and cuBLAS on the library path (LD_LIBRARY_PATH)"
            ));
        }
    }
    Ok(())
}

pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("CUDA failed while {what}: {msg}"))
        }
    }
}

/// PTX of the CUDA C `text` from NVRTC with `options`.
pub fn compile_ptx(text: &str, options: Vec<String>) -> Result<String, String> {
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        ..Default::default()
    };
    guarded("compiling the CUDA kernels", || {
        cudarc::nvrtc::compile_ptx_with_opts(text, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("NVRTC rejected the generated kernels: {e:?}"))
    })
}

/// Compiles `text` for compute capability `cc` where NVRTC loads, GPU or not (a CUDA
/// toolkit, or PyTorch's `nvidia/cu13/lib` on LD_LIBRARY_PATH): `Ok(None)` without NVRTC.
/// Lets a machine without a GPU check that NVRTC accepts every kernel.
pub fn nvrtc_compile(text: &str, cc: (i32, i32)) -> Result<Option<String>, String> {
    if !loads("nvrtc") {
        return Ok(None);
    }
    compile_ptx(
        text,
        vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)],
    )
    .map(Some)
}

/// Opens GPU 0.
pub fn open() -> Result<Device, String> {
    libraries_present()?;
    guarded("opening the GPU", || {
        let count =
            CudaContext::device_count().map_err(|e| format!("no CUDA driver/GPU found: {e}"))?;
        if count < 1 {
            return Err("no CUDA driver/GPU found: the driver reports no devices".into());
        }
        let ctx = CudaContext::new(0).map_err(|e| format!("cannot open GPU 0: {e}"))?;
        // One stream: ordering is the stream's; cudarc's per-buffer events are not needed.
        // SAFETY: no buffer exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let name = ctx.name().map_err(|e| e.to_string())?;
        let cc = ctx.compute_capability().map_err(|e| e.to_string())?;
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| e.to_string())? as u32;
        let mut driver = 0;
        // SAFETY: out-parameters.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
            .result()
            .map_err(|e| e.to_string())?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: out-parameters.
        unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("{e:?}"))?;
        let blas = cudarc::cublas::result::create_handle().map_err(|e| format!("cuBLAS: {e:?}"))?;
        // SAFETY: the handle and stream are live.
        unsafe { cudarc::cublas::result::set_stream(blas, stream.cu_stream() as _) }
            .map_err(|e| format!("cuBLAS: {e:?}"))?;
        Ok(Device {
            ctx,
            stream,
            blas,
            name,
            cc,
            sms,
            driver,
            nvrtc: (major, minor),
        })
    })
}
