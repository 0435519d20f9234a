//! Payment reconciliation: provider events (webhooks) against ledger rows (CDC), per payment,
//! as an incremental differential-dataflow computation whose output is a changelog.
//!
//! ```text
//!   provider events ──┐                         ┌──> reconciled rows (changes: -old, +new)
//!                     ├─> reduce per payment ──>┤ settle
//!   ledger versions ──┘   (both sides' views)   └─< clocks (each side's largest event time)
//! ```
//!
//! - **Provider side**: the view of a payment is its latest event by event time (ties by event
//!   id): each event carries the payment's amount, currency and status as of that event, as
//!   providers' charge objects do. A duplicate (the same event again) changes nothing; a refund
//!   that arrives before its charge gives the same view once both are in.
//! - **Ledger side**: versions of the row keyed by payment id, ordered by their position (the
//!   LSN for CDC); the latest wins, a delete removes the row. A version seen twice (a connector
//!   replaying after its restart) changes nothing.
//! - **Status** of a payment with both sides: `currency_mismatch`, else `amount_mismatch`, else
//!   `status_mismatch`, else `matched`. With one side only: `pending` until the *other*
//!   side's clock (the largest event time seen on that input) is more than `settle_ms` past the
//!   present side's first event time, then `missing_in_ledger` (provider only) or
//!   `missing_at_provider` (ledger only). A side whose stream lags (a CDC connector behind)
//!   declares nothing missing until it has caught up past the settle time.
//! - **Output**: every change of a payment's row is a retraction of the old row (diff −1) and an
//!   insertion of the new one (+1), in the epoch whose input caused it. Given the same input per
//!   epoch, the output is the same for any number of workers.
//!
//! Example: ledger row p1 = 10.00 USD `succeeded` at epoch 1 → `(+1, p1 pending)`; the
//! provider's clock passes the settle time at epoch 2 → `(−1, p1 pending), (+1, p1 missing_at_provider)`; the
//! provider's late webhook for p1 (10.00 USD `succeeded`) at epoch 3 →
//! `(−1, p1 missing_at_provider), (+1, p1 matched)`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;

use crate::epoch::{EpochStash, HeldCapabilities};
use crate::event::{route_hash, Epoch};

/// One provider event (a charge, refund or dispute webhook), decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProviderEvent {
    /// The payment it is about.
    pub payment_id: String,
    /// The provider's event id (the idempotency key).
    pub event_id: String,
    /// Event time (ms since the Unix epoch).
    pub time_ms: i64,
    /// The payment's amount in minor units (cents), as of this event.
    pub amount: i64,
    /// ISO currency code, upper case.
    pub currency: String,
    /// The payment's status as of this event, in the ledger's vocabulary.
    pub status: String,
}

/// A ledger row's values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerRow {
    /// Amount in minor units.
    pub amount: i64,
    /// ISO currency code, upper case.
    pub currency: String,
    /// Status.
    pub status: String,
    /// The row's event time (ms): its time column, or when the change was made.
    pub time_ms: i64,
}

/// One version of a ledger row: a change from CDC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerVersion {
    /// The row's key.
    pub payment_id: String,
    /// Its order among the row's versions (the LSN).
    pub position: u64,
    /// The row after the change; `None` for a delete.
    pub row: Option<LedgerRow>,
}

/// The provider's side of a payment: its latest event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProviderView {
    /// The earliest event's time (when the payment was first seen at the provider).
    pub first_ms: i64,
    /// The latest event's values.
    pub latest: ProviderValues,
}

/// The ledger's side of a payment: its latest version, if not deleted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerView {
    /// The earliest time among the row's versions.
    pub first_ms: i64,
    /// The latest version's values.
    pub latest: LedgerValues,
}

/// A payment's reconciliation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Both sides agree.
    Matched,
    /// Amounts differ.
    AmountMismatch,
    /// Currencies differ.
    CurrencyMismatch,
    /// Statuses differ.
    StatusMismatch,
    /// Only the provider has it, for longer than the settle time.
    MissingInLedger,
    /// Only the ledger has it, for longer than the settle time.
    MissingAtProvider,
    /// Only one side has it, within the settle time.
    Pending,
}

impl Status {
    /// Every status, in output order.
    pub const ALL: [Status; 7] = [
        Status::Matched,
        Status::AmountMismatch,
        Status::CurrencyMismatch,
        Status::StatusMismatch,
        Status::MissingInLedger,
        Status::MissingAtProvider,
        Status::Pending,
    ];

    /// The name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Status::Matched => "matched",
            Status::AmountMismatch => "amount_mismatch",
            Status::CurrencyMismatch => "currency_mismatch",
            Status::StatusMismatch => "status_mismatch",
            Status::MissingInLedger => "missing_in_ledger",
            Status::MissingAtProvider => "missing_at_provider",
            Status::Pending => "pending",
        }
    }
}

