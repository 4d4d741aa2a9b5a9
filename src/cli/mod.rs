//! Command-line interface: argument definitions and dispatch. Each command lives in its
//! own file and returns a rendered error message on failure.

mod adapt;
mod bench;
mod common;
mod compile;
mod generate;
mod grad;
mod plot;
mod quantize;
pub mod report;
mod run;
mod sweep;
pub mod train;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "encdecc",
    version,
    about = "A compiler and runtime for encoder-decoder Transformers"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, elaborate and check a model; print its summary, IR, Graphviz or parameters.
    Compile(compile::CompileArgs),
    /// A T5Gemma checkpoint adapted from Gemma 2 ones by a model file's `adapt` rules.
    Adapt(adapt::AdaptArgs),
    /// Run a model's forward pass on HF weights and inputs; write the outputs as safetensors.
    Run(run::RunArgs),
    /// Time a model on random (or HF) weights: median latency, tokens/s, GFLOP/s.
    Bench(bench::BenchArgs),
    /// The loss and its gradient w.r.t. every parameter, under HF names (safetensors).
    Grad(grad::GradArgs),
    /// Train a model as a run file says: objective, teacher, data, schedule, phases, checkpoints.
    Train(train::TrainArgs),
    /// Compare training runs: a table of held-out losses and a plot.
    Report(report::ReportArgs),
    /// Generate with a KV cache (greedy or sampled), as HF `generate`; write `sequences`.
    Generate(generate::GenerateArgs),
    /// Measure model variants over a grid of config overrides: CSV, JSON and SVG plots.
    Sweep(sweep::SweepArgs),
    /// Rewrite an HF checkpoint with its matmul weights in int8 (per-row scales) or bf16.
    Quantize(quantize::QuantizeArgs),
}

pub fn dispatch(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Adapt(a) => adapt::adapt(a),
        Command::Compile(a) => compile::compile(a),
        Command::Run(a) => run::run(a),
        Command::Bench(a) => bench::bench(a),
        Command::Grad(a) => grad::grad(a),
        Command::Train(a) => train::train(a),
        Command::Report(a) => report::report(a),
        Command::Generate(a) => generate::generate(a),
        Command::Sweep(a) => sweep::sweep(a),
        Command::Quantize(a) => quantize::quantize(a),
    }
}
