//! Training phases of an adaptation: the trainer reads them. In the unbalanced T5Gemma
//! recipe only cross-attention trains for the first K steps, then everything does.

use super::pattern::NamePattern;

/// The phases in order; the last one runs to the end of training when it has no step count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Phases {
    pub phases: Vec<Phase>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    /// How many optimiser steps the phase lasts; `None`: until the end.
    pub steps: Option<u64>,
    /// Parameters (checkpoint names) that train in this phase; every other one is frozen.
    pub trainable: Vec<NamePattern>,
}

/// Whether the parameter with checkpoint name `param` trains during `phase`.
pub fn is_trainable(phase: &Phase, param: &str) -> bool {
    phase.trainable.iter().any(|p| p.matches(param))
}

impl Phases {
    /// The phase that optimiser step `step` (0-based) falls in; past the last counted phase,
    /// the last phase.
    pub fn at_step(&self, step: u64) -> Option<&Phase> {
        let mut start = 0u64;
        for p in &self.phases {
            match p.steps {
                Some(n) if step >= start.saturating_add(n) => start = start.saturating_add(n),
                _ => return Some(p),
            }
        }
        self.phases.last()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.phases
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "steps": p.steps,
                        "trainable": p.trainable.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Phases {
        Phases {
            phases: vec![
                Phase {
                    name: "warmup".into(),
                    steps: Some(3),
                    trainable: vec![NamePattern::parse("m.layers.{i}.cross.*").unwrap()],
                },
                Phase {
                    name: "full".into(),
                    steps: None,
                    trainable: vec![NamePattern::all()],
                },
            ],
        }
    }

    #[test]
    fn step_to_phase() {
        let p = phases();
        let names: Vec<&str> = (0..6)
            .map(|s| p.at_step(s).unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            ["warmup", "warmup", "warmup", "full", "full", "full"]
        );
        assert!(Phases::default().at_step(0).is_none());
    }

    #[test]
    fn trainable() {
        let p = phases();
        let cases = [
            ("warmup", "m.layers.0.cross.q.weight", true),
            ("warmup", "m.layers.0.self.q.weight", false),
            ("warmup", "m.layers.0.cross", false),
            ("full", "m.layers.0.self.q.weight", true),
        ];
        for (phase, name, expect) in cases {
            let ph = p.phases.iter().find(|x| x.name == phase).unwrap();
            assert_eq!(is_trainable(ph, name), expect, "{phase} {name}");
        }
    }
}
