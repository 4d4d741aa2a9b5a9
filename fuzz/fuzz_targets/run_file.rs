//! A run file of `encdecc train` on any text, and then what the trainer does with its data
//! section before the model is involved: the byte tokenizer it names, the corpus split, the
//! objective's batchers over a small bundled text, two batches, the held-out pass's first
//! batch, and a resume from the saved batcher state. An error or batches, never a panic,
//! within bounded time and memory.
#![no_main]

use encdecc_cli::cli::train::runfile::RunFile;
use encdecc_runtime::data::{Corpus, Order};
use encdecc_runtime::tokenizer::{Tokenizer, TokenizerConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const TEXT: &str =
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n\
And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(run) = RunFile::parse(text, Path::new("run.json")) else {
        return;
    };
    if !matches!(run.tokenizer, TokenizerConfig::Byte { .. }) {
        return;
    }
    let Ok(tok) = Tokenizer::load(&run.tokenizer) else {
        return;
    };
    let Ok(corpus) = Corpus::from_text(TEXT, run.corpus.heldout_fraction, &tok) else {
        return;
    };
    if let Ok(mut b) = run.objective.batcher(corpus.train.clone(), tok.special()) {
        let _ = b.next_batch();
        let state = b.state();
        let _ = b.next_batch();
        let _ = b.restore(&state);
        let _ = b.epoch_batches();
        let _ = b.epoch_batch(0);
    }
    let heldout = run.objective.with_order(Order::Sequential);
    if let Ok(mut b) = heldout.batcher(corpus.heldout.clone(), tok.special()) {
        let _ = b.epoch_batch(0);
    }
});