/// Both sides of a payment, as the reduce sees them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pairing {
    /// The provider's side.
    pub provider: Option<ProviderView>,
    /// The ledger's side.
    pub ledger: Option<LedgerView>,
}

/// The provider's values in a reconciled row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProviderValues {
    /// The latest event's id.
    pub event_id: String,
    /// Its time.
    pub time_ms: i64,
    /// Amount (minor units).
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Status.
    pub status: String,
}

/// The ledger's values in a reconciled row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LedgerValues {
    /// The latest version's position (LSN).
    pub position: u64,
    /// Its time.
    pub time_ms: i64,
    /// Amount (minor units).
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// Status.
    pub status: String,
}

/// A payment's row in the reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Reconciled {
    /// The payment.
    pub payment_id: String,
    /// Its status.
    pub status: Status,
    /// The provider's values.
    pub provider: Option<ProviderValues>,
    /// The ledger's values.
    pub ledger: Option<LedgerValues>,
    /// For a one-sided row (`pending`, `missing_*`): the first event time of the side present.
    pub since_ms: Option<i64>,
}

impl Reconciled {
    /// The amount counted as unreconciled (minor units, currency): the provider's for rows not
    /// `matched` or `pending`, else the ledger's; `None` for matched and pending rows.
    pub fn unreconciled(&self) -> Option<(i64, &str)> {
        if matches!(self.status, Status::Matched | Status::Pending) {
            return None;
        }
        match (&self.provider, &self.ledger) {
            (Some(p), _) => Some((p.amount, p.currency.as_str())),
            (None, Some(l)) => Some((l.amount, l.currency.as_str())),
            (None, None) => None,
        }
    }
}

/// The provider's view of a payment from its events: the latest by (time, event id).
pub fn provider_view<'a>(events: impl IntoIterator<Item = &'a ProviderEvent>) -> Option<ProviderView> {
    let mut latest: Option<&ProviderEvent> = None;
    let mut first = i64::MAX;
    for e in events {
        first = first.min(e.time_ms);
        if latest.is_none_or(|l| (e.time_ms, &e.event_id, e) > (l.time_ms, &l.event_id, l)) {
            latest = Some(e);
        }
    }
    latest.map(|e| ProviderView {
        first_ms: first,
        latest: ProviderValues { event_id: e.event_id.clone(), time_ms: e.time_ms, amount: e.amount, currency: e.currency.clone(), status: e.status.clone() },
    })
}

/// The ledger's view of a row from its versions: the one at the largest position, unless it
/// is a delete.
pub fn ledger_view<'a>(versions: impl IntoIterator<Item = &'a LedgerVersion>) -> Option<LedgerView> {
    let mut latest: Option<&LedgerVersion> = None;
    let mut first = i64::MAX;
    for v in versions {
        if let Some(r) = &v.row {
            first = first.min(r.time_ms);
        }
        if latest.is_none_or(|l| (v.position, v) > (l.position, l)) {
            latest = Some(v);
        }
    }
    let latest = latest?;
    latest.row.as_ref().map(|row| LedgerView {
        first_ms: first,
        latest: LedgerValues {
            position: latest.position,
            time_ms: row.time_ms,
            amount: row.amount,
            currency: row.currency.clone(),
            status: row.status.clone(),
        },
    })
}

/// Each side's clock: the largest event time seen on its input (`None`: nothing yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Clocks {
    /// The provider's.
    pub provider: Option<i64>,
    /// The ledger's.
    pub ledger: Option<i64>,
}

impl Clocks {
    fn get(&self, side: usize) -> Option<i64> {
        if side == PROVIDER {
            self.provider
        } else {
            self.ledger
        }
    }

    fn advance(&mut self, side: usize, time: i64) {
        let slot = if side == PROVIDER { &mut self.provider } else { &mut self.ledger };
        *slot = Some(slot.map_or(time, |c| c.max(time)));
    }
}

const PROVIDER: usize = 0;
const LEDGER: usize = 1;

/// The status of a payment given both sides, the clocks and the settle time. `None` when
/// neither side has it.
pub fn status_of(provider: Option<&ProviderView>, ledger: Option<&LedgerView>, clocks: Clocks, settle_ms: i64) -> Option<Status> {
    let overdue = |clock: Option<i64>, first: i64| clock.is_some_and(|c| c > first.saturating_add(settle_ms));
    Some(match (provider.map(|p| &p.latest), ledger.map(|l| &l.latest)) {
        (Some(p), Some(l)) if p.currency != l.currency => Status::CurrencyMismatch,
        (Some(p), Some(l)) if p.amount != l.amount => Status::AmountMismatch,
        (Some(p), Some(l)) if p.status != l.status => Status::StatusMismatch,
        (Some(_), Some(_)) => Status::Matched,
        (Some(_), None) if overdue(clocks.ledger, provider.map_or(0, |p| p.first_ms)) => Status::MissingInLedger,
        (None, Some(_)) if overdue(clocks.provider, ledger.map_or(0, |l| l.first_ms)) => Status::MissingAtProvider,
        (Some(_), None) | (None, Some(_)) => Status::Pending,
        (None, None) => return None,
    })
}

