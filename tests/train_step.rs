//! The compiled train step (forward, loss, backward, clipping, AdamW) against HF
//! transformers + torch.optim.AdamW: three steps on the t5gemma-tiny batch
//! (tests/fixtures/train/make_adamw.py), losses, gradient norms and every parameter after.

mod common;
use common::*;
use encdecc_compiler::optim::AdamW;
use encdecc_runtime::forward::Backend;
use encdecc_runtime::train::schedule::{Decay, Schedule};
use encdecc_runtime::train::{TrainPhase, TrainSetup, TrainState, Trainer};
use encdecc_runtime::weights::{load_params, TensorFiles};
use std::collections::HashMap;

fn trainer(backend: Backend) -> (Trainer, HashMap<String, encdecc_runtime::Tensor>) {
    let dir = fixture("t5gemma-tiny");
    let inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let (params, _) = load_params(&TensorFiles::open_dir(&dir).unwrap(), &model.params).unwrap();
    let opt = AdamW {
        weight_decay: 0.01,
        max_grad_norm: Some(1.0),
        ..AdamW::default()
    };
    let schedule = Schedule {
        peak_lr: 1e-2,
        warmup_steps: 2,
        total_steps: 3,
        decay: Decay::Constant,
        min_lr_ratio: 1.0,
    };
    let setup = TrainSetup::everything(&model, opt, schedule, backend);
    let state = TrainState {
        step: 0,
        params,
        m: HashMap::new(),
        v: HashMap::new(),
    };
    (Trainer::new(setup, state).unwrap(), inputs)
}

fn check(backend: Backend) {
    let (mut t, batch) = trainer(backend);
    let want = read_all(&root().join("tests/fixtures/train/t5gemma-tiny-adamw.safetensors"));
    let losses = want["losses"].to_f64();
    let norms = want["grad_norms"].to_f64();
    for s in 0..3 {
        let m = t.step(&batch).unwrap();
        assert!(
            (m.loss - losses[s]).abs() <= 1e-4,
            "step {}: loss {} vs torch {}",
            s + 1,
            m.loss,
            losses[s]
        );
        assert!(
            (m.grad_norm - norms[s]).abs() <= 1e-4 * norms[s],
            "step {}: grad norm {} vs torch {}",
            s + 1,
            m.grad_norm,
            norms[s]
        );
    }
    // Adam divides each gradient element by its own running magnitude, so an element whose
    // gradient is ~0 (relative error large at 1e-4 of the tensor's max) moves by up to a
    // few percent of a step differently from torch. So: nearly every element within 1e-5
    // (a missing weight decay alone moves most by > 1e-4), and every element within a tenth
    // of the learning rate (a flipped update moves one by ~2e-2).
    let (mut total, mut off) = (0usize, 0usize);
    for p in &t.setup.params {
        let w = &want[&format!("param.{}", p.ckpt)];
        let d = max_abs_diff(&p.ckpt, &t.state().unwrap().params[&p.path], w);
        assert!(
            d <= 1e-3,
            "{backend:?}: `{}` differs by {d:e} after 3 steps",
            p.ckpt
        );
        let g = t.state().unwrap().params[&p.path].to_f64();
        off += g
            .iter()
            .zip(w.to_f64())
            .filter(|(a, b)| (*a - b).abs() > 1e-5)
            .count();
        total += g.len();
    }
    assert!(
        off * 1000 <= total,
        "{backend:?}: {off} of {total} parameters differ from torch's by more than 1e-5"
    );
}

#[test]
fn adamw_steps_match_torch_on_cpu() {
    check(Backend::Cpu);
}

#[test]
fn adamw_steps_match_torch_on_reference() {
    check(Backend::Reference);
}

