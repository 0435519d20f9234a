//! `sluice demo --reconcile`: a payment provider's webhooks (Stripe-like events) and the
//! internal ledger's change stream (Debezium envelopes of table `public.payments`), generated
//! with the faults of the motivating incident, reconciled live.
//!
//! Per payment, seeded: the ledger inserts the row (status `pending`) and updates it to
//! `succeeded`; the provider sends `charge.succeeded`. Faults, each in a share of payments:
//! webhooks delivered late (up to 20 s of event time behind) or two to four times; refunds
//! (the provider's `charge.refunded`, sometimes delivered before the charge, and the ledger's
//! update to `refunded`); a ledger amount off by a cent that a later update fixes, or never;
//! the wrong currency in the ledger; a failed charge the ledger has as succeeded; a payment the
//! ledger never saw, or the provider never sent; the CDC connector replaying a change.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use serde_json::json;
use sluice_operators::EventSchema;

use crate::config::PipelineConfig;

/// What the generator wrote.
#[derive(Debug, Clone)]
pub struct DemoInputs {
    /// The provider's events, in delivery order.
    pub provider: PathBuf,
    /// The ledger's changes, in commit (LSN) order.
    pub ledger: PathBuf,
    /// Provider records written (with redeliveries).
    pub provider_records: u64,
    /// Ledger records written (with replays).
    pub ledger_records: u64,
}

/// The event time of the first payment.
pub const START_MS: i64 = 1_790_000_000_000;

/// Writes the inputs for `payments` payments (one every 10 ms of event time) into `dir`.
///
/// # Errors
/// The files cannot be written.
pub fn write_inputs(dir: &Path, payments: u64, seed: u64) -> std::io::Result<DemoInputs> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // (delivery time, sequence, line) for the provider; (lsn, line) for the ledger.
    let mut provider: Vec<(i64, u64, String)> = Vec::new();
    let mut ledger: Vec<(i64, String)> = Vec::new();
    let mut lsn = 1_000u64;
    let mut seq = 0u64;
    let mut event = 0u64;
    for i in 0..payments {
        let id = format!("pay_{i:07}");
        let t = START_MS + i as i64 * 10;
        let amount = 100 * rng.gen_range(1..500) + rng.gen_range(0..100);
        let roll: f64 = rng.gen_range(0.0..100.0);
        // The provider's view.
        let currency = "usd";
        let mut provider_status = "succeeded";
        let refunded = (0.0..3.0).contains(&roll);
        let failed = (3.0..4.0).contains(&roll);
        let no_ledger = (4.0..5.0).contains(&roll);
        let no_provider = (5.0..6.0).contains(&roll);
        let amount_fixed_later = (6.0..8.0).contains(&roll);
        let amount_wrong = (8.0..8.5).contains(&roll);
        let currency_wrong = (8.5..9.0).contains(&roll);
        if failed {
            provider_status = "failed";
        }
        let mut webhook = |kind: &str, status: &str, at: i64, rng: &mut rand_chacha::ChaCha8Rng, provider: &mut Vec<(i64, u64, String)>| {
            event += 1;
            let line = json!({
                "id": format!("evt_{event:08}"),
                "type": kind,
                "created": at,
                "data": {"object": {"id": id, "amount": amount, "currency": currency, "status": status}},
            })
            .to_string();
            // Delivered 50–500 ms after the event; 10% late by up to 20 s; 5% two to four times.
            let mut delay = rng.gen_range(50..500);
            if rng.gen_bool(0.10) {
                delay += rng.gen_range(1_000..20_000);
            }
            let copies = if rng.gen_bool(0.05) { rng.gen_range(2..5) } else { 1 };
            for c in 0..copies {
                seq += 1;
                provider.push((at + delay + c * rng.gen_range(10..3_000), seq, line.clone()));
            }
        };
        if !no_provider {
            let kind = if failed { "charge.failed" } else { "charge.succeeded" };
            webhook(kind, provider_status, t + 5, &mut rng, &mut provider);
            if refunded {
                // The refund 1–3 s later; a third of them delivered before the charge.
                let at = t + rng.gen_range(1_000..3_000);
                let before = provider.len();
                webhook("charge.refunded", "refunded", at, &mut rng, &mut provider);
                if rng.gen_bool(0.33) {
                    for p in &mut provider[before..] {
                        p.0 = t - 100;
                    }
                }
            }
        }
        if !no_ledger {
            let row = |status: &str, amount: i64, currency: &str, at: i64, op: &str, ledger: &mut Vec<(i64, String)>, lsn: &mut u64| {
                *lsn += 1;
                // Debezium's JSON converter with schemas.enable=false: the payload alone.
                let line = json!({
                    "op": op,
                    "before": null,
                    "after": {"payment_id": id, "amount": amount, "currency": currency, "status": status, "updated_ms": at},
                    "source": {"lsn": *lsn, "schema": "public", "table": "payments", "db": "ledger"},
                    "ts_ms": at,
                })
                .to_string();
                ledger.push((*lsn as i64, line));
            };
            let ledger_amount = if amount_fixed_later || amount_wrong { amount + 1 } else { amount };
            let ledger_currency = if currency_wrong { "EUR" } else { "USD" };
            row("pending", ledger_amount, ledger_currency, t, "c", &mut ledger, &mut lsn);
            let status = if refunded { "refunded" } else { "succeeded" };
            row("succeeded", ledger_amount, ledger_currency, t + 200, "u", &mut ledger, &mut lsn);
            if refunded {
                row(status, ledger_amount, ledger_currency, t + 2_500, "u", &mut ledger, &mut lsn);
            }
            if amount_fixed_later {
                row(status, amount, ledger_currency, t + 4_000, "u", &mut ledger, &mut lsn);
            }
            // 1%: the connector replays the last change after its restart.
            if rng.gen_bool(0.01) {
                let last = ledger.last().expect("invariant: a row was written").clone();
                ledger.push(last);
            }
        }
    }
    provider.sort();
    ledger.sort_by_key(|(l, _)| *l);
    let write = |path: &Path, lines: &mut dyn Iterator<Item = &String>| -> std::io::Result<u64> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut n = 0;
        for l in lines {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
            n += 1;
        }
        f.flush()?;
        Ok(n)
    };
    let provider_path = dir.join("provider.jsonl");
    let ledger_path = dir.join("ledger.jsonl");
    let provider_records = write(&provider_path, &mut provider.iter().map(|(_, _, l)| l))?;
    let ledger_records = write(&ledger_path, &mut ledger.iter().map(|(_, l)| l))?;
    Ok(DemoInputs { provider: provider_path, ledger: ledger_path, provider_records, ledger_records })
}

