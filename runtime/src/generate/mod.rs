//! Generation with a KV cache, as HF `generate` for encoder-decoders: the model's
//! `cross_kv` entry runs the encoder once and projects every decoder layer's cross-attention
//! keys and values; then its `decode_step` entry, compiled once, runs per new token over
//! the self-attention caches this module owns (rings per layer kind, `cache.rs`). Greedy or
//! sampled (`sampling.rs`); a row that emits EOS is finished and padded with the pad id.

pub mod cache;
pub mod sampling;

use crate::cuda::Precision;
use crate::forward::Backend;
use crate::program::HostProgram;
use crate::tensor::{Data, Tensor};
use cache::{LayerKind, Ring};
use encdecc_compiler::elab::{elaborate, ElabOptions, Elaborated, Value};
use encdecc_compiler::ir::{DType, Dim, Graph};
use encdecc_dsl::{Diagnostic, Program};
use sampling::Sampling;
use std::collections::HashMap;
use std::time::Instant;

/// The two compiled entry points of a model that generation runs.
pub struct GenModels {
    pub cross_kv: Elaborated,
    pub step: Elaborated,
}

/// Elaborates `cross_kv` and `decode_step` under `base`'s model and config, the step with
/// exactly the cache inputs its layer kinds need.
pub fn elaborate_generation(prog: &Program, base: &ElabOptions) -> Result<GenModels, Diagnostic> {
    let with = |entry: &str, inputs: Vec<&str>| {
        let mut o = base.clone();
        o.entry = Some(entry.into());
        o.inputs = Some(inputs.into_iter().map(String::from).collect());
        o.probes = false;
        elaborate(prog, &o)
    };
    let cross_kv = with("cross_kv", vec!["input_ids", "attention_mask"])?;
    let kinds = layer_kinds(&cross_kv.config).map_err(Diagnostic::unlocated)?;
    let mut inputs = vec![
        "decoder_input_ids",
        "position",
        "cross_k",
        "cross_v",
        "attention_mask",
    ];
    for prefix in ["sliding", "full"] {
        if kinds.iter().any(|k| k.prefix() == prefix) {
            inputs.extend(match prefix {
                "sliding" => ["sliding_k", "sliding_v", "sliding_pos"],
                _ => ["full_k", "full_v", "full_pos"],
            });
        }
    }
    let step = with("decode_step", inputs)?;
    Ok(GenModels { cross_kv, step })
}

/// The decoder's layer kinds from the resolved config (`decoder.layer_types`,
/// `decoder.sliding_window`).
pub fn layer_kinds(config: &Value) -> Result<Vec<LayerKind>, String> {
    let field = |v: &Value, name: &str| match v {
        Value::Record(r) => r.get(name).cloned(),
        _ => None,
    };
    let dec = field(config, "decoder").ok_or("the config has no `decoder` stack")?;
    let Some(Value::List(types)) = field(&dec, "layer_types") else {
        return Err("the decoder config has no `layer_types` list".into());
    };
    types
        .iter()
        .map(|t| match t {
            Value::Str(s) if &**s == "full_attention" => Ok(LayerKind::Full),
            Value::Str(s) if &**s == "sliding_attention" => match field(&dec, "sliding_window") {
                Some(Value::Int(w)) if w > 0 => Ok(LayerKind::Sliding { window: w as usize }),
                _ => Err("a sliding_attention layer needs a positive sliding_window".into()),
            },
            other => Err(format!("unknown decoder layer type {}", other.display())),
        })
        .collect()
}

/// What to generate and how.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// A row is finished once it emits one of these (none: run all `max_new_tokens`).
    pub eos_token_ids: Vec<i64>,
    /// Fills finished rows.
    pub pad_token_id: i64,
    pub decoder_start_token_id: i64,
    /// `None`: greedy.
    pub sampling: Option<Sampling>,
    /// Keep every step's logits (`Generation::logits`).
    pub keep_logits: bool,
}

