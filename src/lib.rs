//! The `encdecc` command line as a library: the binary (`src/main.rs`) is its `main`, and
//! the fuzz targets (`fuzz/`) call the readers of user files it owns (run files, metrics).

pub mod cli;
pub mod fuzz_entry;
