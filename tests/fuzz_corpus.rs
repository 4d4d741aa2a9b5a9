//! Every seed of the fuzz corpora (`fuzz/corpus/<target>/`, and whatever else a fuzzing run
//! left there) through the same function as its cargo-fuzz target (`encdecc_cli::fuzz_entry`):
//! none may panic. A smoke test of the fuzz targets that needs neither nightly nor cargo-fuzz.

use encdecc_cli::fuzz_entry;
use std::path::Path;

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        if std::panic::catch_unwind(|| entry(&data)).is_err() {
            panic!("fuzz target {target} panicked on {}", f.display());
        }
    }
}

#[test]
fn safetensors_seeds() {
    replay("safetensors", fuzz_entry::safetensors);
}

#[test]
fn tokenizer_json_seeds() {
    replay("tokenizer_json", fuzz_entry::tokenizer_json);
}

#[test]
fn config_json_seeds() {
    replay("config_json", fuzz_entry::config_json);
}

#[test]
fn dsl_parse_seeds() {
    replay("dsl_parse", fuzz_entry::dsl_parse);
}

#[test]
fn elaborate_seeds() {
    replay("elaborate", fuzz_entry::elaborate_program);
}

#[test]
fn metrics_jsonl_seeds() {
    replay("metrics_jsonl", fuzz_entry::metrics_jsonl);
}

#[test]
fn run_file_seeds() {
    replay("run_file", fuzz_entry::run_file);
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
        .join(name);
    std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
}

/// The valid seeds are valid: the fuzzer starts from files that get past the parsers.
#[test]
fn valid_seeds_open() {
    for name in [
        "adapt_tiny.safetensors",
        "balanced_inputs.safetensors",
        "t5g_mha.safetensors",
        "nan_bf16.safetensors",
        "odd_dtypes.safetensors",
        "t5g_odd.safetensors",
    ] {
        let files =
            encdecc_runtime::weights::TensorFiles::from_bytes(name, seed("safetensors", name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!files.names().is_empty(), "{name}");
    }
    for name in [
        "bpe.json",
        "bytelevel_bpe.json",
        "sentencepiece_bpe.json",
        "unigram.json",
        "wordlevel.json",
        "wordpiece.json",
    ] {
        let data = seed("tokenizer_json", name);
        let (json, text) = data.split_at(data.iter().position(|&b| b == 0).expect("a NUL"));
        let tok = encdecc_runtime::tokenizer::HfTokenizer::from_text(
            name,
            std::str::from_utf8(json).expect("UTF-8"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ids = tok
            .encode(std::str::from_utf8(&text[1..]).expect("UTF-8"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!ids.is_empty(), "{name}");
    }
}