pub struct Generation {
    /// int64 `[B, 1 + steps]`, the start token first (HF's `sequences`); fewer than
    /// `max_new_tokens` steps when every row finished early.
    pub sequences: Tensor,
    /// Per step, `[B, V]` logits (when asked for).
    pub logits: Vec<Tensor>,
    pub encode_ms: f64,
    pub step_ms: Vec<f64>,
}

/// Frees what a program keeps on the GPU over one generation (the fixed inputs, the
/// carried rings) when dropped: the next generation's first step uploads its own empty
/// rings, whatever their sizes.
struct Unfix<'a>(&'a HostProgram);

impl Drop for Unfix<'_> {
    fn drop(&mut self) {
        self.0.unfix_inputs();
        self.0.drop_resident();
    }
}

/// Where the self-attention rings live between decode steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rings {
    /// On the host: each step reads them and returns only its new keys and values, which
    /// the loop stores (`Ring::store`). The CPU's way: its step reads host memory anyway,
    /// and a copy of every ring per token would cost more than it saves.
    Host,
    /// With the step: it returns the rings with its keys and values written (`*_next`),
    /// and those are the next step's rings. The GPU program keeps them on the device
    /// (`set_carry`), so after the first step no ring crosses PCIe (a 2B decoder's rings
    /// are ~100 MB at 512 positions); elsewhere the outputs are fed back, which the tests
    /// check against the host rings.
    Step,
}

impl Rings {
    /// The GPU keeps the rings with the step where the model's `decode_step` returns them;
    /// everything else keeps them on the host.
    pub fn default_for(backend: Backend, m: &GenModels) -> Rings {
        let returns_rings = m.step.graph.outputs.iter().any(|(n, _)| n.ends_with(NEXT));
        if backend == Backend::Cuda && returns_rings {
            Rings::Step
        } else {
            Rings::Host
        }
    }
}

/// The suffix of `decode_step`'s ring outputs: `sliding_k` + NEXT is `sliding_k` after
/// the step.
const NEXT: &str = "_next";

