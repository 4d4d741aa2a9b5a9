//! Learning-rate schedules: linear warm-up to the peak, then constant, linear or cosine
//! decay to `min_lr_ratio · peak` at the last step.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decay {
    Constant,
    Linear,
    Cosine,
}

impl Decay {
    pub fn parse(s: &str) -> Result<Decay, String> {
        match s {
            "constant" => Ok(Decay::Constant),
            "linear" => Ok(Decay::Linear),
            "cosine" => Ok(Decay::Cosine),
            other => Err(format!(
                "unknown decay `{other}` (expected constant, linear or cosine)"
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (1-based), as HF's schedulers: warm-up
    /// ramps `peak · step / warmup`, decay runs over the remaining steps.
    pub fn lr(&self, step: u64) -> f64 {
        let s = step as f64;
        if step <= self.warmup_steps && self.warmup_steps > 0 {
            return self.peak_lr * s / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let t = ((s - self.warmup_steps as f64) / span).clamp(0.0, 1.0);
        let floor = self.min_lr_ratio;
        let f = match self.decay {
            Decay::Constant => 1.0,
            Decay::Linear => 1.0 - (1.0 - floor) * t,
            Decay::Cosine => floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
        };
        self.peak_lr * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(decay: Decay, want: &[(u64, f64)]) {
        let s = Schedule {
            peak_lr: 1.0,
            warmup_steps: 4,
            total_steps: 12,
            decay,
            min_lr_ratio: 0.1,
        };
        for &(step, lr) in want {
            assert!(
                (s.lr(step) - lr).abs() < 1e-12,
                "{decay:?} step {step}: {} vs {lr}",
                s.lr(step)
            );
        }
    }

    #[test]
    fn schedules() {
        check(Decay::Constant, &[(1, 0.25), (4, 1.0), (5, 1.0), (12, 1.0)]);
        check(
            Decay::Linear,
            &[(2, 0.5), (4, 1.0), (8, 0.55), (12, 0.1), (20, 0.1)],
        );
        check(Decay::Cosine, &[(3, 0.75), (4, 1.0), (8, 0.55), (12, 0.1)]);
    }
}