/// The reconciliation demo, as a pipeline file: what `sluice demo --reconcile` runs, before its
/// flags.
pub const DEMO_PIPELINE: &str = include_str!("reconcile_demo.toml");

/// `reconcile_demo.toml` with `edit` applied to its TOML table, parsed.
fn demo_pipeline(edit: impl FnOnce(&mut toml::Table)) -> PipelineConfig {
    PipelineConfig::parse_edited(DEMO_PIPELINE, edit).expect("invariant: reconcile_demo.toml is a pipeline file (a unit test reads it)")
}

/// How the provider's events read (`[event]` of `reconcile_demo.toml`).
pub fn provider_schema() -> EventSchema {
    demo_pipeline(|_| ()).event
}

/// The reconciliation of `inputs` into `dir` (`reconciliation.jsonl`,
/// `reconciliation_summary.jsonl`, `dead_letters.jsonl`), settle time 30 s.
pub fn demo_config(dir: &Path, inputs: &DemoInputs, workers: usize) -> PipelineConfig {
    let mut config = demo_pipeline(|document| {
        let sources = document.get_mut("sources").and_then(|s| s.as_array_mut()).expect("invariant: reconcile_demo.toml has sources");
        for (source, path) in sources.iter_mut().zip([&inputs.provider, &inputs.ledger]) {
            // Absolute: the file's relative paths are made relative to `dir`, these are not.
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let paths = toml::Value::Array(vec![toml::Value::String(path.display().to_string())]);
            source.as_table_mut().expect("invariant: a source is a table").insert("paths".into(), paths);
        }
    });
    config.resolve_paths(dir);
    config.workers = workers;
    config
}

/// What the demo prints at the end: the run's counts and the last totals.
///
/// # Errors
/// The outputs cannot be read.
pub fn summary_text(summary: &crate::pipeline::RunSummary, out: &Path) -> std::io::Result<String> {
    let changelog = std::fs::read_to_string(out.join("reconciliation.jsonl"))?;
    let (mut inserts, mut retracts) = (0u64, 0u64);
    for line in changelog.lines() {
        if line.contains("\"diff\":-1") {
            retracts += 1;
        } else {
            inserts += 1;
        }
    }
    let summaries = std::fs::read_to_string(out.join("reconciliation_summary.jsonl"))?;
    let last = summaries.lines().last().unwrap_or("{}");
    let mut text = format!(
        "read {} records in {:.1} s: {} decoded, {} dead letters\nchangelog: {} insertions, {} retractions (corrections), {} summaries\n",
        summary.records_in,
        summary.elapsed.as_secs_f64(),
        summary.decoded,
        summary.dead_letters,
        inserts,
        retracts,
        summaries.lines().count()
    );
    let value: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
    if let Some(counts) = value.get("counts").and_then(|c| c.as_object()) {
        text.push_str("payments by status:");
        for (k, v) in counts {
            text.push_str(&format!(" {k} {v}"));
        }
        text.push('\n');
    }
    if let Some(u) = value.get("unreconciled").and_then(|c| c.as_object()) {
        text.push_str("unreconciled (minor units):");
        for (k, v) in u {
            text.push_str(&format!(" {k} {v}"));
        }
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconciliation_demo_is_its_pipeline_file_reading_the_inputs_it_wrote() {
        let work = tempfile::tempdir().unwrap();
        let inputs = write_inputs(&work.path().join("in"), 10, 7).unwrap();
        let config = demo_config(Path::new("/out"), &inputs, 2);
        assert_eq!((config.workers, config.state_dir.as_path()), (2, Path::new("/out/state")));
        let file = |i: usize| config.sources[i].get::<sluice_connectors::file::FileSourceConfig>().unwrap().paths.clone();
        assert_eq!((file(0), file(1)), (vec![inputs.provider.clone()], vec![inputs.ledger.clone()]));
        let reconcile = config.reconcile.as_ref().unwrap();
        assert_eq!((reconcile.settle.ms(), reconcile.columns.time.as_deref()), (30_000, Some("updated_ms")));
        let sinks: Vec<String> = config.sinks.iter().map(|s| s.destination()).collect();
        assert_eq!(sinks, ["/out/reconciliation.jsonl", "/out/reconciliation_summary.jsonl", "/out/dead_letters.jsonl"]);
        config.validate().unwrap();
    }
}