/// The decode step's ring inputs (`sliding_k`, `full_v`, …) for decoder layers `layers`.
fn ring_inputs(layers: &[LayerKind]) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for kind in layers {
        for s in ["k", "v"] {
            let name = format!("{}_{s}", kind.prefix());
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// `decode_step` computing only the outputs that rings kept as `rings` use: the new keys
/// and values (`Host`) or the rings after the step (`Step`).
pub fn step_graph(m: &GenModels, rings: Rings) -> Result<Graph, String> {
    let mut graph = m.step.graph.clone();
    if rings == Rings::Step {
        for name in ring_inputs(&layer_kinds(&m.step.config)?) {
            if graph.output(&format!("{name}{NEXT}")).is_none() {
                return Err(format!(
                    "`decode_step` has no output `{name}{NEXT}` (the ring after the step), which keeping the rings with the step needs"
                ));
            }
        }
    }
    graph.outputs.retain(|(n, _)| match rings {
        Rings::Host => !n.ends_with(NEXT),
        Rings::Step => n != "new_k" && n != "new_v",
    });
    graph.remove_dead();
    Ok(graph)
}

/// What the GPU program carries from step to step with `Rings::Step`: each ring after the
/// step becomes the next step's ring.
pub fn ring_carry(layers: &[LayerKind]) -> Vec<(String, crate::cuda::Carry)> {
    ring_inputs(layers)
        .into_iter()
        .map(|n| (format!("{n}{NEXT}"), crate::cuda::Carry::Input(n)))
        .collect()
}

/// A model prepared for generation: both entries compiled once, for any batch and length.
pub struct Generator {
    cross_kv: HostProgram,
    step: HostProgram,
    rings: Rings,
    /// The rings stay on the GPU between steps (`Rings::Step` there).
    carried: bool,
    layers: Vec<LayerKind>,
    kv_heads: usize,
    head_dim: usize,
    vocab: usize,
}

impl Generator {
    /// The generator for `backend`, its rings where they cost least (`Rings::default_for`).
    pub fn new(m: &GenModels, backend: Backend) -> Result<Generator, String> {
        Generator::with_rings(m, backend, Rings::default_for(backend, m))
    }

    /// The generator for `backend` at `precision` (on the host: both entries lowered to it,
    /// their weights best loaded as `stored` says).
    pub fn with_precision(
        m: &GenModels,
        backend: Backend,
        precision: Precision,
    ) -> Result<Generator, String> {
        Generator::build(m, backend, Rings::default_for(backend, m), precision)
    }

    /// The generator for `backend` with its rings kept as `rings` says (`Step` needs a
    /// `decode_step` that returns them).
    pub fn with_rings(m: &GenModels, backend: Backend, rings: Rings) -> Result<Generator, String> {
        Generator::build(m, backend, rings, Precision::F32)
    }

    fn build(
        m: &GenModels,
        backend: Backend,
        rings: Rings,
        precision: Precision,
    ) -> Result<Generator, String> {
        let layers = layer_kinds(&m.step.config)?;
        let cross = m
            .step
            .inputs
            .iter()
            .find(|i| i.name == "cross_k")
            .ok_or("`decode_step` has no `cross_k` input")?;
        let known = |i: usize| {
            match cross.ty.shape.0.get(i) {
            Some(Dim::Known(n)) => Ok(*n as usize),
            _ => Err(format!(
                "`decode_step` input `cross_k` is {}, expected [layers, B, kv heads, S, head_dim] with known layers, heads and head_dim",
                cross.ty
            )),
        }
        };
        if known(0)? != layers.len() {
            return Err(format!(
                "`decode_step` stacks {} layers but the decoder has {}",
                known(0)?,
                layers.len()
            ));
        }
        let (kv_heads, head_dim) = (known(2)?, known(4)?);
        let vocab = m
            .step
            .params
            .iter()
            .find(|p| p.path == "decoder.embed_tokens.weight")
            .map(|p| p.shape[0] as usize)
            .ok_or("the model has no `decoder.embed_tokens.weight`")?;
        let mut step =
            HostProgram::new_with(&step_graph(m, rings)?, backend, precision, "generation")?;
        let carried = rings == Rings::Step && backend == Backend::Cuda;
        if carried {
            step.set_carry(ring_carry(&layers))?;
        }
        Ok(Generator {
            cross_kv: HostProgram::new_with(&m.cross_kv.graph, backend, precision, "generation")?,
            step,
            rings,
            carried,
            layers,
            kv_heads,
            head_dim,
            vocab,
        })
    }

    /// Generates for `input_ids` `[B, S]` (with `attention_mask` `[B, S]`, or HF's default:
    /// pad tokens masked when the pad id is not an EOS id), with weights `params`.
    pub fn generate(
        &self,
        params: &HashMap<String, Tensor>,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        o: &GenerateOptions,
    ) -> Result<Generation, String> {
        self.load_params(params)?;
        self.generate_loaded(params, input_ids, attention_mask, o)
    }

    /// The params the entries read in a dtype other than f32 (`HostProgram::stored`), by
    /// DSL path: load them so, or every step converts them.
    pub fn stored(&self) -> HashMap<String, DType> {
        let mut s = self.cross_kv.stored();
        s.extend(self.step.stored());
        s
    }

    /// What the following generations' programs check (`Checks::finite`).
    pub fn set_checks(&mut self, checks: crate::finite::Checks) {
        self.cross_kv.set_checks(checks);
        self.step.set_checks(checks);
    }

    /// Makes `params` the weights `generate_loaded` uses: on the GPU both entries copy them
    /// to the device here. A caller that generates many times with the same weights (a
    /// benchmark, a sweep, a server) loads once; a copy per call would move every weight
    /// over PCIe each time (hundreds of milliseconds for S-S in f32).
    pub fn load_params(&self, params: &HashMap<String, Tensor>) -> Result<(), String> {
        self.cross_kv.load_params(params)?;
        self.step.load_params(params)
    }

    /// The memory bandwidth of the GPU the generator runs on, GB/s (`None` on the host).
    pub fn device_bandwidth_gbs(&self) -> Option<Result<f64, String>> {
        self.step.device_bandwidth_gbs()
    }

    /// `generate` with the weights of the last `load_params`; the CPU and reference
    /// programs read `params` in place, which must be the same values.
    pub fn generate_loaded(
        &self,
        params: &HashMap<String, Tensor>,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        o: &GenerateOptions,
    ) -> Result<Generation, String> {
        let (ids, b, s) = match (input_ids.as_i64(), &input_ids.shape[..]) {
            (Some(v), &[b, s]) if b > 0 && s > 0 => (v, b, s),
            _ => {
                return Err(format!(
                    "input_ids must be a non-empty integer [B, S] tensor, got {} {:?}",
                    input_ids.dtype_name(),
                    input_ids.shape
                ))
            }
        };
        if let Some(bad) = ids.iter().find(|&&t| !(0..self.vocab as i64).contains(&t)) {
            return Err(format!(
                "input_ids holds token {bad}, outside the vocabulary 0..={}",
                self.vocab - 1
            ));
        }
        if o.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".into());
        }
        for (what, t) in [
            ("decoder_start_token_id", o.decoder_start_token_id),
            ("pad_token_id", o.pad_token_id),
        ] {
            if !(0..self.vocab as i64).contains(&t) {
                return Err(format!(
                    "{what} {t} is outside the vocabulary 0..={}",
                    self.vocab - 1
                ));
            }
        }
        if let Some(sm) = &o.sampling {
            sm.check()?;
        }
        let mask = match attention_mask {
            Some(m) => match (m.as_i64(), &m.shape[..]) {
                (Some(v), sh) if sh == [b, s] => Tensor::i64(vec![b, s], v.to_vec()),
                _ => {
                    return Err(format!(
                        "attention_mask must be an integer tensor shaped like input_ids {:?}, got {} {:?}",
                        input_ids.shape,
                        m.dtype_name(),
                        m.shape
                    ))
                }
            },
            // HF `generate`: pad tokens are masked when the pad id is not an EOS id.
            None => {
                let pad = o.pad_token_id;
                let mask_pad = ids.contains(&pad) && !o.eos_token_ids.contains(&pad);
                let v = ids.iter().map(|&t| (!mask_pad || t != pad) as i64).collect();
                Tensor::i64(vec![b, s], v)
            }
        };

        let t0 = Instant::now();
        let mut enc_in = HashMap::from([
            ("input_ids".to_string(), input_ids.clone()),
            ("attention_mask".to_string(), mask),
        ]);
        let mut cross = self.cross_kv.run_loaded(params, &enc_in)?;
        let encode_ms = t0.elapsed().as_secs_f64() * 1e3;

        let n = o.max_new_tokens;
        let mut rings: Vec<Ring> = vec![];
        // Per decoder layer: its ring and its index among that ring's layers.
        let mut place: Vec<(usize, usize)> = vec![];
        for &kind in &self.layers {
            let r = match rings.iter().position(|r| r.prefix == kind.prefix()) {
                Some(r) => r,
                None => {
                    let capacity = match kind {
                        LayerKind::Sliding { window } => window.min(n),
                        LayerKind::Full => n,
                    };
                    let count = self
                        .layers
                        .iter()
                        .filter(|k| k.prefix() == kind.prefix())
                        .count();
                    rings.push(Ring::new(
                        kind.prefix(),
                        count,
                        b,
                        self.kv_heads,
                        capacity,
                        self.head_dim,
                    ));
                    rings.len() - 1
                }
            };
            let idx = place.iter().filter(|(q, _)| *q == r).count();
            place.push((r, idx));
        }
        let take = |m: &mut HashMap<String, Tensor>, k: &str| {
            m.remove(k).ok_or(format!("`cross_kv` gave no `{k}`"))
        };
        // The encoder's keys and values and the source mask are the same for every token:
        // the GPU program keeps them on the device, the others read them per step.
        let fixed: HashMap<String, Tensor> = HashMap::from([
            ("cross_k".into(), take(&mut cross, "cross_k")?),
            ("cross_v".into(), take(&mut cross, "cross_v")?),
            (
                "attention_mask".into(),
                enc_in.remove("attention_mask").expect("set"),
            ),
        ]);
        let mut inputs: HashMap<String, Tensor> = HashMap::new();
        if !self.step.fix_inputs(&fixed)? {
            inputs.extend(fixed);
        }
        // Freed however the generation ends.
        let _unfix = Unfix(&self.step);

        let mut seq: Vec<Vec<i64>> = vec![vec![o.decoder_start_token_id]; b];
        let mut unfinished = vec![true; b];
        let mut rng = crate::rng::Rng::new(o.sampling.as_ref().map_or(0, |s| s.seed));
        let mut logits_kept = vec![];
        let mut step_ms = vec![];
        for p in 0..n {
            let t = Instant::now();
            let last: Vec<i64> = seq.iter().map(|r| r[p]).collect();
            inputs.insert("decoder_input_ids".into(), Tensor::i64(vec![b, 1], last));
            inputs.insert("position".into(), Tensor::i64(vec![1], vec![p as i64]));
            let slots: Vec<usize> = rings.iter_mut().map(|r| r.claim(p)).collect();
            // The rings lend their tensors to the step's inputs and take them back after;
            // rings kept on the GPU go up once, then only their positions.
            let on_gpu = self.carried && p > 0;
            for r in &mut rings {
                let prefix = r.prefix;
                for (suffix, t) in r.lent(on_gpu) {
                    let t = std::mem::replace(t, Tensor::f32(vec![0], vec![]));
                    inputs.insert(format!("{prefix}_{suffix}"), t);
                }
            }
            let run = self.step.run_loaded(params, &inputs);
            for r in &mut rings {
                let prefix = r.prefix;
                for (suffix, t) in r.lent(on_gpu) {
                    *t = inputs.remove(&format!("{prefix}_{suffix}")).expect("lent");
                }
            }
            let mut out = run?;
            match self.rings {
                Rings::Host => {
                    let (nk, nv) = (&out["new_k"], &out["new_v"]);
                    for (layer, &(r, idx)) in place.iter().enumerate() {
                        rings[r].store(idx, slots[r], nk, nv, layer);
                    }
                }
                // Carried: already the GPU program's next inputs.
                Rings::Step if self.carried => {}
                Rings::Step => {
                    for r in &mut rings {
                        for (suffix, t) in [("k", &mut r.k), ("v", &mut r.v)] {
                            let name = format!("{}_{suffix}{NEXT}", r.prefix);
                            *t = out
                                .remove(&name)
                                .ok_or_else(|| format!("`decode_step` gave no `{name}`"))?;
                        }
                    }
                }
            }
            let logits = &out["logits"];
            let v = logits.shape[logits.shape.len() - 1];
            let lv = logits.as_f32().ok_or("decode_step logits are not f32")?;
            for (row, toks) in seq.iter_mut().enumerate() {
                let l = &lv[row * v..(row + 1) * v];
                let mut next = match &o.sampling {
                    None => sampling::argmax(l),
                    Some(sm) => sampling::sample(l, sm, &mut rng),
                } as i64;
                if !o.eos_token_ids.is_empty() && !unfinished[row] {
                    next = o.pad_token_id;
                }
                toks.push(next);
                unfinished[row] &= !o.eos_token_ids.contains(&next);
            }
            if o.keep_logits {
                logits_kept.push(Tensor::f32(vec![b, v], lv.to_vec()));
            }
            step_ms.push(t.elapsed().as_secs_f64() * 1e3);
            if !unfinished.iter().any(|&u| u) {
                break;
            }
        }
        let width = seq[0].len();
        let sequences = Tensor {
            shape: vec![b, width],
            data: Data::I64(seq.concat()),
        };
        Ok(Generation {
            sequences,
            logits: logits_kept,
            encode_ms,
            step_ms,
        })
    }
}
