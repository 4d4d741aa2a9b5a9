//! Tests that need what a machine may lack (a GPU, g++, NVRTC), for the test targets with
//! `harness = false` (libtest-mimic): such a test is registered with its requirements and
//! reported as *ignored* where one is missing, the reason in its kind (`test [skip: no CUDA]
//! gpu_matches_reference_on_fixtures ... ignored`), rather than returning early and
//! passing. With `ENCDECC_REQUIRE_GPU=1` (scripts/gpu-check.sh) a missing GPU, g++ or
//! NVRTC fails the test instead, the reason as its message.

use libtest_mimic::{Arguments, Failed, Trial};
use std::process::Command;

/// What a test needs of the machine.
#[derive(Clone, Copy, Debug)]
pub enum Requirement {
    /// The CUDA libraries and a GPU (`cuda::libraries_present`).
    Cuda,
    /// *No* CUDA: a test of the error without a GPU. Skipped where CUDA is present, also
    /// under `ENCDECC_REQUIRE_GPU=1` (a GPU machine is where it cannot run).
    NoCuda,
    /// A C++ compiler (`g++`), for the type check and the emulator of CUDA kernels.
    Gxx,
    /// NVRTC loadable from the library path (a CUDA toolkit or PyTorch's wheels), GPU or not.
    Nvrtc,
}

impl Requirement {
    /// Why it is not met here (a short reason, then the details), or `None`.
    pub fn missing(&self) -> Option<(&'static str, String)> {
        match self {
            Requirement::Cuda => encdecc_runtime::cuda::libraries_present()
                .err()
                .map(|e| ("no CUDA", e)),
            Requirement::NoCuda => encdecc_runtime::cuda::libraries_present().is_ok().then(|| {
                (
                    "CUDA present",
                    "CUDA is present, so `--backend cuda` runs".into(),
                )
            }),
            Requirement::Gxx => Command::new("g++")
                .arg("--version")
                .output()
                .is_err()
                .then(|| {
                    (
                        "no g++",
                        "no C++ compiler (g++) to type-check or emulate the CUDA kernels".into(),
                    )
                }),
            Requirement::Nvrtc => {
                matches!(encdecc_runtime::cuda::nvrtc_compile("", (9, 0)), Ok(None)).then(|| {
                    (
                        "no NVRTC",
                        "NVRTC not found (no CUDA toolkit on the library path)".into(),
                    )
                })
            }
        }
    }

    /// Whether `ENCDECC_REQUIRE_GPU=1` makes it a failure to lack this.
    fn required_on_gpu_machines(&self) -> bool {
        !matches!(self, Requirement::NoCuda)
    }
}

/// `ENCDECC_REQUIRE_GPU=1`: a GPU machine, where a missing GPU, g++ or NVRTC is a failure.
pub fn gpu_required() -> bool {
    std::env::var("ENCDECC_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// A test that always runs.
pub fn test(name: &str, f: fn()) -> Trial {
    Trial::test(name, move || {
        f();
        Ok(())
    })
}

/// A test that runs where `needs` are met: ignored elsewhere, the first missing one's reason
/// as its kind (`--list`, the output, name filters); failed instead, the reason as its
/// message, under `ENCDECC_REQUIRE_GPU=1` (but for `NoCuda`).
pub fn needs(needs: &[Requirement], name: &str, f: fn()) -> Trial {
    let Some((r, (short, why))) = needs.iter().find_map(|r| r.missing().map(|m| (r, m))) else {
        return test(name, f);
    };
    if gpu_required() && r.required_on_gpu_machines() {
        let why = format!("ENCDECC_REQUIRE_GPU=1, but {why}");
        return Trial::test(name, move || Err(Failed::from(why)));
    }
    // Run all the same (`--include-ignored`), it fails with the reason rather than passing.
    Trial::test(name, move || Err(Failed::from(why)))
        .with_kind(format!("skip: {short}"))
        .with_ignored_flag(true)
}

/// Runs `trials` as `cargo test` asks (filters, `--list`, `--ignored`, threads) and exits.
pub fn run(trials: Vec<Trial>) -> ! {
    libtest_mimic::run(&Arguments::from_args(), trials).exit()
}
