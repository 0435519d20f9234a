//! The reconciliation pipeline: a `[reconcile]` section turns `sluice run` into provider events
//! (decoded by `[event]`) against a ledger's CDC stream (Debezium envelopes), reconciled per
//! payment by [`sluice_operators::reconcile`].
//!
//! ```toml
//! [event]                      # how a provider event reads
//! id = "/id"
//! entity = "/data/object/id"   # the payment id
//! time = "/created"
//! time_format = "seconds"
//! kind = "/type"
//! [event.numbers]
//! amount = "/data/object/amount"
//! [event.strings]
//! currency = "/data/object/currency"
//! status = "/data/object/status"   # optional: the event kind stands in for it
//!
//! [reconcile]
//! provider = "webhooks"        # source names
//! ledger = "ledger"
//! settle = "10m"               # one-sided for longer than this (event time): missing
//! [reconcile.statuses]         # provider status -> ledger status, where they differ
//! "charge.refunded" = "refunded"
//! [reconcile.columns]          # the ledger table's columns (these are the defaults)
//! key = "payment_id"
//! amount = "amount"
//! currency = "currency"
//! status = "status"
//! time = "updated_ms"          # ms since the epoch; without it, the change's ts_ms
//! ```
//!
//! Streams: `reconciliation` (the changelog), `reconciliation_summary` (totals after each epoch
//! that changed them) and `dead_letters`. Amounts are integers in minor units on both sides
//! (`amount_scale` multiplies the provider's, e.g. 100 for amounts in major units).
//!
//! Restart: every decoded input is written, in its epoch's commit, to the table
//! `reconcile_inputs`; a restarted run replays it (as the epoch before the one it resumes at,
//! whose output is not written again) and then continues from the sources' positions.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_connectors::cdc::debezium;
use sluice_connectors::OutputLine;
use sluice_connectors::OutputStream;
use sluice_operators::decode::{Decoder, EventSchema};
use sluice_operators::event::{DeadLetter, DeadLetterReason, Epoch, Event, Origin, RawRecord, SourceItem};
use sluice_operators::metrics::Metrics;
use sluice_operators::reconcile::{reconcile, summarize, LedgerRow, LedgerVersion, ProviderEvent, Reconciled, Summary};
use sluice_state::{BytesCodec, Table, TableSpec, WorkerState};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::{source, Operator};
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Concat;
use timely::dataflow::Stream;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{bad, ReconcileConfig};
use crate::outputs::{dead_letter_line, PartitionNames};
use crate::pipeline::WorkerError;

/// The table of decoded inputs, replayed at start-up.
pub const INPUTS_TABLE: &str = "reconcile_inputs";

/// The tables the reconciliation declares.
pub fn tables() -> Vec<TableSpec> {
    vec![TableSpec::new(INPUTS_TABLE)]
}

/// A decoded input, as logged.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Input {
    Provider(ProviderEvent),
    Ledger(LedgerVersion),
}

impl Input {
    /// The log entry: key (side, payment, event id or position, content hash, so that a
    /// redelivery with other content is kept apart) and value (the input, encoded).
    fn log_entry(&self) -> (Vec<u8>, Vec<u8>) {
        let value = bincode::serialize(self).expect("invariant: serializable");
        let (side, payment, tail) = match self {
            Input::Provider(e) => (b'p', &e.payment_id, e.event_id.as_bytes().to_vec()),
            Input::Ledger(v) => (b'l', &v.payment_id, v.position.to_be_bytes().to_vec()),
        };
        let mut k = Vec::with_capacity(payment.len() + tail.len() + 11);
        k.push(side);
        k.extend_from_slice(payment.as_bytes());
        k.push(0);
        k.extend_from_slice(&tail);
        k.push(0);
        // xxh3: a hash whose value is fixed by its specification, as a key kept in state must be.
        k.extend_from_slice(&xxh3_64(&value).to_be_bytes());
        (k, value)
    }
}

/// Decodes provider events and ledger changes.
pub struct InputDecoder {
    provider: Decoder,
    config: ReconcileConfig,
    amount: usize,
    currency: usize,
    status: Option<usize>,
}

