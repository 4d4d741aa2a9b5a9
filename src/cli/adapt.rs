//! `encdecc adapt`: a T5Gemma checkpoint from Gemma 2 ones, by the `adapt` rules of a model
//! file. Balanced: `--from DIR`; unbalanced: `--from-encoder DIR --from-decoder DIR`.
//! The output directory gets `model.safetensors`, `config.json` and `adapt.json`, each
//! written atomically; sources are only read. A non-empty output directory is refused
//! unless `--force`, which replaces those three files and leaves any others alone.

use clap::Args;
use encdecc_compiler::adapt::{self, TensorInit};
use encdecc_dsl::ast::AdaptDef;
use encdecc_dsl::load_program;
use encdecc_runtime::adapt::config::{read_gemma2_config, t5gemma_config, torch_dtype};
use encdecc_runtime::adapt::{inventory, manifest, write_config, write_weights, ApplyOptions};
use encdecc_runtime::weights::{write_atomic, TensorFiles};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct AdaptArgs {
    /// The model file with the `adapt` rules (`models/t5gemma_adapt.edl`).
    pub model: PathBuf,
    /// Balanced: one Gemma 2 directory (config.json + model.safetensors) for both stacks.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["from_encoder", "from_decoder"])]
    pub from: Option<PathBuf>,
    /// Unbalanced: the Gemma 2 directory the encoder comes from.
    #[arg(long, value_name = "DIR")]
    pub from_encoder: Option<PathBuf>,
    /// Unbalanced: the Gemma 2 directory the decoder comes from.
    #[arg(long, value_name = "DIR")]
    pub from_decoder: Option<PathBuf>,
    /// The output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Seeds the fresh (randomly initialised) tensors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write into a non-empty output directory (replacing model.safetensors, config.json and
    /// adapt.json there).
    #[arg(long)]
    pub force: bool,
    /// Which `adapt` item of the file, when the sources given fit several.
    #[arg(long, value_name = "NAME")]
    pub rules: Option<String>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Copy source tensors that hold NaN or ±Inf (by default an error naming the tensor).
    #[arg(long)]
    pub allow_non_finite: bool,
}

/// Source directories by role, and the flag that named each (for messages).
struct Bound {
    dirs: Vec<(String, PathBuf, &'static str)>,
}

pub fn adapt(a: AdaptArgs) -> Result<(), String> {
    let e = |m: String| format!("error: {m}");
    let balanced = match (&a.from, &a.from_encoder, &a.from_decoder) {
        (Some(_), None, None) => true,
        (None, Some(_), Some(_)) => false,
        (None, None, None) => {
            return Err(e("`adapt` needs --from DIR (balanced) or --from-encoder DIR --from-decoder DIR (unbalanced)".into()))
        }
        (None, Some(_), None) => return Err(e("--from-encoder needs --from-decoder too".into())),
        (None, None, Some(_)) => return Err(e("--from-decoder needs --from-encoder too".into())),
        _ => unreachable!("clap: --from conflicts with the others"),
    };
    let sources: Vec<(&Path, &'static str)> = if balanced {
        vec![(a.from.as_deref().expect("balanced"), "--from")]
    } else {
        vec![
            (
                a.from_encoder.as_deref().expect("unbalanced"),
                "--from-encoder",
            ),
            (
                a.from_decoder.as_deref().expect("unbalanced"),
                "--from-decoder",
            ),
        ]
    };
    check_out(&a.out, a.force, &sources).map_err(e)?;
    // Source configs first: a wrong directory is the commonest mistake.
    let configs = sources
        .iter()
        .map(|(dir, flag)| read_gemma2_config(dir, flag))
        .collect::<Result<Vec<_>, _>>()
        .map_err(e)?;

    let prog = load_program(&a.model).map_err(|(sources, d)| d.render(&sources))?;
    let render = |d: encdecc_dsl::Diagnostic| d.render(&prog.sources);
    let def = if balanced {
        adapt::find(
            &prog,
            a.rules.as_deref(),
            |d| d.sources.len() == 1,
            "one source (--from)",
        )
    } else {
        adapt::find(
            &prog,
            a.rules.as_deref(),
            |d| roles(d) == ["decoder", "encoder"],
            "sources `encoder` and `decoder` (--from-encoder, --from-decoder)",
        )
    }
    .map_err(render)?;
    let bound = bind(&def, &a, balanced).map_err(e)?;

    let (enc_cfg, dec_cfg) = if balanced {
        (&configs[0], &configs[0])
    } else {
        (&configs[0], &configs[1])
    };
    let mut config = t5gemma_config(enc_cfg, dec_cfg, "float32").map_err(e)?;
    let target = adapt::elaborate_target(&prog, &def, config.clone()).map_err(render)?;

    let mut files = vec![];
    for (role, dir, flag) in &bound.dirs {
        let f = TensorFiles::open_dir(dir)
            .map_err(|m| e(format!("{flag}: {m}")))?
            .allow_non_finite(a.allow_non_finite);
        f.check_finite().map_err(|m| e(format!("{flag}: {m}")))?;
        files.push((role.clone(), f));
    }
    let inventories: Vec<_> = bound
        .dirs
        .iter()
        .zip(&files)
        .map(|((role, dir, _), (_, f))| inventory(role, dir, f))
        .collect();
    let plan = adapt::plan(&prog, &def, &target.params, &inventories).map_err(render)?;
    for inv in &inventories {
        let unused: Vec<&str> = inv
            .tensors
            .keys()
            .filter(|n| {
                !plan.tensors.iter().any(|t| {
                    matches!(&t.init, TensorInit::Copy { role, name } if *role == inv.role && name == *n)
                })
            })
            .map(|n| n.as_str())
            .collect();
        if !unused.is_empty() {
            eprintln!(
                "warning: {} tensor(s) of the `{}` checkpoint are not used: {}",
                unused.len(),
                inv.role,
                unused.join(", ")
            );
        }
    }
    config["dtype"] = serde_json::json!(torch_dtype(&plan.dtype));

    std::fs::create_dir_all(&a.out)
        .map_err(|err| e(format!("cannot create `{}`: {err}", a.out.display())))?;
    let by_role: Vec<(String, &TensorFiles)> = files.iter().map(|(r, f)| (r.clone(), f)).collect();
    let mut last_shown = 0u64;
    let mut progress = |p: encdecc_runtime::adapt::Progress| {
        // Only big checkpoints take long enough to want it; every 5%.
        if p.bytes >= 256 << 20 && (p.bytes_done - last_shown) * 20 >= p.bytes {
            last_shown = p.bytes_done;
            eprintln!(
                "adapt: {}/{} tensors, {:.2}/{:.2} GB",
                p.tensors_done,
                p.tensors,
                p.bytes_done as f64 / 1e9,
                p.bytes as f64 / 1e9
            );
        }
    };
    let summary = write_weights(
        &plan,
        &a.out,
        ApplyOptions {
            seed: a.seed,
            sources: &by_role,
            progress: &mut progress,
        },
    )
    .map_err(e)?;
    write_config(&a.out, &config).map_err(e)?;
    let dirs: Vec<(String, String)> = bound
        .dirs
        .iter()
        .map(|(r, d, _)| (r.clone(), d.display().to_string()))
        .collect();
    let m = manifest(&plan, &a.model.display().to_string(), &dirs, a.seed);
    let mut text = serde_json::to_string_pretty(&m).expect("JSON");
    text.push('\n');
    write_atomic(&a.out.join("adapt.json"), text.as_bytes()).map_err(e)?;

    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "adapt": adapt::signature(&def),
                "out": a.out,
                "tensors": summary.tensors,
                "copied": summary.copied,
                "fresh": summary.fresh,
                "bytes": summary.bytes,
                "dtype": plan.dtype,
                "seed": a.seed,
                "phases": plan.phases.to_json(),
            })
        );
    } else {
        println!("adapt {} ({})", adapt::signature(&def), a.model.display());
        for (role, dir) in &dirs {
            println!("  {role:<8} {dir}");
        }
        println!(
            "wrote {}: {} tensors ({} copied, {} fresh with seed {}), {}, {:.1} MB; config.json, adapt.json",
            a.out.join("model.safetensors").display(),
            summary.tensors,
            summary.copied,
            summary.fresh,
            a.seed,
            plan.dtype,
            summary.bytes as f64 / 1e6
        );
        for p in &plan.phases.phases {
            let steps = p
                .steps
                .map_or("until the end".to_string(), |n| format!("{n} steps"));
            let train: Vec<String> = p.trainable.iter().map(|t| t.to_string()).collect();
            println!("phase {} ({steps}): trains {}", p.name, train.join(", "));
        }
    }
    Ok(())
}