/// The row of a payment (see [`status_of`]).
pub fn reconciled(payment_id: &str, pairing: &Pairing, clocks: Clocks, settle_ms: i64) -> Option<Reconciled> {
    let status = status_of(pairing.provider.as_ref(), pairing.ledger.as_ref(), clocks, settle_ms)?;
    let since_ms = match (&pairing.provider, &pairing.ledger) {
        (Some(p), None) => Some(p.first_ms),
        (None, Some(l)) => Some(l.first_ms),
        _ => None,
    };
    Some(Reconciled {
        payment_id: payment_id.to_string(),
        status,
        provider: pairing.provider.as_ref().map(|p| p.latest.clone()),
        ledger: pairing.ledger.as_ref().map(|l| l.latest.clone()),
        since_ms,
    })
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Side {
    Provider(ProviderEvent),
    Ledger(LedgerVersion),
}

/// The reconciliation of `provider` events against `ledger` versions (both insert-only
/// collections), as a collection of [`Reconciled`] rows: one per payment, changing as input
/// arrives and as the clocks pass settle times.
pub fn reconcile<'scope>(
    provider: VecCollection<'scope, Epoch, ProviderEvent>,
    ledger: VecCollection<'scope, Epoch, LedgerVersion>,
    settle_ms: i64,
) -> VecCollection<'scope, Epoch, Reconciled> {
    // The clocks: each worker's largest event time per side and batch, to every worker.
    let times = provider
        .clone()
        .inner
        .map(|(e, t, _)| (t, PROVIDER, e.time_ms))
        .concat(ledger.clone().inner.flat_map(|(v, t, _)| v.row.map(|r| (t, LEDGER, r.time_ms))));
    let clock = times
        .unary_frontier::<CapacityContainerBuilder<Vec<ClockTick>>, _, _, _>(Pipeline, "ReconcileClock", |cap, _| {
            let mut held = HeldCapabilities::new(vec![cap]);
            move |(input, frontier), output| {
                let mut max: BTreeMap<(Epoch, usize), i64> = BTreeMap::new();
                input.for_each_stamp(|_, data| {
                    for (epoch, side, time) in data.flat_map(|d| d.drain(..)) {
                        let slot = max.entry((epoch, side)).or_insert(time);
                        *slot = (*slot).max(time);
                    }
                });
                for ((epoch, side), time) in max {
                    output.session(&held.at(0, epoch)).give((epoch, side, time));
                }
                held.downgrade(frontier.frontier().first().copied());
            }
        })
        .broadcast();

    let sides = provider.map(|e| (e.payment_id.clone(), Side::Provider(e))).concat(ledger.map(|v| (v.payment_id.clone(), Side::Ledger(v))));
    let pairs = sides.reduce(|_payment, input, output: &mut Vec<(Pairing, isize)>| {
        let present = || input.iter().filter(|(_, r)| *r > 0).map(|(s, _)| *s);
        let provider = provider_view(present().filter_map(|s| match s {
            Side::Provider(e) => Some(e),
            Side::Ledger(_) => None,
        }));
        let ledger = ledger_view(present().filter_map(|s| match s {
            Side::Ledger(v) => Some(v),
            Side::Provider(_) => None,
        }));
        if provider.is_some() || ledger.is_some() {
            output.push((Pairing { provider, ledger }, 1));
        }
    });
    settle(pairs.inner, clock, settle_ms).as_collection()
}

type PairingUpdate = ((String, Pairing), Epoch, isize);

/// (epoch, side, the side's largest event time in that epoch on one worker).
type ClockTick = (Epoch, usize, i64);

/// An epoch's pairing changes (payment, pairing, diff) and each side's largest event time.
type EpochInput = (Vec<(String, Pairing, isize)>, [Option<i64>; 2]);