impl InputDecoder {
    /// A decoder for `config` with the provider's `schema`.
    ///
    /// # Errors
    /// The schema does not compile, or lacks what a reconciliation reads
    /// ([`ReconcileConfig::validate`] says so first).
    pub fn new(config: &ReconcileConfig, schema: &EventSchema) -> Result<Self, WorkerError> {
        let numbers = schema.number_names();
        let strings = schema.string_names();
        Ok(InputDecoder {
            provider: Decoder::new(schema)?,
            config: config.clone(),
            amount: numbers.iter().position(|n| n == "amount").ok_or_else(|| bad("event.numbers", "has no amount"))?,
            currency: strings.iter().position(|n| n == "currency").ok_or_else(|| bad("event.strings", "has no currency"))?,
            status: strings.iter().position(|n| n == "status"),
        })
    }

    fn provider(&self, record: &RawRecord) -> Result<ProviderEvent, DeadLetterReason> {
        let e = self.provider.decode(record)?;
        self.provider_event(&e).map_err(DeadLetterReason::Unreconcilable)
    }

    fn provider_event(&self, e: &Event) -> Result<ProviderEvent, String> {
        let amount = e.numbers.get(self.amount).copied().flatten().ok_or("no amount")?;
        let amount = minor_units(amount, self.config.amount_scale)?;
        let currency = e.strings.get(self.currency).cloned().flatten().ok_or("no currency")?.to_ascii_uppercase();
        let status = match self.status {
            Some(i) => e.strings.get(i).cloned().flatten().ok_or("no status")?,
            None if !e.kind.is_empty() => e.kind.clone(),
            None => return Err("no status (no event kind)".into()),
        };
        let status = self.config.statuses.get(status.as_str()).cloned().unwrap_or_else(|| status.to_string());
        Ok(ProviderEvent { payment_id: e.entity.to_string(), event_id: e.id.to_string(), time_ms: e.time_ms, amount, currency: currency.to_string(), status })
    }

    fn ledger(&self, record: &RawRecord) -> Result<Option<LedgerVersion>, String> {
        let Some(change) = debezium::decode(&record.bytes)? else {
            return Ok(None);
        };
        if let Some(table) = &self.config.table {
            if &change.table != table {
                return Err(format!("a change of table `{}`, not of the ledger table `{table}`", change.table));
            }
        }
        let c = &self.config.columns;
        let position = change.lsn.unwrap_or(record.origin.offset);
        let (key_row, row) = match change.op {
            debezium::Op::Truncate => return Err("a truncate: not applied to a reconciliation (delete the rows instead)".into()),
            debezium::Op::Delete => (change.before.as_ref().ok_or("a delete without `before`")?, None),
            _ => {
                let after = change.after.as_ref().ok_or("no `after`")?;
                let text = |col: &str| -> Result<String, String> {
                    match after.get(col) {
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(Value::Number(n)) => Ok(n.to_string()),
                        _ => Err(format!("column `{col}` missing or not a string")),
                    }
                };
                let amount = match after.get(&c.amount) {
                    Some(Value::Number(n)) => n.as_f64().ok_or("amount out of range")?,
                    Some(Value::String(s)) => s.parse::<f64>().map_err(|_| format!("column `{}` is not a number: {s:?}", c.amount))?,
                    _ => return Err(format!("column `{}` missing or not a number", c.amount)),
                };
                let time_ms = match &c.time {
                    Some(col) => after.get(col).and_then(Value::as_i64).ok_or_else(|| format!("column `{col}` missing or not ms since the epoch"))?,
                    None => change.ts_ms.ok_or("no ts_ms in the change, and no [reconcile.columns] time")?,
                };
                let row = LedgerRow {
                    amount: minor_units(amount, self.config.ledger_amount_scale)?,
                    currency: text(&c.currency)?.to_ascii_uppercase(),
                    status: text(&c.status)?,
                    time_ms,
                };
                (after, Some(row))
            }
        };
        let payment_id = match key_row.get(&c.key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(format!("key column `{}` missing", c.key)),
        };
        Ok(Some(LedgerVersion { payment_id, position, row }))
    }
}