#[test]
fn resume_from_a_checkpoint_is_bit_identical() {
    use encdecc_runtime::train::checkpoint;
    let (mut straight, batch) = trainer(Backend::Cpu);
    let losses: Vec<f64> = (0..3)
        .map(|_| straight.step(&batch).unwrap().loss)
        .collect();

    let (mut first, _) = trainer(Backend::Cpu);
    first.step(&batch).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let extra = serde_json::json!({"data": {"cursor": 7}});
    let params = first.setup.params.clone();
    let saved = first.fetch_state().unwrap().clone();
    checkpoint::save(&dir, &params, &saved, None, &extra).unwrap();
    // Saving again replaces the checkpoint in place.
    checkpoint::save(&dir, &params, &saved, None, &extra).unwrap();
    let (state, back) = checkpoint::load(&dir, &params, false).unwrap();
    assert_eq!(back, extra);
    assert_eq!(state, saved);
    let (mut resumed, _) = trainer(Backend::Cpu);
    resumed.set_state(state);
    let rest: Vec<f64> = (0..2).map(|_| resumed.step(&batch).unwrap().loss).collect();
    assert_eq!(rest, losses[1..], "losses after resume");
    assert_eq!(
        resumed.state().unwrap(),
        straight.state().unwrap(),
        "parameters and moments after resume"
    );
    // The replaced checkpoint stays beside the new one (`ckpt.prev`, what a resume falls
    // back to after a crash mid-swap); nothing else is left behind.
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["ckpt", "ckpt.prev"],
        "no temporary directories left behind"
    );
}

#[test]
fn frozen_phase_trains_only_its_parameters() {
    let (mut t, batch) = trainer(Backend::Cpu);
    let cross: Vec<String> = t
        .setup
        .params
        .iter()
        .filter(|p| p.ckpt.contains("cross_attn"))
        .map(|p| p.ckpt.clone())
        .collect();
    assert!(!cross.is_empty());
    let all: Vec<String> = t.setup.params.iter().map(|p| p.ckpt.clone()).collect();
    t.setup.phases = vec![
        TrainPhase {
            name: "warmup".into(),
            steps: Some(2),
            trainable: cross.clone(),
        },
        TrainPhase {
            name: "full".into(),
            steps: None,
            trainable: all,
        },
    ];
    let before = t.state().unwrap().params.clone();
    t.step(&batch).unwrap();
    t.step(&batch).unwrap();
    for p in &t.setup.params {
        let moved = t.state().unwrap().params[&p.path] != before[&p.path];
        assert_eq!(
            moved,
            cross.contains(&p.ckpt),
            "`{}` after the warm-up",
            p.ckpt
        );
    }
    assert_eq!(t.phase().name, "full");
    t.step(&batch).unwrap();
    let emb = t
        .setup
        .params
        .iter()
        .find(|p| p.ckpt.contains("encoder.embed"))
        .unwrap();
    assert_ne!(t.state().unwrap().params[&emb.path], before[&emb.path]);
}

#[test]
fn distillation_against_a_one_hot_teacher_is_the_label_loss() {
    use encdecc_compiler::objective::{add_distillation, Distillation, KD_LOSS, TRAIN_LOSS};
    let dir = fixture("t5gemma-tiny");
    let mut inputs = read_all(&dir.join("inputs.safetensors"));
    let model = compile(&dir, &[], &inputs, false);
    let mut g = model.graph.clone();
    add_distillation(
        &mut g,
        &Distillation {
            temperature: 1.0,
            alpha: 0.25,
        },
        -100,
    )
    .unwrap();
    let labels = inputs["labels"].as_i64().unwrap().to_vec();
    let vocab = 256;
    let mut probs = vec![0f32; labels.len() * vocab];
    for (i, &y) in labels.iter().enumerate() {
        if y >= 0 {
            probs[i * vocab + y as usize] = 1.0;
        }
    }
    let mut shape = inputs["labels"].shape.clone();
    shape.push(vocab);
    inputs.insert(
        "teacher_probs".into(),
        encdecc_runtime::Tensor::f32(shape, probs),
    );
    let (params, _) = load_params(&TensorFiles::open_dir(&dir).unwrap(), &model.params).unwrap();
    let mut prim = g.clone();
    encdecc_compiler::decompose::decompose(&mut prim).unwrap();
    let out = encdecc_runtime::interp::run(&prim, &params, &inputs).unwrap();
    let ce = out["loss"].to_f64()[0];
    let kd = out[KD_LOSS].to_f64()[0];
    assert!((ce - kd).abs() < 1e-5, "kd {kd} vs ce {ce}");
    assert!((out[TRAIN_LOSS].to_f64()[0] - ce).abs() < 1e-5);
    // A uniform teacher (on the CPU backend): −(1/V)·Σ_v log p(v) = logsumexp(z) − mean(z).
    let cpu = encdecc_runtime::cpu::prepare(&g).unwrap();
    let uniform = encdecc_runtime::Tensor::f32(
        inputs["teacher_probs"].shape.clone(),
        vec![1.0 / vocab as f32; labels.len() * vocab],
    );
    inputs.insert("teacher_probs".into(), uniform);
    let out = cpu.run(&params, &inputs).unwrap();
    let kd_u = out[KD_LOSS].to_f64()[0];
    let z = out["logits"].to_f64();
    let (mut total, mut n) = (0f64, 0);
    for (i, &y) in labels.iter().enumerate() {
        if y < 0 {
            continue;
        }
        let row = &z[i * vocab..(i + 1) * vocab];
        let max = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        total += lse - row.iter().sum::<f64>() / vocab as f64;
        n += 1;
    }
    let want = total / n as f64;
    assert!(
        (kd_u - want).abs() < 1e-4,
        "uniform teacher: {kd_u} vs {want}"
    );
}

