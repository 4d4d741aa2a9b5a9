//! The safetensors loader never panics: `TensorFiles::open` on arbitrary bytes, on
//! truncations and byte flips of a real checkpoint, and on synthetic headers returns `Ok`
//! or `Err`; when it opens, `names`, `get`, `dtype_of` and `load_params` return too.

use encdecc_compiler::elab::{elaborate, ElabOptions, ParamInfo};
use encdecc_dsl::load_program;
use encdecc_runtime::weights::{load_params, TensorFiles};
use proptest::prelude::*;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hf/gemma2-tiny")
}

/// The real checkpoint every mutation starts from.
fn original() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(fixture_dir().join("model.safetensors")).unwrap())
}

/// Length of the 8-byte length prefix plus the JSON header of the real checkpoint.
fn header_end() -> usize {
    let b = original();
    8 + u64::from_le_bytes(b[..8].try_into().unwrap()) as usize
}

/// The parameters of models/gemma2.edl elaborated for the fixture's config.
fn params() -> &'static [ParamInfo] {
    static PARAMS: OnceLock<Vec<ParamInfo>> = OnceLock::new();
    PARAMS.get_or_init(|| {
        let edl = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/gemma2.edl");
        let prog = load_program(&edl).unwrap_or_else(|(s, d)| panic!("{}", d.render(&s)));
        let cfg = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir().join("config.json")).unwrap(),
        )
        .unwrap();
        let opts = ElabOptions {
            hf_config: Some(cfg),
            inputs: Some(vec!["input_ids".into(), "attention_mask".into()]),
            ..ElabOptions::default()
        };
        let e = elaborate(&prog, &opts).unwrap_or_else(|d| panic!("{}", d.render(&prog.sources)));
        assert!(!e.params.is_empty());
        e.params
    })
}

/// Writes `bytes` to a temp file and drives every reader over it. Panics propagate and fail
/// the property; `Err`s are fine but must say something.
fn exercise(bytes: &[u8]) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f.flush().unwrap();
    let files = match TensorFiles::open(f.path()) {
        Ok(files) => files,
        Err(e) => {
            assert!(
                e.contains(&f.path().display().to_string()),
                "error names the file: {e}"
            );
            return;
        }
    };
    for name in files.names() {
        if let Ok(t) = files.get(&name) {
            let t = t.expect("a listed tensor is found");
            assert_eq!(t.numel(), t.to_f64().len(), "{name}: shape and data agree");
        }
        assert!(files.dtype_of(&name).is_some());
    }
    assert!(matches!(files.get("no.such.tensor"), Ok(None)));
    assert!(files.dtype_of("no.such.tensor").is_none());

    if let Err(e) = load_params(&files, params()) {
        assert!(!e.is_empty());
    }
}

#[test]
fn the_real_checkpoint_loads() {
    let files = TensorFiles::open(&fixture_dir().join("model.safetensors")).unwrap();
    let (loaded, unexpected) = load_params(&files, params()).unwrap();
    assert_eq!(loaded.len(), params().len());
    assert!(unexpected.is_empty(), "{unexpected:?}");
    exercise(original());
}

/// A safetensors file from a JSON header (as text) and a data section.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

const DTYPES: &[(&str, usize)] = &[
    ("F32", 4),
    ("BF16", 2),
    ("F16", 2),
    ("I64", 8),
    ("I32", 4),
    ("U8", 1),
    ("BOOL", 1),
    ("F64", 8),
    ("I8", 1),
    ("F8_E4M3", 1),
    ("Q4", 1),
];

/// One tensor entry of a synthetic header: a name (mostly a real parameter's), a dtype, a
/// shape, and whether its offsets are consistent with them.
fn entry() -> impl Strategy<Value = (String, usize, Vec<usize>, bool)> {
    let names = params().iter().map(|p| p.ckpt.clone()).collect::<Vec<_>>();
    (
        prop_oneof![
            4 => proptest::sample::select(names),
            1 => "[a-z.]{0,12}",
        ],
        // Mostly the float dtypes, which reach the shape checks of load_params.
        prop_oneof![3 => 0usize..3, 1 => 0..DTYPES.len()],
        proptest::collection::vec(
            prop_oneof![8 => 0usize..70, 4 => Just(64usize), 1 => Just(usize::MAX / 2)],
            0..4,
        ),
        proptest::bool::weighted(0.9),
    )
}

/// A header built from entries, with data laid out back to back (or not, where an entry's
/// offsets are inconsistent), plus the data section.
fn synthetic(entries: &[(String, usize, Vec<usize>, bool)], extra: usize) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    let mut at = 0usize;
    for (name, dt, shape, consistent) in entries {
        let (dtype, size) = DTYPES[*dt];
        let n = shape
            .iter()
            .try_fold(size, |a, &d| a.checked_mul(d))
            .unwrap_or(usize::MAX);
        let len = if *consistent && n < 1 << 20 { n } else { 7 };
        obj.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [at, at + len]}),
        );
        at += len;
    }
    let header = serde_json::Value::Object(obj).to_string();
    with_header(&header, &vec![0x3f; at + extra])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        exercise(&bytes);
    }

    /// A plausible length prefix followed by arbitrary text, so the JSON parser is reached.
    #[test]
    fn arbitrary_header(text in "[ -~]{0,80}", data in proptest::collection::vec(any::<u8>(), 0..64)) {
        exercise(&with_header(&text, &data));
    }

    #[test]
    fn truncations(cut in prop_oneof![0..header_end() + 16, 0..original().len()]) {
        exercise(&original()[..cut]);
    }

    /// Byte flips, half of them inside the length prefix and JSON header.
    #[test]
    fn byte_flips(flips in proptest::collection::vec(
        (prop_oneof![0..header_end(), 0..original().len()], 1u8..=255),
        1..6,
    )) {
        let mut b = original().to_vec();
        for (at, x) in flips {
            b[at] ^= x;
        }
        exercise(&b);
    }

    /// Well-formed headers with random dtypes, shapes and offsets, under real parameter names.
    #[test]
    fn synthetic_headers(entries in proptest::collection::vec(entry(), 0..5), extra in 0usize..3) {
        exercise(&synthetic(&entries, extra));
    }
}
