//! When a run is replayed as a CUDA graph instead of launching its steps one by one.
//!
//! A decode step launches a few hundred small kernels per token; on the GPU each launch
//! costs microseconds of host time, more than the kernel itself at batch 1. A CUDA graph
//! captures the launches once and replays them in one call. A graph holds every kernel's
//! arguments as they were at capture: device addresses and sizes. So it is replayed only
//! for a run whose sizes and buffers are those of the capture (`Replays`' key), captured
//! only after an eager run with that key (the warm-up allocates what the steps grow and
//! loads cuBLAS's kernels: nothing may be allocated while capturing), and never for a run
//! with a step that needs the host in mid-run (the executor refuses those).

/// Which programs replay graphs (`ENCDECC_CUDA_GRAPHS`: `on`, `off` or `auto`, the
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Graphs {
    /// Every program; a capture that fails (a step needs the host) falls back to eager
    /// launches, with one warning per program.
    On,
    /// Steps launched one by one, always.
    Off,
    /// Every program without a step on the host (`cuda::host_steps`): a generation's
    /// decode step, run once per token with the same sizes; a train step, run once per
    /// batch of the same shape; a forward run again on inputs of one shape.
    Auto,
}

impl Graphs {
    pub fn from_env() -> Result<Graphs, String> {
        Graphs::parse(
            std::env::var("ENCDECC_CUDA_GRAPHS")
                .as_deref()
                .unwrap_or(""),
        )
    }

    /// The setting's value (empty: `auto`).
    pub fn parse(value: &str) -> Result<Graphs, String> {
        match value {
            "" | "auto" => Ok(Graphs::Auto),
            "on" => Ok(Graphs::On),
            "off" => Ok(Graphs::Off),
            other => Err(format!(
                "ENCDECC_CUDA_GRAPHS must be on, off or auto, not `{other}`"
            )),
        }
    }

    /// Whether a program with `host_steps` steps on the host replays graphs.
    pub fn replays(self, host_steps: usize) -> bool {
        match self {
            Graphs::On => true,
            Graphs::Off => false,
            Graphs::Auto => host_steps == 0,
        }
    }
}

/// How many refused keys a program remembers.
const REFUSED_KEPT: usize = 8;

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Launches its steps one by one.
    Eager,
    /// Captures its steps into a graph, then launches it.
    Capture,
    /// Launches the graph captured for its key.
    Replay,
}

/// One program's graph and what it knows of the runs before: a key `K` (sizes and device
/// addresses) names a run; `G` is the graph.
pub struct Replays<K, G> {
    /// The key of the last eager run: captured if the next run has it too.
    warm: Option<K>,
    graph: Option<(K, G)>,
    /// Keys whose capture failed: run eagerly from then on, without trying again.
    refused: Vec<K>,
}

impl<K: PartialEq + Clone, G> Default for Replays<K, G> {
    fn default() -> Self {
        Replays {
            warm: None,
            graph: None,
            refused: vec![],
        }
    }
}

impl<K: PartialEq + Clone, G> Replays<K, G> {
    /// What the run with `key` does; an eager run makes `key` warm.
    pub fn next(&mut self, key: &K) -> Action {
        if self.graph.as_ref().is_some_and(|(k, _)| k == key) {
            return Action::Replay;
        }
        if self.refused.contains(key) {
            return Action::Eager;
        }
        if self.warm.as_ref() == Some(key) {
            return Action::Capture;
        }
        self.warm = Some(key.clone());
        Action::Eager
    }

    /// The graph captured for `key`: replaces the one before (a program keeps one).
    pub fn captured(&mut self, key: K, graph: G) {
        self.graph = Some((key, graph));
    }

    /// The key of an eager run as it ended (the run may grow what the key holds): the
    /// next run with it captures.
    pub fn warmed(&mut self, key: K) {
        self.warm = Some(key);
    }