/// The roles of an `adapt` item, sorted.
fn roles(d: &AdaptDef) -> Vec<&str> {
    let mut r: Vec<&str> = d.sources.iter().map(|s| s.node.as_str()).collect();
    r.sort();
    r
}

/// Binds each role of `def` to a directory: `--from` binds them all (a two-source item then
/// reads both stacks from one checkpoint); the unbalanced flags bind `encoder` and `decoder`.
fn bind(def: &AdaptDef, a: &AdaptArgs, balanced: bool) -> Result<Bound, String> {
    let mut dirs = vec![];
    for r in &def.sources {
        let (dir, flag) = match (balanced, r.node.as_str()) {
            (true, _) => (a.from.clone().expect("balanced"), "--from"),
            (false, "encoder") => (a.from_encoder.clone().expect("unbalanced"), "--from-encoder"),
            (false, "decoder") => (a.from_decoder.clone().expect("unbalanced"), "--from-decoder"),
            (false, other) => {
                return Err(format!(
                    "`adapt {}` reads a source `{other}`, which --from-encoder/--from-decoder cannot give; use --from DIR",
                    adapt::signature(def)
                ))
            }
        };
        dirs.push((r.node.clone(), dir, flag));
    }
    Ok(Bound { dirs })
}

/// The output directory must not be a source, and must be empty unless `--force`.
fn check_out(out: &Path, force: bool, sources: &[(&Path, &str)]) -> Result<(), String> {
    if out.exists() && !out.is_dir() {
        return Err(format!(
            "--out `{}` exists and is not a directory",
            out.display()
        ));
    }
    if let Ok(o) = out.canonicalize() {
        for (dir, flag) in sources {
            if dir.canonicalize().is_ok_and(|d| d == o) {
                return Err(format!(
                    "--out `{}` is the {flag} directory; adaptation never writes into a source",
                    out.display()
                ));
            }
        }
    }
    if !force && out.is_dir() {
        let mut entries = std::fs::read_dir(out)
            .map_err(|err| format!("cannot read --out `{}`: {err}", out.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "--out `{}` exists and is not empty; pass --force to replace model.safetensors, config.json and adapt.json in it",
                out.display()
            ));
        }
    }
    Ok(())
}