/// Per payment: the row for its current pairing and the clocks; re-evaluated when the pairing
/// changes and when the other side's clock passes a one-sided payment's settle time.
fn settle<'scope>(
    pairs: Stream<'scope, Epoch, Vec<PairingUpdate>>,
    clock: Stream<'scope, Epoch, Vec<ClockTick>>,
    settle_ms: i64,
) -> Stream<'scope, Epoch, Vec<(Reconciled, Epoch, isize)>> {
    let exchange = Exchange::new(|((payment, _), _, _): &PairingUpdate| route_hash(payment));
    pairs.binary_frontier::<_, CapacityContainerBuilder<Vec<(Reconciled, Epoch, isize)>>, _, _, _, _>(
        clock,
        exchange,
        Pipeline,
        "ReconcileSettle",
        move |cap, _| {
            let mut cap = Some(cap);
            let mut pending: EpochStash<EpochInput> = EpochStash::new();
            let mut pairings: HashMap<String, Pairing> = HashMap::new();
            let mut rows: HashMap<String, Reconciled> = HashMap::new();
            // One-sided payments not yet overdue, by the other side's clock time after which
            // they are: [waiting on the provider's clock, on the ledger's].
            let mut deadlines: [BTreeSet<(i64, String)>; 2] = Default::default();
            let mut clocks = Clocks::default();
            move |(pairs_in, pairs_frontier), (clock_in, clock_frontier), output| {
                // By the time in the data: a container's stamp may be earlier.
                pairs_in.for_each_stamp(|_, data| {
                    for ((payment, pairing), time, diff) in data.flat_map(|d| d.drain(..)) {
                        pending.at(time).0.push((payment, pairing, diff));
                    }
                });
                clock_in.for_each_stamp(|_, data| {
                    for (epoch, side, max) in data.flat_map(|d| d.drain(..)) {
                        let slot = &mut pending.at(epoch).1[side];
                        *slot = Some(slot.map_or(max, |s: i64| s.max(max)));
                    }
                });
                let frontier = match (pairs_frontier.frontier().first(), clock_frontier.frontier().first()) {
                    (Some(a), Some(b)) => Some(*a.min(b)),
                    (a, b) => a.or(b).copied(),
                };
                while let Some((epoch, (mut changes, max))) = pending.pop_complete(frontier) {
                    for (side, m) in max.into_iter().enumerate() {
                        if let Some(m) = m {
                            clocks.advance(side, m);
                        }
                    }
                    // Retractions before insertions, so that a payment's new pairing wins.
                    changes.sort_by(|a, b| (a.2, &a.0).cmp(&(b.2, &b.0)));
                    let mut touched: BTreeSet<String> = BTreeSet::new();
                    for (payment, pairing, diff) in changes {
                        if diff < 0 {
                            if pairings.get(&payment) == Some(&pairing) {
                                pairings.remove(&payment);
                            }
                        } else {
                            pairings.insert(payment.clone(), pairing);
                        }
                        touched.insert(payment);
                    }
                    // Payments whose settle time the other side's clock has passed.
                    for (side, waiting) in deadlines.iter_mut().enumerate() {
                        let Some(c) = clocks.get(side) else { continue };
                        while waiting.first().is_some_and(|first| first.0 < c) {
                            let (_, payment) = waiting.pop_first().expect("invariant: not empty");
                            touched.insert(payment);
                        }
                    }
                    let at = cap.as_ref().expect("invariant: held until the inputs end").delayed(&epoch);
                    let mut session = output.session(&at);
                    for payment in touched {
                        let new = pairings.get(&payment).and_then(|p| reconciled(&payment, p, clocks, settle_ms));
                        if let Some((side, deadline)) = rows.get(&payment).and_then(|old| deadline_of(old, settle_ms)) {
                            deadlines[side].remove(&(deadline, payment.clone()));
                        }
                        if let Some(row) = new.as_ref().filter(|r| r.status == Status::Pending) {
                            let (side, deadline) = deadline_of(row, settle_ms).expect("invariant: a pending row is one-sided");
                            deadlines[side].insert((deadline, payment.clone()));
                        }
                        let old = match &new {
                            Some(row) => rows.insert(payment.clone(), row.clone()),
                            None => rows.remove(&payment),
                        };
                        if old != new {
                            if let Some(old) = old {
                                session.give((old, epoch, -1));
                            }
                            if let Some(new) = new {
                                session.give((new, epoch, 1));
                            }
                        }
                    }
                }
                match (frontier, cap.as_mut()) {
                    (Some(f), Some(c)) => c.downgrade(&f),
                    (None, _) => cap = None,
                    _ => {}
                }
            }
        },
    )
}

/// The clock (the other side's) and its value after which a one-sided row is overdue.
fn deadline_of(row: &Reconciled, settle_ms: i64) -> Option<(usize, i64)> {
    let side = if row.provider.is_some() { LEDGER } else { PROVIDER };
    row.since_ms.map(|s| (side, s.saturating_add(settle_ms)))
}

/// Totals of the reconciliation after an epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Payments per status (every status present, zeros included).
    pub counts: BTreeMap<String, i64>,
    /// Unreconciled amount per currency (minor units): see [`Reconciled::unreconciled`].
    pub unreconciled: BTreeMap<String, i64>,
}