/// A step whose loss is not finite updates nothing: the train step's new weights and
/// moments are the old ones (so a backend that writes them in place, cuda, keeps the last
/// good state too), and the trainer reports the divergence.
#[test]
fn a_non_finite_loss_updates_nothing() {
    use encdecc_compiler::optim::{new_m, new_param, new_v, state_m, state_v, step_scalars};
    use encdecc_compiler::optim::{train_step, Trainable};
    use encdecc_runtime::program::HostProgram;
    use encdecc_runtime::Tensor;
    let (t, batch) = trainer(Backend::Cpu);
    let model_graph = &t.setup.graph;
    let dims = encdecc_runtime::interp::bind_inputs(model_graph, &batch).unwrap();
    let forward = encdecc_compiler::ir::specialize::specialize(model_graph, &dims).unwrap();
    let trainable: Vec<Trainable> = t
        .setup
        .params
        .iter()
        .map(|p| Trainable {
            path: p.path.clone(),
            decay: p.shape.len() >= 2,
        })
        .collect();
    let g = train_step(&forward, &t.setup.loss, &trainable, &t.setup.opt).unwrap();
    let program = HostProgram::new(&g, Backend::Cpu, "test").unwrap();
    let mut params = t.state().unwrap().params.clone();
    // A norm scale: every token reads its element 0.
    let poisoned = &trainable
        .iter()
        .find(|tr| tr.path.ends_with("norm.weight"))
        .unwrap()
        .path;
    let mut w = params[poisoned].as_f32().unwrap().to_vec();
    w[0] = f32::NAN;
    params.insert(
        poisoned.clone(),
        Tensor::f32(params[poisoned].shape.clone(), w),
    );
    let mut inputs = batch.clone();
    for (name, v) in step_scalars(&t.setup.opt, 1, 1e-2) {
        inputs.insert(name.into(), Tensor::f32(vec![1], vec![v]));
    }
    let ones = |p: &Tensor| Tensor::f32(p.shape.clone(), vec![0.5; p.numel()]);
    for tr in &trainable {
        inputs.insert(state_m(&tr.path), ones(&params[&tr.path]));
        inputs.insert(state_v(&tr.path), ones(&params[&tr.path]));
    }
    let out = program.run(&params, &inputs).unwrap();
    assert!(!out[&t.setup.loss].to_f64()[0].is_finite());
    let bits =
        |x: &Tensor| -> Vec<u32> { x.as_f32().unwrap().iter().map(|v| v.to_bits()).collect() };
    for tr in &trainable {
        let p = &tr.path;
        assert_eq!(
            bits(&out[&new_param(p)]),
            bits(&params[p]),
            "{p}: weight changed"
        );
        assert_eq!(
            bits(&out[&new_m(p)]),
            bits(&inputs[&state_m(p)]),
            "{p}: m changed"
        );
        assert_eq!(
            bits(&out[&new_v(p)]),
            bits(&inputs[&state_v(p)]),
            "{p}: v changed"
        );
    }
    // And the trainer says so, leaving its state as it was.
    let (mut t, batch) = trainer(Backend::Cpu);
    let before = t.state().unwrap().clone();
    let mut state = before.clone();
    state
        .params
        .insert(poisoned.clone(), params[poisoned].clone());
    t.set_state(state.clone());
    let err = t.step(&batch).unwrap_err();
    assert!(err.contains("the loss is NaN"), "{err}");
    assert_eq!(t.state().unwrap().step, 0);
}
