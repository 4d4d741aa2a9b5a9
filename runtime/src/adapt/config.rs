//! The T5Gemma `config.json` of an adapted model, derived from the Gemma 2 source configs:
//! each stack's sub-config is its source's Gemma 2 config with the fields HF's
//! `T5GemmaModuleConfig` has (laid out as transformers 5.x saves it), the top level as
//! HF's `T5GemmaConfig` derives it from the decoder.

use serde_json::{json, Map, Value};
use std::path::Path;

/// A Gemma 2 `config.json`, with the directory it came from (for messages).
pub struct SourceConfig {
    pub origin: String,
    pub json: Value,
}

/// Reads `DIR/config.json` and checks that it is a Gemma 2 config.
pub fn read_gemma2_config(dir: &Path, flag: &str) -> Result<SourceConfig, String> {
    if !dir.exists() {
        return Err(format!(
            "{flag} `{}` does not exist (expected a Gemma 2 directory with config.json and model.safetensors)",
            dir.display()
        ));
    }
    if !dir.is_dir() {
        return Err(format!(
            "{flag} `{}` is not a directory (expected a Gemma 2 directory with config.json and model.safetensors)",
            dir.display()
        ));
    }
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{flag}: cannot read `{}`: {e}", path.display()))?;
    parse_gemma2_config(&path.display().to_string(), flag, &text)
}

/// Parses the text of a Gemma 2 `config.json` (`path` and the `flag` it came from name it
/// in messages) and checks that it is one, with a layer count `t5gemma_config` can use.
/// The fuzzing entry point: never panics, on any text.
pub fn parse_gemma2_config(path: &str, flag: &str, text: &str) -> Result<SourceConfig, String> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| format!("{flag}: `{path}` is not valid JSON: {e}"))?;
    if !json.is_object() {
        return Err(format!("{flag}: `{path}` is not a JSON object"));
    }
    match json.get("model_type").and_then(|v| v.as_str()) {
        Some("gemma2") => {}
        Some(other) => {
            return Err(format!(
                "{flag}: `{path}` has model_type `{other}`; adaptation reads decoder-only Gemma 2 checkpoints (model_type `gemma2`)"
            ))
        }
        None => {
            return Err(format!(
                "{flag}: `{path}` has no model_type; adaptation reads decoder-only Gemma 2 checkpoints (model_type `gemma2`)"
            ))
        }
    }
    if json.get("tie_word_embeddings") == Some(&Value::Bool(false)) {
        return Err(format!(
            "{flag}: `{path}` has tie_word_embeddings = false; T5Gemma ties the lm head to the decoder embedding, and an untied Gemma 2 head has no place in it"
        ));
    }
    Ok(SourceConfig {
        origin: path.to_string(),
        json,
    })
}

/// A `T5GemmaModuleConfig` field and its Gemma 2 default (`None`: required).
struct Field {
    key: &'static str,
    default: Option<fn() -> Value>,
}

/// The fields of HF's `T5GemmaModuleConfig` that come from the source (in the order
/// transformers writes them: sorted). `layer_types`, `rope_parameters` and
/// `hidden_activation` have 4.x spellings and are derived separately.
const FIELDS: &[Field] = &[
    Field {
        key: "attention_bias",
        default: Some(|| json!(false)),
    },
    Field {
        key: "attn_logit_softcapping",
        default: Some(|| json!(50.0)),
    },
    Field {
        key: "bos_token_id",
        default: Some(|| json!(2)),
    },
    Field {
        key: "eos_token_id",
        default: Some(|| json!(1)),
    },
    Field {
        key: "final_logit_softcapping",
        default: Some(|| json!(30.0)),
    },
    Field {
        key: "head_dim",
        default: None,
    },
    Field {
        key: "hidden_size",
        default: None,
    },
    Field {
        key: "initializer_range",
        default: Some(|| json!(0.02)),
    },
    Field {
        key: "intermediate_size",
        default: None,
    },
    Field {
        key: "max_position_embeddings",
        default: Some(|| json!(8192)),
    },
    Field {
        key: "num_attention_heads",
        default: None,
    },
    Field {
        key: "num_hidden_layers",
        default: None,
    },
    Field {
        key: "num_key_value_heads",
        default: None,
    },
    Field {
        key: "pad_token_id",
        default: Some(|| json!(0)),
    },
    Field {
        key: "query_pre_attn_scalar",
        default: Some(|| json!(256)),
    },
    Field {
        key: "rms_norm_eps",
        default: Some(|| json!(1e-6)),
    },
    Field {
        key: "sliding_window",
        default: Some(|| json!(4096)),
    },
    Field {
        key: "vocab_size",
        default: None,
    },
];