/// Keeps the totals of a stream of row changes; `apply` one change at a time.
#[derive(Debug, Default)]
pub struct Totals {
    counts: BTreeMap<Status, i64>,
    unreconciled: BTreeMap<String, i64>,
}

impl Totals {
    /// Applies one change.
    pub fn apply(&mut self, row: &Reconciled, diff: isize) {
        let diff = diff as i64;
        *self.counts.entry(row.status).or_default() += diff;
        if let Some((amount, currency)) = row.unreconciled() {
            let slot = self.unreconciled.entry(currency.to_string()).or_default();
            *slot += amount * diff;
            if *slot == 0 {
                self.unreconciled.remove(currency);
            }
        }
    }

    /// The totals now.
    pub fn summary(&self) -> Summary {
        Summary {
            counts: Status::ALL.iter().map(|s| (s.name().to_string(), self.counts.get(s).copied().unwrap_or(0))).collect(),
            unreconciled: self.unreconciled.clone(),
        }
    }
}

/// The totals after each epoch that changed them, on worker 0. Changes at epochs before
/// `emit_from` (a replay of committed input) count but are not emitted.
pub fn summarize<'scope>(changes: Stream<'scope, Epoch, Vec<(Reconciled, Epoch, isize)>>, emit_from: Epoch) -> Stream<'scope, Epoch, Vec<Summary>> {
    changes.unary_frontier::<CapacityContainerBuilder<Vec<Summary>>, _, _, _>(
        Exchange::new(|_: &(Reconciled, Epoch, isize)| 0),
        "ReconcileSummary",
        move |cap, _| {
            let mut cap = Some(cap);
            let mut pending: EpochStash<Vec<(Reconciled, isize)>> = EpochStash::new();
            let mut totals = Totals::default();
            move |(input, frontier), output| {
                input.for_each_stamp(|_, data| {
                    for (r, time, d) in data.flat_map(|d| d.drain(..)) {
                        pending.at(time).push((r, d));
                    }
                });
                let frontier = frontier.frontier().first().copied();
                while let Some((epoch, changes)) = pending.pop_complete(frontier) {
                    for (row, diff) in &changes {
                        totals.apply(row, *diff);
                    }
                    if epoch >= emit_from && !changes.is_empty() {
                        let at = cap.as_ref().expect("invariant: held until the input ends").delayed(&epoch);
                        output.session(&at).give(totals.summary());
                    }
                }
                match (frontier, cap.as_mut()) {
                    (Some(f), Some(c)) => c.downgrade(&f),
                    (None, _) => cap = None,
                    _ => {}
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use differential_dataflow::input::Input;
    use std::sync::{Arc, Mutex};
    use timely::dataflow::operators::Inspect;
    use timely::dataflow::operators::Probe;

    type Change = (Epoch, isize, String, &'static str);

    fn charge(payment: &str, event: &str, time_ms: i64, amount: i64, status: &str) -> ProviderEvent {
        ProviderEvent { payment_id: payment.into(), event_id: event.into(), time_ms, amount, currency: "USD".into(), status: status.into() }
    }

    fn row(payment: &str, position: u64, time_ms: i64, amount: i64, status: &str) -> LedgerVersion {
        LedgerVersion { payment_id: payment.into(), position, row: Some(LedgerRow { amount, currency: "USD".into(), status: status.into(), time_ms }) }
    }

    /// Runs the reconciliation on `workers` workers over `epochs` of (provider events, ledger
    /// versions), fed by worker 0; returns every change (epoch, diff, payment, status), sorted,
    /// and the rows.
    fn run_on(workers: usize, epochs: Vec<(Vec<ProviderEvent>, Vec<LedgerVersion>)>, settle_ms: i64) -> (Vec<Change>, Vec<(Epoch, isize, Reconciled)>) {
        let out: Arc<Mutex<Vec<(Epoch, isize, Reconciled)>>> = Arc::default();
        let sink = Arc::clone(&out);
        timely::execute(timely::Config::process(workers), move |worker| {
            let epochs = if worker.index() == 0 { epochs.clone() } else { Vec::new() };
            let (mut p_in, mut l_in, probe) = worker.dataflow::<Epoch, _, _>(|scope| {
                let (p_in, provider) = scope.new_collection::<ProviderEvent, isize>();
                let (l_in, ledger) = scope.new_collection::<LedgerVersion, isize>();
                let sink = Arc::clone(&sink);
                let probe = reconcile(provider, ledger, settle_ms).inner.inspect(move |(r, t, d)| sink.lock().unwrap().push((*t, *d, r.clone()))).probe().0;
                (p_in, l_in, probe)
            });
            for (i, (events, versions)) in epochs.into_iter().enumerate() {
                let epoch = i as Epoch + 1;
                p_in.advance_to(epoch);
                l_in.advance_to(epoch);
                for e in events {
                    p_in.insert(e);
                }
                for v in versions {
                    l_in.insert(v);
                }
                p_in.flush();
                l_in.flush();
            }
            drop((p_in, l_in));
            while !probe.done() {
                worker.step();
            }
        })
        .unwrap();
        let mut rows = out.lock().unwrap().clone();
        rows.sort();
        let mut changes: Vec<Change> = rows.iter().map(|(t, d, r)| (*t, *d, r.payment_id.clone(), r.status.name())).collect();
        changes.sort();
        (changes, rows)
    }

    fn run(epochs: Vec<(Vec<ProviderEvent>, Vec<LedgerVersion>)>, settle_ms: i64) -> (Vec<Change>, Vec<(Epoch, isize, Reconciled)>) {
        run_on(1, epochs, settle_ms)
    }

    fn c(epoch: Epoch, diff: isize, payment: &str, status: &'static str) -> Change {
        (epoch, diff, payment.to_string(), status)
    }

    #[test]
    fn a_late_webhook_corrects_missing_at_provider_to_matched() {
        let (changes, _) = run(
            vec![
                (vec![], vec![row("p1", 10, 1_000, 1000, "succeeded")]),
                // Another payment moves the clock past p1's settle time (1,000 + 60,000).
                (vec![charge("p2", "evt_2", 61_001, 500, "succeeded")], vec![row("p2", 11, 61_001, 500, "succeeded")]),
                (vec![charge("p1", "evt_1", 900, 1000, "succeeded")], vec![]),
            ],
            60_000,
        );
        assert_eq!(
            changes,
            vec![
                c(1, 1, "p1", "pending"),
                c(2, -1, "p1", "pending"),
                c(2, 1, "p1", "missing_at_provider"),
                c(2, 1, "p2", "matched"),
                c(3, -1, "p1", "missing_at_provider"),
                c(3, 1, "p1", "matched"),
            ]
        );
    }

    #[test]
    fn duplicate_webhooks_are_applied_once() {
        let e = charge("p1", "evt_1", 1_000, 1000, "succeeded");
        let (changes, _) = run(vec![(vec![e.clone(); 50], vec![row("p1", 10, 1_000, 1000, "succeeded")]), (vec![e.clone(), e], vec![])], 60_000);
        assert_eq!(changes, vec![c(1, 1, "p1", "matched")]);
    }

    #[test]
    fn a_refund_before_its_charge_gives_the_refunded_view() {
        let (changes, rows) = run(
            vec![
                (vec![charge("p1", "evt_refund", 2_000, 1000, "refunded")], vec![row("p1", 10, 1_000, 1000, "refunded")]),
                (vec![charge("p1", "evt_charge", 1_000, 1000, "succeeded")], vec![]),
            ],
            60_000,
        );
        // The charge is older than the refund: the view stays the refund's, nothing changes.
        assert_eq!(changes, vec![c(1, 1, "p1", "matched")]);
        let p = rows[0].2.provider.as_ref().unwrap();
        assert_eq!((p.event_id.as_str(), p.time_ms, p.status.as_str()), ("evt_refund", 2_000, "refunded"));
    }

    #[test]
    fn a_ledger_update_fixes_an_amount_mismatch_and_a_replay_changes_nothing() {
        let (changes, rows) = run(
            vec![
                (vec![charge("p1", "evt_1", 1_000, 1000, "succeeded")], vec![row("p1", 10, 1_000, 999, "succeeded")]),
                (vec![], vec![row("p1", 20, 1_500, 1000, "succeeded")]),
                // The connector replays the first version after its restart.
                (vec![], vec![row("p1", 10, 1_000, 999, "succeeded")]),
            ],
            60_000,
        );
        assert_eq!(changes, vec![c(1, 1, "p1", "amount_mismatch"), c(2, -1, "p1", "amount_mismatch"), c(2, 1, "p1", "matched")]);
        let mismatch = &rows.iter().find(|(t, d, _)| (*t, *d) == (1, 1)).unwrap().2;
        assert_eq!((mismatch.provider.as_ref().unwrap().amount, mismatch.ledger.as_ref().unwrap().amount), (1000, 999));
    }

    #[test]
    fn one_sided_payments_go_missing_only_after_the_settle_time() {
        let (changes, _) = run(
            vec![
                (vec![charge("p1", "evt_1", 0, 700, "succeeded")], vec![]),
                // Clock at exactly the settle time: not longer than it yet.
                (vec![charge("p2", "evt_2", 10_000, 1, "succeeded")], vec![row("p2", 1, 10_000, 1, "succeeded")]),
                (vec![charge("p3", "evt_3", 10_001, 1, "succeeded")], vec![row("p3", 2, 10_001, 1, "succeeded")]),
                // A delete leaves the provider's side alone: pending again (first seen at 10,001).
                (vec![], vec![row("p3", 3, 10_001, 1, "succeeded"), LedgerVersion { payment_id: "p3".into(), position: 4, row: None }]),
            ],
            10_000,
        );
        assert_eq!(
            changes,
            vec![
                c(1, 1, "p1", "pending"),
                c(2, 1, "p2", "matched"),
                c(3, -1, "p1", "pending"),
                c(3, 1, "p1", "missing_in_ledger"),
                c(3, 1, "p3", "matched"),
                c(4, -1, "p3", "matched"),
                c(4, 1, "p3", "pending"),
            ]
        );
    }

    #[test]
    fn a_lagging_side_declares_nothing_missing_until_it_catches_up() {
        let (changes, _) = run(
            vec![
                // The provider's stream runs 100 s ahead; the ledger's is at 0.
                (vec![charge("p1", "evt_1", 0, 100, "succeeded"), charge("p2", "evt_2", 100_000, 100, "succeeded")], vec![row("p0", 1, 0, 5, "succeeded")]),
                // The ledger catches up to 50 s: p1 (first seen at 0) is now missing from it.
                (vec![], vec![row("p2", 2, 50_000, 100, "succeeded")]),
            ],
            10_000,
        );
        assert_eq!(
            changes,
            vec![
                // p0 is missing at the provider at once: the provider's clock is far ahead.
                c(1, 1, "p0", "missing_at_provider"),
                c(1, 1, "p1", "pending"),
                c(1, 1, "p2", "pending"),
                c(2, -1, "p1", "pending"),
                c(2, -1, "p2", "pending"),
                c(2, 1, "p1", "missing_in_ledger"),
                c(2, 1, "p2", "matched"),
            ]
        );
    }

    #[test]
    fn currency_and_status_mismatches_are_told_apart() {
        let mut eur = charge("p1", "evt_1", 1_000, 1000, "succeeded");
        eur.currency = "EUR".into();
        let (changes, _) = run(
            vec![(
                vec![eur, charge("p2", "evt_2", 1_000, 1000, "failed")],
                vec![row("p1", 1, 1_000, 1200, "succeeded"), row("p2", 2, 1_000, 1000, "succeeded")],
            )],
            60_000,
        );
        assert_eq!(changes, vec![c(1, 1, "p1", "currency_mismatch"), c(1, 1, "p2", "status_mismatch")]);
    }

    /// From scratch, with nothing of the incremental code: the rows after all input so far.
    fn recompute(provider: &[ProviderEvent], ledger: &[LedgerVersion], settle_ms: i64) -> BTreeMap<String, (Status, Option<i64>, Option<i64>)> {
        let provider_clock = provider.iter().map(|e| e.time_ms).max();
        let ledger_clock = ledger.iter().filter_map(|v| v.row.as_ref().map(|r| r.time_ms)).max();
        let overdue = |clock: Option<i64>, first: Option<i64>| clock.is_some_and(|c| c - first.unwrap() > settle_ms);
        let ids: BTreeSet<&String> = provider.iter().map(|e| &e.payment_id).chain(ledger.iter().map(|v| &v.payment_id)).collect();
        let mut out = BTreeMap::new();
        for id in ids {
            let events: Vec<&ProviderEvent> = provider.iter().filter(|e| &e.payment_id == id).collect();
            let latest = events.iter().max_by(|a, b| (a.time_ms, &a.event_id, *a).cmp(&(b.time_ms, &b.event_id, *b)));
            let p_first = events.iter().map(|e| e.time_ms).min();
            let versions: Vec<&LedgerVersion> = ledger.iter().filter(|v| &v.payment_id == id).collect();
            let last = versions.iter().max_by_key(|v| (v.position, (**v).clone()));
            let l_row = last.and_then(|v| v.row.clone());
            let l_first = versions.iter().filter_map(|v| v.row.as_ref().map(|r| r.time_ms)).min();
            let status = match (latest, &l_row) {
                (Some(p), Some(l)) => {
                    if p.currency != l.currency {
                        Status::CurrencyMismatch
                    } else if p.amount != l.amount {
                        Status::AmountMismatch
                    } else if p.status != l.status {
                        Status::StatusMismatch
                    } else {
                        Status::Matched
                    }
                }
                (Some(_), None) => {
                    if overdue(ledger_clock, p_first) {
                        Status::MissingInLedger
                    } else {
                        Status::Pending
                    }
                }
                (None, Some(_)) => {
                    if overdue(provider_clock, l_first) {
                        Status::MissingAtProvider
                    } else {
                        Status::Pending
                    }
                }
                (None, None) => continue,
            };
            out.insert(id.clone(), (status, latest.map(|p| p.amount), l_row.map(|l| l.amount)));
        }
        out
    }

    #[test]
    fn a_seeded_random_stream_matches_a_recomputation_at_every_epoch() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let settle_ms = 5_000;
        let statuses = ["succeeded", "refunded", "failed"];
        let mut epochs = Vec::new();
        let mut position = 0u64;
        for epoch in 0..40i64 {
            let (mut events, mut versions) = (Vec::new(), Vec::new());
            for _ in 0..rng.gen_range(0..12) {
                let payment = format!("p{}", rng.gen_range(0..30));
                // Event times wander: late (up to 20 s behind) and early.
                let time = epoch * 500 + rng.gen_range(-20_000..2_000);
                if rng.gen_bool(0.5) {
                    let e = ProviderEvent {
                        payment_id: payment,
                        event_id: format!("evt_{}", rng.gen_range(0..200)),
                        time_ms: time,
                        amount: 100 * rng.gen_range(1..4),
                        currency: if rng.gen_bool(0.95) { "USD" } else { "EUR" }.into(),
                        status: statuses[rng.gen_range(0..3)].into(),
                    };
                    if rng.gen_bool(0.2) {
                        events.push(e.clone());
                    }
                    events.push(e);
                } else {
                    position += 1;
                    let row = (!rng.gen_bool(0.1)).then(|| LedgerRow {
                        amount: 100 * rng.gen_range(1..4),
                        currency: "USD".into(),
                        status: statuses[rng.gen_range(0..3)].into(),
                        time_ms: time,
                    });
                    // Sometimes a version from the past comes again, or out of order.
                    let at = if rng.gen_bool(0.2) && position > 3 { position - rng.gen_range(1..3) } else { position };
                    versions.push(LedgerVersion { payment_id: payment, position: at, row });
                }
            }
            epochs.push((events, versions));
        }
        let (_, rows) = run(epochs.clone(), settle_ms);
        // Two workers: the same changes.
        assert_eq!(run_on(2, epochs.clone(), settle_ms).1, rows);
        let mut state: BTreeMap<String, (Status, Option<i64>, Option<i64>)> = BTreeMap::new();
        let (mut provider, mut ledger) = (Vec::new(), Vec::new());
        let mut changed_epochs = 0;
        for (i, (events, versions)) in epochs.into_iter().enumerate() {
            let epoch = i as Epoch + 1;
            provider.extend(events);
            ledger.extend(versions);
            let mut changes: Vec<&(Epoch, isize, Reconciled)> = rows.iter().filter(|(t, _, _)| *t == epoch).collect();
            changes.sort_by_key(|(_, d, _)| *d);
            changed_epochs += usize::from(!changes.is_empty());
            for (_, diff, r) in changes {
                let value = (r.status, r.provider.as_ref().map(|p| p.amount), r.ledger.as_ref().map(|l| l.amount));
                if *diff < 0 {
                    assert_eq!(state.remove(&r.payment_id), Some(value), "epoch {epoch}: a retraction of a row not there");
                } else {
                    assert_eq!(state.insert(r.payment_id.clone(), value), None, "epoch {epoch}: two rows for {}", r.payment_id);
                }
            }
            assert_eq!(state, recompute(&provider, &ledger, settle_ms), "epoch {epoch}");
        }
        // The scenario exercises changes in most epochs and reaches every kind of status.
        assert!(changed_epochs > 30, "{changed_epochs}");
        let seen: BTreeSet<Status> = rows.iter().map(|(_, _, r)| r.status).collect();
        assert_eq!(seen.len(), Status::ALL.len(), "{seen:?}");
    }

    #[test]
    fn totals_follow_the_changes() {
        let mut t = Totals::default();
        let p = ProviderValues { event_id: "e".into(), time_ms: 0, amount: 700, currency: "USD".into(), status: "succeeded".into() };
        let missing = Reconciled { payment_id: "p1".into(), status: Status::MissingInLedger, provider: Some(p), ledger: None, since_ms: Some(0) };
        let pending = Reconciled { status: Status::Pending, ..missing.clone() };
        t.apply(&pending, 1);
        t.apply(&pending, -1);
        t.apply(&missing, 1);
        let s = t.summary();
        assert_eq!((s.counts["missing_in_ledger"], s.counts["pending"], s.counts["matched"]), (1, 0, 0));
        assert_eq!(s.unreconciled, BTreeMap::from([("USD".to_string(), 700)]));
        t.apply(&missing, -1);
        assert!(t.summary().unreconciled.is_empty());
    }
}