    /// The capture for `key`, or its graph's launch, failed: later runs with it stay
    /// eager, and its graph is dropped. Returns whether this is the first refusal (worth a
    /// warning; the next ones are not).
    pub fn refuse(&mut self, key: K) -> bool {
        if self.graph.as_ref().is_some_and(|(k, _)| *k == key) {
            self.graph = None;
        }
        let first = self.refused.is_empty();
        if !self.refused.contains(&key) {
            // A few keys: each generation's buffers make a new one, retried once.
            if self.refused.len() == REFUSED_KEPT {
                self.refused.remove(0);
            }
            self.refused.push(key);
        }
        first
    }

    /// The graph to launch for `key` (after `next` said `Replay`).
    pub fn graph(&self, key: &K) -> Option<&G> {
        self.graph
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, g)| g)
    }

    /// Forgets the graph and the warm key (buffers it addresses are about to be freed).
    pub fn clear(&mut self) {
        self.warm = None;
        self.graph = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `keys` in turn, capturing where told (`fails`: keys whose capture fails), and
    /// returns each run's action.
    fn check(keys: &[u32], fails: &[u32], want: &[Action]) {
        let mut r: Replays<u32, String> = Replays::default();
        let mut got = vec![];
        for &k in keys {
            let a = r.next(&k);
            match a {
                Action::Capture if fails.contains(&k) => {
                    r.refuse(k);
                }
                Action::Capture => r.captured(k, format!("graph {k}")),
                Action::Replay => assert_eq!(r.graph(&k), Some(&format!("graph {k}"))),
                Action::Eager => {}
            }
            got.push(a);
        }
        assert_eq!(got, want, "keys {keys:?}");
    }

    #[test]
    fn warm_then_capture_then_replay() {
        use Action::*;
        // A generation: the first token warms, the second captures, the rest replay.
        check(&[1, 1, 1, 1], &[], &[Eager, Capture, Replay, Replay]);
        // A new key (another generation's buffers) warms and captures again; the old
        // graph is gone (one per program).
        check(
            &[1, 1, 1, 2, 2, 2, 1],
            &[],
            &[Eager, Capture, Replay, Eager, Capture, Replay, Eager],
        );
        // Alternating keys never repeat back to back: never captured.
        check(&[1, 2, 1, 2], &[], &[Eager, Eager, Eager, Eager]);
        // A refused key stays eager; another key still captures.
        check(
            &[1, 1, 1, 1, 2, 2, 2],
            &[1],
            &[Eager, Capture, Eager, Eager, Eager, Capture, Replay],
        );
    }

    #[test]
    fn refusal_warns_once_and_clear_forgets() {
        let mut r: Replays<u32, ()> = Replays::default();
        assert!(r.refuse(1));
        assert!(!r.refuse(2));
        assert!(!r.refuse(1));
        assert_eq!(r.next(&3), Action::Eager);
        assert_eq!(r.next(&3), Action::Capture);
        r.captured(3, ());
        assert_eq!(r.next(&3), Action::Replay);
        r.clear();
        assert_eq!(r.graph(&3), None);
        assert_eq!(r.next(&3), Action::Eager);
        // A graph whose launch fails is refused: dropped, and its key runs eagerly.
        assert_eq!(r.next(&3), Action::Capture);
        r.captured(3, ());
        r.refuse(3);
        assert_eq!(r.graph(&3), None);
        assert_eq!(r.next(&3), Action::Eager);
    }

    #[test]
    fn the_key_an_eager_run_ends_with_captures_next() {
        // The first run grew something its key holds (key 1 became 2).
        let mut r: Replays<u32, ()> = Replays::default();
        assert_eq!(r.next(&1), Action::Eager);
        r.warmed(2);
        assert_eq!(r.next(&2), Action::Capture);
    }

    #[test]
    fn setting() {
        assert_eq!(Graphs::parse(""), Ok(Graphs::Auto));
        assert_eq!(Graphs::parse("on"), Ok(Graphs::On));
        assert_eq!(Graphs::parse("off"), Ok(Graphs::Off));
        assert!(Graphs::parse("yes").unwrap_err().contains("`yes`"));
        assert!(Graphs::Auto.replays(0));
        assert!(!Graphs::Auto.replays(2));
        assert!(Graphs::On.replays(2));
        assert!(!Graphs::Off.replays(0));
    }
}
