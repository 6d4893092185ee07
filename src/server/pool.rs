//! The queue between the connections and the worker pool: jobs in arrival order, taken by
//! whichever worker is free, and closed at shutdown (the jobs already queued still run).
//!
//! Why not a channel: crossbeam's receiver spins and then calls `sched_yield` a few times
//! before it sleeps, and with dozens of workers (32 under `--cache none`) on a few cores those
//! yields were a third of `serve`'s CPU under 4 KiB random I/O. Here an idle worker sleeps at
//! once on a condition variable, and a job is handed over with one wake-up, and none when no
//! worker is asleep.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A unit of work for the pool.
pub type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for a worker.
#[derive(Default)]
pub struct Queue {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Workers asleep in [`Queue::take`].
    idle: usize,
    closed: bool,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; gives it back when the queue is closed (the caller drops it unrun).
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let mut s = self.state();
        if s.closed {
            return Err(job);
        }
        s.jobs.push_back(job);
        let wake = s.idle > 0;
        drop(s);
        if wake {
            self.cv.notify_one();
        }
        Ok(())
    }

    /// The next job, waiting for one; None once the queue is closed and empty.
    pub fn take(&self) -> Option<Job> {
        let mut s = self.state();
        loop {
            if let Some(j) = s.jobs.pop_front() {
                return Some(j);
            }
            if s.closed {
                return None;
            }
            s.idle += 1;
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
            s.idle -= 1;
        }
    }

    /// Refuses new jobs from now on; the workers finish those queued, then [`Queue::take`]
    /// answers None.
    pub fn close(&self) {
        self.state().closed = true;
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_job_runs_once_and_a_closed_queue_drains_then_refuses() {
        let q = Arc::new(Queue::default());
        let ran = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || {
                    while let Some(j) = q.take() {
                        j();
                    }
                })
            })
            .collect();
        for _ in 0..1000 {
            let ran = ran.clone();
            assert!(q
                .push(Box::new(move || {
                    ran.fetch_add(1, Ordering::SeqCst);
                }))
                .is_ok());
        }
        q.close();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 1000);
        assert!(q.push(Box::new(|| {})).is_err());
        assert!(q.take().is_none());
    }

    #[test]
    fn jobs_queued_before_the_close_still_run() {
        let q = Queue::default();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let ran = ran.clone();
            let _ = q.push(Box::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }));
        }
        q.close();
        while let Some(j) = q.take() {
            j();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }
}
