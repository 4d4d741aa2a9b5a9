//! The bodies of the fuzz targets (`fuzz/fuzz_targets/`), one function each, so that the
//! targets and the corpus replay test (`tests/fuzz_corpus.rs`) run the same code. Each takes
//! any bytes and must return, never panic, within bounded time and memory.

use crate::cli::report::{comparison_chart, parse_run, results_table};
use crate::cli::train::runfile::RunFile;
use encdecc_compiler::elab::{elaborate, ElabOptions};
use encdecc_dsl::load::{load_program, Program};
use encdecc_runtime::data::{Corpus, Order};
use encdecc_runtime::tokenizer::{HfTokenizer, Tokenizer, TokenizerConfig};
use encdecc_runtime::weights::{check_header, TensorFiles};
use std::path::Path;

/// The DSL parser on any text: a program or a diagnostic (rendered).
pub fn dsl_parse(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err((sources, d)) = load_text(text) {
            // Rendering reads spans back from the sources: it must not panic either.
            let _ = d.render(&sources);
        }
    }
}

thread_local! {
    /// The prelude, parsed once per thread (its AST shares `Rc`s: not `Sync`).
    static PRELUDE: Program = encdecc_dsl::load::load_prelude().expect("the bundled prelude loads");
}

/// `text` loaded as a program on the parsed prelude.
fn load_text(text: &str) -> Result<Program, (encdecc_dsl::SourceMap, encdecc_dsl::Diagnostic)> {
    PRELUDE.with(|p| encdecc_dsl::load::load_program_text_after(p, "fuzz.edl", text))
}

fn load_models() -> [Program; 2] {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let load = |f: &str| {
        load_program(&models.join(f)).unwrap_or_else(|(_, d)| panic!("{f}: {}", d.message))
    };
    [load("t5gemma.edl"), load("gemma2.edl")]
}

thread_local! {
    // Parsed once: the fuzzed part is the config, not the model files.
    static PROGRAMS: [Program; 2] = load_models();
}

/// A model built from any HF `config.json` text (and, after a `\n--\n` line, `--set`
/// overrides one per line): the first byte picks the model file (T5Gemma or Gemma 2).
pub fn config_json(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (json, sets) = text.split_once("\n--\n").unwrap_or((text, ""));
    let Ok(config) = serde_json::from_str::<serde_json::Value>(json) else {
        return;
    };
    let opts = ElabOptions {
        hf_config: Some(config),
        sets: sets.lines().map(str::to_string).collect(),
        ..ElabOptions::default()
    };
    PROGRAMS.with(|programs| {
        let program = &programs[usize::from(pick & 1)];
        if let Err(d) = elaborate(program, &opts) {
            let _ = d.render(&program.sources);
        }
    });
}

/// Elaboration of any program, with options from `# key: value` header lines as the
/// elaboration resource files write them (`# sets: K=V K=V`, `# preset:`, `# model:`,
/// `# entry:`; read by `ElabOptions::from_header`): a graph or a diagnostic.
pub fn elaborate_program(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(program) = load_text(text) else {
        return;
    };
    if let Err(d) = elaborate(&program, &ElabOptions::from_header(text)) {
        let _ = d.render(&program.sources);
    }
}

/// `encdecc report`'s reader of metrics.jsonl on any text, and its table and plot of what
/// it read.
pub fn metrics_jsonl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(run) = parse_run("fuzz".into(), Path::new("metrics.jsonl"), text) {
        let runs = [run];
        let _ = results_table(&runs);
        let _ = comparison_chart(&runs, "held-out loss").to_svg();
    }
}

const TEXT: &str =
    "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n\
And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n";

/// A run file of `encdecc train` on any text, and then what the trainer does with its data
/// section before the model is involved: the byte tokenizer it names, the corpus split, the
/// objective's batchers over a small bundled text, two batches, the held-out pass's first
/// batch, and a resume from the saved batcher state.
pub fn run_file(data: &[u8]) {
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
}

/// A safetensors file from any bytes: the header check, then, where the file opens, every
/// tensor read back (converted, raw, its dtype and file) and the finite-value scan.
pub fn safetensors(data: &[u8]) {
    let name = "fuzz.safetensors";
    let checked = check_header(name, data);
    let Ok(files) = TensorFiles::from_bytes(name, data.to_vec()) else {
        return;
    };
    // What opens passed the header check.
    assert!(
        checked.is_ok(),
        "from_bytes accepted what check_header rejected: {checked:?}"
    );
    let _ = files.check_finite();
    for t in files.names() {
        let _ = files.get(&t);
        let _ = files.raw(&t);
        let _ = files.dtype_of(&t);
        let _ = files.file_of(&t);
    }
    let _ = files.get("no such tensor");
}

/// An HF `tokenizer.json` from any text up to the first NUL byte; where it loads, the text
/// after the NUL is encoded and its ids decoded, and the bytes after it decoded as ids
/// (most of them out of the vocabulary for a small one).
///
/// On a thread of its own: the `tokenizers` crate (0.23.2) keeps a BPE model's encode cache
/// in a thread-local map keyed by model that outlives the model, so a long run on one thread
/// grows by about 1 KB an execution (to 2.7 GB in 6.8 million).
pub fn tokenizer_json(data: &[u8]) {
    std::thread::scope(|s| {
        if let Err(p) = s.spawn(|| tokenizer_json_here(data)).join() {
            std::panic::resume_unwind(p)
        }
    })
}

fn tokenizer_json_here(data: &[u8]) {
    let (json, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(tok) = HfTokenizer::from_text("tokenizer.json", json) else {
        return;
    };
    let _ = tok.special();
    let vocab = tok.vocab_size();
    let text = String::from_utf8_lossy(rest);
    if let Ok(ids) = tok.encode(&text) {
        assert!(
            ids.iter().all(|&i| i >= 0 && (i as usize) < vocab),
            "an id out of 0..{vocab}: {ids:?}"
        );
        let _ = tok.decode(&ids);
    }
    let raw: Vec<i64> = rest.iter().map(|&b| i64::from(b) - 8).collect();
    let _ = tok.decode(&raw);
}
