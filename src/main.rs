//! `encdecc`: compile and run encoder-decoder Transformers written in `.edl`.

use clap::Parser;
use encdecc_cli::cli;

fn main() {
    let args = cli::Cli::parse();
    if let Err(e) = cli::dispatch(args) {
        eprint!("{e}");
        if !e.ends_with('\n') {
            eprintln!();
        }
        std::process::exit(1);
    }
}