fn minor_units(amount: f64, scale: f64) -> Result<i64, String> {
    let v = (amount * scale).round();
    if !v.is_finite() || v.abs() > 9.0e15 {
        return Err(format!("amount {amount} out of range"));
    }
    Ok(v as i64)
}

/// One changelog line: `{"epoch","diff","payment_id","status","provider","ledger","since_ms"}`.
pub fn changelog_line(row: &Reconciled, epoch: Epoch, diff: isize) -> OutputLine {
    #[derive(Serialize)]
    struct Line<'a> {
        epoch: Epoch,
        diff: isize,
        payment_id: &'a str,
        status: &'static str,
        provider: &'a Option<sluice_operators::reconcile::ProviderValues>,
        ledger: &'a Option<sluice_operators::reconcile::LedgerValues>,
        since_ms: Option<i64>,
    }
    let line =
        Line { epoch, diff, payment_id: &row.payment_id, status: row.status.name(), provider: &row.provider, ledger: &row.ledger, since_ms: row.since_ms };
    OutputLine {
        key: (diff as i64, row.payment_id.as_str().into(), Origin { partition: 0, offset: 0 }),
        bytes: serde_json::to_vec(&line).expect("invariant: serializable").into(),
    }
}

/// One summary line: `{"epoch","counts":{status: n},"unreconciled":{currency: minor units}}`.
pub fn summary_line(summary: &Summary, epoch: Epoch) -> OutputLine {
    let value = serde_json::json!({"epoch": epoch, "counts": summary.counts, "unreconciled": summary.unreconciled});
    OutputLine { key: (0, Default::default(), Origin { partition: 0, offset: 0 }), bytes: value.to_string().into_bytes().into() }
}

type Sink<'a, 'scope> = &'a dyn Fn(Stream<'scope, Epoch, Vec<OutputLine>>, OutputStream) -> Result<(), WorkerError>;