/// More layers than any checkpoint has; a config claiming more is broken.
const MAX_LAYERS: u64 = 1 << 16;

/// One stack's sub-config from its Gemma 2 source.
fn stack(
    src: &SourceConfig,
    is_decoder: bool,
    attention_dropout: &Value,
) -> Result<Map<String, Value>, String> {
    let j = &src.json;
    let mut m = Map::new();
    for f in FIELDS {
        let v = match (j.get(f.key), f.default) {
            (Some(v), _) => v.clone(),
            (None, Some(d)) => d(),
            (None, None) => {
                return Err(format!("`{}` lacks `{}`", src.origin, f.key));
            }
        };
        m.insert(f.key.into(), v);
    }
    // HF's T5GemmaModuleConfig refuses other stacks, though Gemma 2 has an explicit head_dim.
    let (h, heads) = (j["hidden_size"].as_u64(), j["num_attention_heads"].as_u64());
    if let (Some(h), Some(heads)) = (h, heads) {
        if heads == 0 || !h.is_multiple_of(heads) {
            return Err(format!(
                "`{}`: hidden_size {h} is not a multiple of num_attention_heads {heads}, which HF's T5GemmaModuleConfig requires",
                src.origin
            ));
        }
    }
    let n = j["num_hidden_layers"].as_u64().ok_or(format!(
        "`{}`: num_hidden_layers must be a non-negative integer, not {}",
        src.origin, j["num_hidden_layers"]
    ))?;
    // The default layer_types below has one entry per layer: bound it before it is built.
    if n > MAX_LAYERS {
        return Err(format!(
            "`{}`: num_hidden_layers {n} is more than any model has (at most {MAX_LAYERS})",
            src.origin
        ));
    }
    // HF's default: local (sliding) layers first, alternating.
    let layer_types = j
        .get("layer_types")
        .filter(|v| !v.is_null())
        .cloned()
        .unwrap_or_else(|| {
            Value::Array(
                (0..n)
                    .map(|i| {
                        json!(if i % 2 == 0 {
                            "sliding_attention"
                        } else {
                            "full_attention"
                        })
                    })
                    .collect(),
            )
        });
    // transformers 4.x writes rope_theta at the top level; 5.x nests it.
    let rope = match j.get("rope_parameters").filter(|v| !v.is_null()) {
        Some(r) => r.clone(),
        None => json!({
            "rope_theta": j.get("rope_theta").cloned().unwrap_or(json!(10000.0)),
            "rope_type": "default",
        }),
    };
    let activation = j
        .get("hidden_activation")
        .filter(|v| !v.is_null())
        .or_else(|| j.get("hidden_act"))
        .cloned()
        .unwrap_or(json!("gelu_pytorch_tanh"));
    m.insert("attention_dropout".into(), attention_dropout.clone());
    m.insert("dropout_rate".into(), json!(0.0));
    m.insert("hidden_activation".into(), activation);
    m.insert("is_decoder".into(), json!(is_decoder));
    m.insert("layer_types".into(), layer_types);
    m.insert("model_type".into(), json!("t5_gemma_module"));
    m.insert("rope_parameters".into(), rope);
    m.insert("tie_word_embeddings".into(), json!(true));
    m.insert("use_cache".into(), json!(true));
    Ok(m)
}

