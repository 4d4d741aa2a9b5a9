//! Worker threads started once and reused by every parallel kernel. A decode step runs
//! about two hundred small kernels; starting threads for each (`std::thread::scope`) cost
//! tens of microseconds apiece, more than the kernels themselves. Here a job is handed to
//! workers that spin for a short while after their last job, so back-to-back kernels start
//! within microseconds, and park (costing nothing) when the program is idle.
//!
//! A job is a number of parts that the caller and the workers claim one at a time, so a
//! worker that the OS has not scheduled (a busy machine) delays nothing: the caller runs
//! the parts it would have. Which thread runs a part never changes what the part computes.
//!
//! One job at a time: a caller that finds the pool busy (another thread's job, or a job
//! started from inside a job) runs all parts itself.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a worker spins for the next job before parking. Kernels of one program run
/// microseconds apart; longer gaps (the caller's own work between runs) pay one wake-up.
const SPIN: Duration = Duration::from_micros(100);

type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// What the caller and the workers share.
struct Shared {
    /// The job's generation, shifted left once, plus 1 while workers may join it.
    state: AtomicU64,
    /// Points at the caller's `Job` (a fat reference on its stack); read only by workers
    /// that joined while the job was open, and the caller waits for them before returning.
    job: AtomicPtr<()>,
    parts: AtomicUsize,
    /// The next part nobody has claimed.
    next: AtomicUsize,
    /// Workers inside the current job.
    active: AtomicUsize,
    panicked: AtomicBool,
}

struct Pool {
    shared: &'static Shared,
    workers: Vec<Thread>,
    /// Held by the caller for the whole job.
    busy: Mutex<()>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Leaked: the workers run as long as the process and read it without a lock.
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            parts: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        }));
        let mut workers = vec![];
        for w in 1..super::threads() {
            // A worker that cannot start leaves the pool narrower, not broken.
            match std::thread::Builder::new()
                .name(format!("encdecc-cpu-{w}"))
                .spawn(move || work(shared))
            {
                Ok(h) => workers.push(h.thread().clone()),
                Err(_) => break,
            }
        }
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    })
}

/// How many threads a job runs on at once: the caller and the workers.
pub fn width() -> usize {
    pool().workers.len() + 1
}

/// Runs `f(0)`, …, `f(parts - 1)`, each once, on the caller and the workers, and returns
/// when all have. A panic in any part is raised again here, after every part has stopped.
pub fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let guard = match pool.busy.try_lock() {
        Ok(g) if parts > 1 && !pool.workers.is_empty() => g,
        _ => {
            (0..parts).for_each(f);
            return;
        }
    };
    let s = pool.shared;
    let job: Job = f;
    s.job
        .store(&job as *const Job as *mut (), Ordering::Relaxed);
    s.parts.store(parts, Ordering::Relaxed);
    s.next.store(0, Ordering::Relaxed);
    s.panicked.store(false, Ordering::Relaxed);
    let epoch = (s.state.load(Ordering::Relaxed) >> 1).wrapping_add(1);
    s.state.store(epoch << 1 | 1, Ordering::SeqCst);
    for w in pool.workers.iter().take(parts - 1) {
        w.unpark();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| claim(s, job)));
    // Closed: a worker that arrives now leaves without reading the job. Those inside may
    // still run a part, and they read `job` on this stack frame, so wait for them (also
    // when a part here panicked). SeqCst pairs this store and load with the workers'
    // increment of `active` and load of `state`: either this sees them, or they see this.
    s.state.store(epoch << 1, Ordering::SeqCst);
    let mut spins = 0u32;
    while s.active.load(Ordering::SeqCst) != 0 {
        spins = spins.saturating_add(1);
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            // A worker was descheduled mid-part (a busy machine): give it the core.
            std::thread::yield_now();
        }
    }
    drop(guard);
    if let Err(e) = mine {
        resume_unwind(e);
    }
    if s.panicked.load(Ordering::Relaxed) {
        panic!("a CPU worker thread panicked");
    }
}

/// Runs unclaimed parts of the current job until none are left.
fn claim(s: &Shared, job: Job) {
    let parts = s.parts.load(Ordering::Relaxed);
    loop {
        let p = s.next.fetch_add(1, Ordering::Relaxed);
        if p >= parts {
            return;
        }
        job(p);
    }
}

/// A worker: joins each job while it is open and claims parts of it.
fn work(s: &'static Shared) {
    // Generation 0 is "no job yet": a worker that starts after the first job was published
    // must still see it as new.
    let mut seen = 0;
    loop {
        let state = wait_for_job(s, seen);
        seen = state >> 1;
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.state.load(Ordering::SeqCst) == state {
            // SAFETY: the job is still open, so the caller has not passed its wait for
            // `active` and the reference it published before opening the job is alive.
            let job: Job = unsafe { *(s.job.load(Ordering::Relaxed) as *const Job) };
            if catch_unwind(AssertUnwindSafe(|| claim(s, job))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spins, then parks, until an open job of a generation other than `seen` is published.
fn wait_for_job(s: &Shared, seen: u64) -> u64 {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let state = s.state.load(Ordering::Acquire);
        if state & 1 == 1 && state >> 1 != seen {
            return state;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(256) || start.elapsed() < SPIN {
            std::hint::spin_loop();
        } else {
            // `unpark` after the job is published wakes this, or makes it return at once.
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_part_runs_once() {
        for parts in [0, 1, 2, 3, 7, 64] {
            let hits: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
            for _ in 0..100 {
                run(parts, &|p| {
                    hits[p].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 100),
                "{parts} parts"
            );
        }
    }

    #[test]
    fn nested_and_concurrent_jobs_run_on_the_caller() {
        let total = AtomicU64::new(0);
        std::thread::scope(|sc| {
            for _ in 0..3 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        run(4, &|_| {
                            run(3, &|q| {
                                total.fetch_add(q as u64 + 1, Ordering::Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 4 * 6);
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_pool_survives() {
        let r = catch_unwind(|| {
            run(4, &|p| {
                if p == 1 {
                    panic!("part 1");
                }
            })
        });
        assert!(r.is_err());
        let n = AtomicU64::new(0);
        run(4, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 4);
    }
}