/// Builds the reconciliation on `items` (every source's records).
///
/// # Errors
/// The configuration, or the state.
pub fn build<'scope>(
    items: Stream<'scope, Epoch, Vec<SourceItem>>,
    config: &ReconcileConfig,
    schema: &EventSchema,
    names: &PartitionNames,
    state: &Rc<RefCell<WorkerState>>,
    metrics: &Arc<Metrics>,
    sink: Sink<'_, 'scope>,
) -> Result<(), WorkerError> {
    let scope = items.scope();
    let table: Table<BytesCodec> = state.borrow().store().table(INPUTS_TABLE)?;
    let resume = state.borrow().store().resume_epoch();
    let settle_ms = config.settle.ms();
    let decoder = InputDecoder::new(config, schema)?;
    let provider_partitions: Vec<bool> = names.0.iter().map(|(s, _)| s == &config.provider).collect();
    let ledger_partitions: Vec<bool> = names.0.iter().map(|(s, _)| s == &config.ledger).collect();

    // Committed inputs, replayed by worker 0 as the epoch before the first new one.
    let replay: Vec<Input> = if scope.index() == 0 && resume > 0 {
        let entries = state.borrow().scan_committed(&table)?;
        let mut out = Vec::with_capacity(entries.len());
        let mut rekeyed = 0usize;
        for (k, v) in entries {
            let input = bincode::deserialize::<Input>(&v).map_err(|e| sluice_state::StateError::Codec {
                table: INPUTS_TABLE.to_string(),
                reason: format!("a logged reconciliation input does not decode ({e}); the state directory is damaged"),
            })?;
            // Up to version 0.1 the content hash in the key was std's SipHash, which std does not
            // promise to keep: such keys move to the current key with the first new epoch's commit,
            // so that a redelivery of the same input overwrites its entry instead of adding one.
            let (key, value) = input.log_entry();
            if key != k {
                let mut st = state.borrow_mut();
                st.delete(resume, &table, &k);
                st.put_raw(resume, table.index(), &key, value);
                rekeyed += 1;
            }
            out.push(input);
        }
        if rekeyed > 0 {
            tracing::info!(inputs = rekeyed, "re-keying logged reconciliation inputs written by an earlier version");
        }
        tracing::info!(inputs = out.len(), epoch = resume - 1, "replaying the reconciliation's committed inputs");
        out
    } else {
        Vec::new()
    };
    let replayed = source::<_, CapacityContainerBuilder<Vec<(Result<Input, DeadLetter>, Epoch)>>, _, _>(scope, "ReconcileReplay", move |cap, _| {
        let mut cap = Some(cap);
        let mut replay = Some(replay);
        move |output| {
            if let (Some(c), Some(inputs)) = (cap.take(), replay.take()) {
                if resume > 0 && !inputs.is_empty() {
                    let at = c.delayed(&(resume - 1));
                    let mut session = output.session(&at);
                    for i in inputs {
                        session.give((Ok(i), resume - 1));
                    }
                }
            }
        }
    });

    let st = Rc::clone(state);
    let m = Arc::clone(metrics);
    let decoded = items.unary::<CapacityContainerBuilder<Vec<(Result<Input, DeadLetter>, Epoch)>>, _, _, _>(Pipeline, "ReconcileDecode", move |_, _| {
        move |input, output| {
            input.for_each_stamp(|cap, data| {
                let epoch = *cap.least().expect("invariant: an input stamp has a time");
                let mut session = output.session(&cap);
                let mut st = st.borrow_mut();
                for item in data.flat_map(|d| d.drain(..)) {
                    let SourceItem::Record(record) = item else {
                        continue;
                    };
                    let p = record.origin.partition as usize;
                    let result = if provider_partitions.get(p).copied().unwrap_or(false) {
                        decoder.provider(&record).map(|e| Some(Input::Provider(e)))
                    } else if ledger_partitions.get(p).copied().unwrap_or(false) {
                        decoder.ledger(&record).map(|v| v.map(Input::Ledger)).map_err(DeadLetterReason::Unreconcilable)
                    } else {
                        Err(DeadLetterReason::Unreconcilable("a source that is neither the provider nor the ledger".to_string()))
                    };
                    match result {
                        Ok(Some(i)) => {
                            m.decode.decoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let (key, value) = i.log_entry();
                            st.put_raw(epoch, table.index(), &key, value);
                            session.give((Ok(i), epoch));
                        }
                        Ok(None) => {}
                        Err(reason) => {
                            m.decode.dead_letters.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            session.give((Err(DeadLetter::new(reason, record.origin, record.bytes)), epoch));
                        }
                    }
                }
            });
        }
    });
    let all = decoded.concat(replayed);
    let provider = all.clone().flat_map(|(i, t)| match i {
        Ok(Input::Provider(e)) => Some((e, t, 1isize)),
        _ => None,
    });
    let ledger = all.clone().flat_map(|(i, t)| match i {
        Ok(Input::Ledger(v)) => Some((v, t, 1isize)),
        _ => None,
    });
    let dead = all.flat_map(|(i, _)| i.err());
    let rows = reconcile(provider.as_collection(), ledger.as_collection(), settle_ms).inner;
    let summaries = summarize(rows.clone(), resume);
    sink(rows.flat_map(move |(r, t, d)| (t >= resume).then(|| changelog_line(&r, t, d))), OutputStream::Reconciliation)?;
    sink(
        summaries.unary::<CapacityContainerBuilder<Vec<OutputLine>>, _, _, _>(Pipeline, "SummaryLines", |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let epoch = *cap.least().expect("invariant: an input stamp has a time");
                    let mut session = output.session(&cap);
                    for s in data.flat_map(|d| d.drain(..)) {
                        session.give(summary_line(&s, epoch));
                    }
                });
            }
        }),
        OutputStream::ReconciliationSummary,
    )?;
    let n = names.clone();
    sink(dead.map(move |d| dead_letter_line(&d, &n)), OutputStream::DeadLetters)?;
    Ok(())
}