/// The T5Gemma config: encoder stack from `encoder`, decoder stack from `decoder` (the same
/// source for a balanced pair); `dtype` is the torch name of the weights' dtype.
pub fn t5gemma_config(
    encoder: &SourceConfig,
    decoder: &SourceConfig,
    dtype: &str,
) -> Result<Value, String> {
    let ev = &encoder.json["vocab_size"];
    let dv = &decoder.json["vocab_size"];
    if ev != dv {
        return Err(format!(
            "the encoder source has vocab_size {ev} (`{}`) but the decoder source has {dv} (`{}`); T5Gemma's stacks share one vocabulary",
            encoder.origin, decoder.origin
        ));
    }
    let dropout = decoder
        .json
        .get("attention_dropout")
        .cloned()
        .unwrap_or(json!(0.0));
    let enc = stack(encoder, false, &dropout)?;
    let mut dec = stack(decoder, true, &dropout)?;
    // Cross-attention k/v read the encoder's width.
    dec.insert(
        "cross_attention_hidden_size".into(),
        enc["hidden_size"].clone(),
    );
    let mut top = Map::new();
    top.insert(
        "architectures".into(),
        json!(["T5GemmaForConditionalGeneration"]),
    );
    top.insert("attention_dropout".into(), dropout);
    top.insert("bos_token_id".into(), dec["bos_token_id"].clone());
    top.insert("classifier_dropout_rate".into(), json!(0.0));
    top.insert("dropout_rate".into(), json!(0.0));
    top.insert("dtype".into(), json!(dtype));
    top.insert("eos_token_id".into(), dec["eos_token_id"].clone());
    top.insert("initializer_range".into(), dec["initializer_range"].clone());
    top.insert("is_encoder_decoder".into(), json!(true));
    top.insert("model_type".into(), json!("t5gemma"));
    top.insert("pad_token_id".into(), dec["pad_token_id"].clone());
    top.insert("tie_word_embeddings".into(), json!(true));
    top.insert("vocab_size".into(), dec["vocab_size"].clone());
    top.insert("encoder".into(), Value::Object(sorted(enc)));
    top.insert("decoder".into(), Value::Object(sorted(dec)));
    Ok(Value::Object(sorted(top)))
}

/// Keys sorted, as transformers writes them (and whatever map order serde_json keeps).
fn sorted(m: Map<String, Value>) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = m.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

/// torch's name of a safetensors float dtype (`config.json`'s `dtype`).
pub fn torch_dtype(safetensors_dtype: &str) -> &'static str {
    match safetensors_dtype {
        "BF16" => "bfloat16",
        "F16" => "float16",
        _ => "float32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: &str) -> String {
        format!(
            r#"{{"model_type": "gemma2", "hidden_size": 64, "head_dim": 16, "intermediate_size": 128,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
                "num_hidden_layers": {layers}}}"#
        )
    }

    /// The T5Gemma config from one source, or its error.
    fn derive(text: &str) -> Result<Value, String> {
        let src = parse_gemma2_config("g/config.json", "--from", text)?;
        t5gemma_config(&src, &src, "float32")
    }

    #[test]
    fn absurd_layer_counts_are_errors() {
        let ok = derive(&config("2")).unwrap();
        assert_eq!(ok["encoder"]["layer_types"].as_array().unwrap().len(), 2);
        for (layers, want) in [
            (
                "100000000000",
                "num_hidden_layers 100000000000 is more than any model has",
            ),
            (
                "-3",
                "num_hidden_layers must be a non-negative integer, not -3",
            ),
            ("2.5", "not 2.5"),
            ("\"two\"", "not \"two\""),
            ("1e300", "not 1e+300"),
        ] {
            let e = derive(&config(layers)).unwrap_err();
            assert!(e.contains("`g/config.json`") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn malformed_text_names_the_file() {
        for (text, want) in [
            ("{\"model_type\": ", "is not valid JSON"),
            ("[1]", "is not a JSON object"),
            ("{\"model_type\": \"llama\"}", "has model_type `llama`"),
            ("{}", "has no model_type"),
        ] {
            let Err(e) = parse_gemma2_config("g/config.json", "--from", text) else {
                panic!("{text} parsed");
            };
            assert!(
                e.contains("--from: `g/config.json`") && e.contains(want),
                "{e}"
            );
        }
    }
}
