//! One worker of a run: its state handle, the dataflow it builds, and the commit loop that
//! hands each epoch in once the probe at the end of the dataflow has passed it.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_operators::Epoch;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::{stages, Plan, WorkerError};

/// Builds the worker's dataflow and steps it until every input is done.
pub(super) fn run(worker: &mut Worker, plan: &Plan) -> Result<(), WorkerError> {
    sluice_state::sched::set_thread_nice(plan.nice);
    let (index, peers) = (worker.index(), worker.peers());
    let state = Rc::new(RefCell::new(plan.store.worker(index)));
    let probe = ProbeHandle::<Epoch>::new();
    worker.dataflow::<Epoch, _, _>(|scope| stages::build(scope, plan, (index, peers), &state, &probe))?;
    commit_loop(worker, plan, &state, &probe)
}

/// Steps the dataflow; whenever the probe passes an epoch, hands the epoch's staged state in
/// (the store commits it once every worker has). Worker 0 records each commit.
fn commit_loop(worker: &mut Worker, plan: &Plan, state: &Rc<RefCell<sluice_state::WorkerState>>, probe: &ProbeHandle<Epoch>) -> Result<(), WorkerError> {
    let metrics = &plan.metrics;
    let mut handed: Option<Epoch> = None;
    let mut seen_resume = plan.store.resume_epoch();
    loop {
        worker.step_or_park(Some(Duration::from_millis(1)));
        let frontier = probe.with_frontier(|f| f.first().copied());
        if frontier != handed {
            handed = frontier;
            let committed = state.borrow_mut().hand_in(frontier).map_err(WorkerError::Commit)?;
            if committed.is_some() {
                metrics.commit.commits.fetch_add(1, Ordering::Relaxed);
            }
        }
        if worker.index() == 0 {
            let resume = plan.store.resume_epoch();
            if resume != seen_resume {
                if seen_resume == plan.resumed_at_epoch && plan.resumed_at_epoch > 0 {
                    tracing::info!(epoch = resume - 1, ms = plan.started.elapsed().as_millis() as u64, "first commit after recovery");
                }
                seen_resume = resume;
                let now = sluice_operators::event::now_us();
                metrics.commit.last_ms.store(now / 1000, Ordering::Relaxed);
                metrics.latency.committed_before(resume, now);
                if let Some(info) = plan.store.last_commit() {
                    metrics.commit.duration_us.record(info.duration.as_micros() as u64);
                }
                let (batches, coalesced) = plan.store.commit_counts();
                metrics.commit.batches.store(batches, Ordering::Relaxed);
                metrics.commit.coalesced.store(coalesced, Ordering::Relaxed);
            }
        }
        if frontier.is_none() {
            return Ok(());
        }
    }
}
