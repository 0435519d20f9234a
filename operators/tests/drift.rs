//! Drift's judgement through its public API: [`window_records`] (the statistics and status of
//! one window, as the operator computes them) on small hand-checked summaries, and the
//! [`Drift`] operator in a timely dataflow over a real state store on 1 and 2 workers.
//!
//! What is checked: each status (ok, warn, alert, insufficient), that the levels are inclusive
//! ("at or beyond"), that `warn` is what falls between the warn and the alert levels, and the
//! direction of every statistic: a larger divergence gives a larger PSI, KS D, JS distance,
//! Wasserstein distance and chi-square statistic, a smaller p-value, and a status that worsens.
//!
//! Expected values are worked out in the comments; `ln`, `exp` and `erfc` were evaluated with
//! Python's `math` module (17 significant digits).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use sluice_operators::drift::{self, window_records, Columns, Levels, ReferenceConfig, Summary, Thresholds};
use sluice_operators::stats::Sketch;
use sluice_operators::{decode, Drift, DriftConfig, DriftRecord, DriftSample, DriftStatus, DurationMs, Epoch, Metrics, PartitionProgress};
use sluice_state::{StateOptions, StateStore};
use timely::dataflow::operators::vec::{Broadcast, Input};
use timely::dataflow::operators::{Inspect, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};

/// Within this of a value computed by hand (the computations take a few floating-point
/// operations, each correct to about 1e-16 relative).
const CLOSE: f64 = 1e-12;

fn assert_close(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!((got - want).abs() <= CLOSE * want.abs().max(1.0), "{what}: {got} vs {want} by hand");
}

/// Relative closeness, for p-values far below 1.
fn assert_close_relative(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!((got - want).abs() <= 1e-9 * want, "{what}: {got} vs {want} by hand");
}

/// A config whose only judged settings are `bins`, `min_samples` and the default thresholds
/// (PSI 0.1 / 0.25, KS D 0.1 / 0.2, JS 0.1 / 0.2, Wasserstein 0.1 / 0.25 reference standard
/// deviations, chi-square p-value 1e-3 / 1e-6).
fn config(bins: usize, min_samples: u64) -> DriftConfig {
    DriftConfig {
        features: vec![],
        score: false,
        categories: vec![],
        window: DurationMs::from_ms(1_000),
        slide: DurationMs::from_ms(1_000),
        reference: ReferenceConfig::default(),
        bins,
        min_samples,
        thresholds: Thresholds::default(),
    }
}

/// A number column of `low` ones and `high` threes.
fn numbers(low: u64, high: u64) -> Summary {
    let mut sketch = Sketch::default();
    for _ in 0..low {
        sketch.add(1.0);
    }
    for _ in 0..high {
        sketch.add(3.0);
    }
    Summary::Numbers(sketch)
}

fn categories(counts: &[(&str, u64)]) -> Summary {
    Summary::Categories(counts.iter().map(|(k, c)| (k.to_string(), *c)).collect::<BTreeMap<_, _>>())
}

fn amount() -> Columns {
    Columns { numbers: vec!["amount".into()], categories: vec![] }
}

fn currency() -> Columns {
    Columns { numbers: vec![], categories: vec!["currency".into()] }
}

/// The records of one window, by statistic.
fn judge(config: &DriftConfig, columns: &Columns, reference: Summary, current: Summary) -> BTreeMap<String, DriftRecord> {
    let records = window_records(config, columns, &[reference], &[current], (1_000, 2_000));
    let by_statistic: BTreeMap<String, DriftRecord> = records.iter().map(|r| (r.statistic.clone(), r.clone())).collect();
    assert_eq!(by_statistic.len(), records.len(), "one record per statistic");
    for r in &records {
        assert_eq!((r.window_start_ms, r.window_end_ms), (1_000, 2_000));
    }
    by_statistic
}

fn statuses(records: &BTreeMap<String, DriftRecord>) -> Vec<(&str, DriftStatus)> {
    records.iter().map(|(s, r)| (s.as_str(), r.status)).collect()
}

// Numbers, 2 bins. The reference is 50 ones and 50 threes. Sketched, 1 and 3 become their
// bucket representatives r1 < r3 (within 0.5%); the one inner bin edge is the reference's
// median, (r1 + r3) / 2, so bin 0 holds the ones and bin 1 the threes: reference counts
// [50, 50], proportions [0.5, 0.5]. A current window of n1 ones and n3 threes (n1 + n3 = 100)
// has proportions [c, 1 − c] with c = n1 / 100, and
//   PSI = (c − 0.5)·ln(c / 0.5) + ((1 − c) − 0.5)·ln((1 − c) / 0.5)
//   KS D = |F_ref(r1) − F_cur(r1)| = |0.5 − c|   (both CDFs are 1 from r3 on)
//   W1 = |0.5 − c|·(r3 − r1), and the reference's standard deviation is (r3 − r1) / 2, so
//        W1 is 2·|0.5 − c| standard deviations.

#[test]
fn numbers_72_to_28_against_50_to_50_give_the_hand_computed_statistics() {
    // c = 0.72:
    //   PSI = 0.22·ln(1.44) + 0.22·ln(0.5 / 0.28) = 0.22·(0.364643… + 0.579818…)
    //       = 0.2077815539449873: warn (0.1 ≤ PSI < 0.25).
    //   KS D = 0.22: alert (≥ 0.2). p = Q_KS(√(100·100 / 200)·0.22) with
    //       Q_KS(λ) = 2·Σ_{k≥1} (−1)^(k−1)·exp(−2k²λ²), 2λ² = 4.84:
    //       2·(e^−4.84 − e^−19.36 + …) = 0.015814100285310013.
    //   JS: m = [0.61, 0.39]; JS² = (KL(p‖m) + KL(q‖m)) / (2 ln 2) with p = [0.5, 0.5],
    //       q = [0.72, 0.28]: JS = 0.19254647030008587: warn (0.1 ≤ JS < 0.2).
    //   W1 = 0.22·(r3 − r1) = 0.44 standard deviations: alert (≥ 0.25 sd).
    let records = judge(&config(2, 100), &amount(), numbers(50, 50), numbers(72, 28));
    let (r1, r3) = (Sketch::round(1.0), Sketch::round(3.0));
    let sd = (r3 - r1) / 2.0;
    assert_close(records["psi"].value, 0.207_781_553_944_987_3, "psi");
    assert_close(records["ks"].value, 0.22, "ks D");
    assert_close(records["ks"].p_value, 0.015_814_100_285_310_013, "ks p");
    assert_close(records["js"].value, 0.192_546_470_300_085_87, "js");
    assert_close(records["wasserstein"].value, 0.22 * (r3 - r1), "wasserstein");
    // Wasserstein's levels are in the column's units: 0.1 and 0.25 reference standard deviations.
    assert_close(Some(records["wasserstein"].warn), 0.1 * sd, "wasserstein warn");
    assert_close(Some(records["wasserstein"].alert), 0.25 * sd, "wasserstein alert");
    assert_eq!(
        statuses(&records),
        vec![("js", DriftStatus::Warn), ("ks", DriftStatus::Alert), ("psi", DriftStatus::Warn), ("wasserstein", DriftStatus::Alert)]
    );
    for r in records.values() {
        assert_eq!((r.reference_n, r.current_n), (100, 100), "{}", r.statistic);
    }
}

#[test]
fn numbers_psi_is_ok_then_warn_then_alert_as_the_window_moves_away_from_the_reference() {
    // c = 0.55: PSI = 0.05·ln(1.1) + 0.05·ln(0.5 / 0.45) = 0.010033534773107564: ok (< 0.1).
    // c = 0.72: 0.2077815539449873 (above): warn, between the levels 0.1 and 0.25.
    // c = 0.90: PSI = 0.4·ln(1.8) + 0.4·ln(5) = 0.8788898309344878: alert (≥ 0.25).
    let want =
        [(55, 0.010_033_534_773_107_564, DriftStatus::Ok), (72, 0.207_781_553_944_987_3, DriftStatus::Warn), (90, 0.878_889_830_934_487_8, DriftStatus::Alert)];
    let mut previous = 0.0;
    for (ones, psi, status) in want {
        let records = judge(&config(2, 100), &amount(), numbers(50, 50), numbers(ones, 100 - ones));
        assert_close(records["psi"].value, psi, &format!("psi at {ones}%"));
        assert_eq!(records["psi"].status, status, "psi at {ones}%");
        // KS D = |0.5 − c| grows with the divergence too.
        assert_close(records["ks"].value, (ones as f64 / 100.0 - 0.5).abs(), &format!("ks at {ones}%"));
        assert!(records["psi"].value.unwrap() > previous);
        previous = records["psi"].value.unwrap();
    }
}

#[test]
fn a_window_identical_to_the_reference_is_ok_on_every_number_statistic() {
    // c = 0.5: every term of PSI is 0·ln 1 = 0, D = 0, JS = 0, W1 = 0.
    let records = judge(&config(2, 100), &amount(), numbers(50, 50), numbers(50, 50));
    for statistic in ["psi", "ks", "js", "wasserstein"] {
        assert_eq!(records[statistic].value, Some(0.0), "{statistic}");
        assert_eq!(records[statistic].status, DriftStatus::Ok, "{statistic}");
    }
    // No divergence: the KS p-value is Q_KS(0) = 1.
    assert_eq!(records["ks"].p_value, Some(1.0));
}

#[test]
fn fewer_samples_than_min_samples_is_insufficient_with_no_value_and_exactly_min_samples_is_judged() {
    // 99 samples against min_samples 100: every statistic is `insufficient`, with no value,
    // p-value or error bound, but the counts still reported.
    let records = judge(&config(2, 100), &amount(), numbers(50, 50), numbers(90, 9));
    for r in records.values() {
        assert_eq!((r.status, r.value, r.p_value, r.error_bound), (DriftStatus::Insufficient, None, None, None), "{}", r.statistic);
        assert_eq!((r.reference_n, r.current_n), (100, 99), "{}", r.statistic);
    }
    // 100 samples (90 ones, 10 threes) is enough: judged, and far off (PSI 0.8788898309344878).
    let records = judge(&config(2, 100), &amount(), numbers(50, 50), numbers(90, 10));
    assert_close(records["psi"].value, 0.878_889_830_934_487_8, "psi");
    assert_eq!(records["psi"].status, DriftStatus::Alert);
    // The same for categories: 99 of them are not enough.
    let records = judge(&config(2, 100), &currency(), categories(&[("EUR", 50), ("USD", 50)]), categories(&[("EUR", 90), ("USD", 9)]));
    assert_eq!(statuses(&records), vec![("chi2", DriftStatus::Insufficient), ("psi", DriftStatus::Insufficient)]);
    assert_eq!((records["chi2"].value, records["chi2"].p_value), (None, None));
}

#[test]
fn an_empty_reference_is_insufficient_whatever_the_window() {
    let records = judge(&config(2, 100), &amount(), numbers(0, 0), numbers(90, 10));
    for r in records.values() {
        assert_eq!((r.status, r.value, r.reference_n, r.current_n), (DriftStatus::Insufficient, None, 0, 100), "{}", r.statistic);
    }
}

// Categories. The reference is 50 EUR and 50 USD. With k categories (of reference and window
// together), the expected count of category i in a window of n is the reference proportion
// smoothed by half a count: n·(r_i + 0.5) / (100 + 0.5·k). For k = 2 that is
// n·50.5 / 101 = n / 2 exactly, so for a window of 100 with e EUR:
//   χ² = 2·(e − 50)² / 50, with 1 degree of freedom: p = P(χ²₁ > x) = erfc(√(x / 2));
//   PSI = as for numbers with c = e / 100.

#[test]
fn chi_square_grows_and_its_p_value_falls_as_the_window_diverges_and_the_status_worsens() {
    // e = 60: χ² = 2·100/50 = 4, p = erfc(√2) = 0.045500263896358396: ok (p > 1e-3).
    //   PSI = 0.1·ln(1.2) + 0.1·ln(1.25) = 0.040546510810816436: ok.
    // e = 70: χ² = 2·400/50 = 16, p = erfc(√8) = 6.334248366623977e-05: warn (1e-6 < p ≤ 1e-3).
    //   PSI = 0.2·ln(1.4) + 0.2·ln(5/3) = 0.16945957207744072: warn.
    // e = 90: χ² = 2·1600/50 = 64, p = erfc(√32) = 1.2441921148543513e-15: alert (p ≤ 1e-6).
    //   PSI = 0.4·ln(1.8) + 0.4·ln(5) = 0.8788898309344878: alert.
    let want = [
        (60, 4.0, 0.045_500_263_896_358_396, 0.040_546_510_810_816_436, DriftStatus::Ok),
        (70, 16.0, 6.334_248_366_623_977e-5, 0.169_459_572_077_440_72, DriftStatus::Warn),
        (90, 64.0, 1.244_192_114_854_351_3e-15, 0.878_889_830_934_487_8, DriftStatus::Alert),
    ];
    for (eur, chi2, p, psi, status) in want {
        let records = judge(&config(10, 100), &currency(), categories(&[("EUR", 50), ("USD", 50)]), categories(&[("EUR", eur), ("USD", 100 - eur)]));
        assert_close(records["chi2"].value, chi2, &format!("chi2 at {eur} EUR"));
        assert_close_relative(records["chi2"].p_value, p, &format!("chi2 p at {eur} EUR"));
        assert_close(records["psi"].value, psi, &format!("psi at {eur} EUR"));
        assert_eq!(statuses(&records), vec![("chi2", status), ("psi", status)], "at {eur} EUR");
        // The chi-square status is judged on the p-value, and its levels are p-values.
        assert_eq!((records["chi2"].warn, records["chi2"].alert), (1e-3, 1e-6));
    }
}

#[test]
fn a_category_absent_from_the_reference_is_smoothed_and_alerts() {
    // Window: 50 EUR, 40 USD, 10 GBP; k = 3, so the expected counts are
    // 100·50.5/101.5 = 10100/203 for EUR and USD and 100·0.5/101.5 = 100/203 for GBP.
    // χ² = Σ o²/e − n = (2500 + 1600)·203/10100 + 100·203/100 − 100 = 8323/101 + 103
    //    = 185.40594059405942, with 2 degrees of freedom: p = exp(−χ²/2) = 5.49049555088787e-41.
    let records = judge(&config(10, 100), &currency(), categories(&[("EUR", 50), ("USD", 50)]), categories(&[("EUR", 50), ("USD", 40), ("GBP", 10)]));
    assert_close(records["chi2"].value, 8323.0 / 101.0 + 103.0, "chi2");
    assert_close_relative(records["chi2"].p_value, 5.490_495_550_887_87e-41, "chi2 p");
    assert_eq!(records["chi2"].status, DriftStatus::Alert);
}

#[test]
fn levels_are_inclusive_a_value_exactly_at_the_warn_level_warns_and_at_the_alert_level_alerts() {
    // A window equal to the reference: PSI exactly 0.0, χ² exactly 0 and its p-value exactly 1.
    let same = || categories(&[("EUR", 50), ("USD", 50)]);
    let mut at_warn = config(10, 100);
    at_warn.thresholds.psi = Levels { warn: 0.0, alert: 1.0 };
    at_warn.thresholds.chi2_p = Levels { warn: 1.0, alert: 1e-6 };
    let records = judge(&at_warn, &currency(), same(), same());
    assert_eq!((records["psi"].value, records["chi2"].value, records["chi2"].p_value), (Some(0.0), Some(0.0), Some(1.0)));
    assert_eq!(statuses(&records), vec![("chi2", DriftStatus::Warn), ("psi", DriftStatus::Warn)]);

    let mut at_alert = config(10, 100);
    at_alert.thresholds.psi = Levels { warn: 0.0, alert: 0.0 };
    at_alert.thresholds.chi2_p = Levels { warn: 1.0, alert: 1.0 };
    let records = judge(&at_alert, &currency(), same(), same());
    assert_eq!(statuses(&records), vec![("chi2", DriftStatus::Alert), ("psi", DriftStatus::Alert)]);

    // With the default levels the same window is ok on both.
    let records = judge(&config(10, 100), &currency(), same(), same());
    assert_eq!(statuses(&records), vec![("chi2", DriftStatus::Ok), ("psi", DriftStatus::Ok)]);
}

#[test]
fn statuses_have_their_output_names_and_metric_levels() {
    let all = [DriftStatus::Ok, DriftStatus::Warn, DriftStatus::Alert, DriftStatus::Insufficient];
    assert_eq!(all.map(DriftStatus::name), ["ok", "warn", "alert", "insufficient"]);
    assert_eq!(all.map(DriftStatus::level), [0, 1, 2, -1]);
    assert_eq!(serde_json::to_string(&all).unwrap(), r#"["ok","warn","alert","insufficient"]"#);
}

/// Runs the drift operator on `workers` workers: one partition, lateness 0; `epochs` of
/// samples (sent round-robin from all workers), each epoch followed by the partition's progress
/// up to `progress_ms[epoch]`. Returns the records with the epoch they came out at, and the
/// metrics.
fn run_operator(workers: usize, config: DriftConfig, epochs: Vec<(Vec<DriftSample>, i64)>) -> (Vec<(Epoch, DriftRecord)>, Arc<Metrics>) {
    let dir = tempfile::tempdir().unwrap();
    let mut tables = drift::tables();
    tables.extend(decode::tables());
    let store = StateStore::open(dir.path(), &tables, workers, &StateOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::default());
    let records: Arc<Mutex<Vec<(Epoch, DriftRecord)>>> = Arc::default();
    let guards = {
        let (store, metrics, records) = (Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&records));
        timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let state = Rc::new(RefCell::new(store.worker(index)));
            let mut samples_in = InputHandleVec::<Epoch, DriftSample>::new();
            let mut progress_in = InputHandleVec::<Epoch, PartitionProgress>::new();
            let probe = ProbeHandle::new();
            worker.dataflow::<Epoch, _, _>(|scope| {
                let progress = scope.input_from(&mut progress_in).broadcast();
                let sink = Arc::clone(&records);
                scope
                    .input_from(&mut samples_in)
                    .drift(progress, config.clone(), (1, 0), Rc::clone(&state), Arc::clone(&metrics))
                    .unwrap()
                    .inspect_core(move |seen| {
                        if let Ok((stamp, data)) = seen {
                            let epoch = *stamp.least().unwrap();
                            sink.lock().unwrap().extend(data.iter().map(|r| (epoch, r.clone())));
                        }
                    })
                    .probe_with(&probe);
            });
            for (epoch, (samples, progress_ms)) in epochs.iter().enumerate() {
                for (i, s) in samples.iter().enumerate() {
                    if i % workers == index {
                        samples_in.send(s.clone());
                    }
                }
                if index == 0 {
                    progress_in.send(PartitionProgress { partition: 0, max_event_time_ms: Some(*progress_ms), finished: false, idle: false });
                }
                samples_in.advance_to(epoch as Epoch + 1);
                progress_in.advance_to(epoch as Epoch + 1);
            }
            drop((samples_in, progress_in));
            while !probe.done() {
                worker.step();
            }
        })
        .unwrap()
    };
    for result in guards.join() {
        result.unwrap();
    }
    let mut records = records.lock().unwrap().clone();
    records.sort_by(|(ea, a), (eb, b)| (ea, &a.column, &a.statistic).cmp(&(eb, &b.column, &b.statistic)));
    (records, metrics)
}

/// (epoch, window start, window end, statistic, status, reference samples, window samples).
type Row<'a> = (Epoch, i64, i64, &'a str, DriftStatus, u64, u64);

/// 100 samples of the `currency` column in the pane starting at `pane_ms`, `eur` of them EUR
/// and the rest USD.
fn pane_of_currencies(pane_ms: i64, eur: usize) -> Vec<DriftSample> {
    (0..100).map(|i| DriftSample { time_ms: pane_ms + i as i64, numbers: vec![], categories: vec![Some(if i < eur { "EUR" } else { "USD" }.into())] }).collect()
}

#[test]
fn the_operator_emits_each_window_once_the_watermark_passes_its_end_with_the_hand_computed_status() {
    // Window = slide = 1 s, reference = the first 100 samples, min_samples 100.
    // Epoch 0: pane [0, 1000) with 50 EUR / 50 USD; the watermark reaches 1,000: the pane is
    //   complete and becomes the reference (100 samples); the first window is [1000, 2000).
    // Epoch 1: 70 EUR / 30 USD in [1000, 2000); watermark 2,000: that window is emitted:
    //   χ² 16, p 6.334248366623977e-05 and PSI 0.16945957207744072 (see above): both warn.
    // Epoch 2: 90 EUR / 10 USD in [2000, 3000); watermark 2,999: not complete, nothing.
    // Epoch 3: watermark 3,000: emitted: χ² 64, p 1.2441921148543513e-15, PSI 0.8788898309344878:
    //   both alert.
    let mut monitored = config(10, 100);
    monitored.categories = vec!["currency".into()];
    monitored.reference.first = Some(100);
    let epochs = vec![(pane_of_currencies(0, 50), 1_000), (pane_of_currencies(1_000, 70), 2_000), (pane_of_currencies(2_000, 90), 2_999), (vec![], 3_000)];
    for workers in [1, 2] {
        let (records, metrics) = run_operator(workers, monitored.clone(), epochs.clone());
        let got: Vec<Row> =
            records.iter().map(|(e, r)| (*e, r.window_start_ms, r.window_end_ms, r.statistic.as_str(), r.status, r.reference_n, r.current_n)).collect();
        assert_eq!(
            got,
            vec![
                (1, 1_000, 2_000, "chi2", DriftStatus::Warn, 100, 100),
                (1, 1_000, 2_000, "psi", DriftStatus::Warn, 100, 100),
                (3, 2_000, 3_000, "chi2", DriftStatus::Alert, 100, 100),
                (3, 2_000, 3_000, "psi", DriftStatus::Alert, 100, 100),
            ],
            "{workers} workers"
        );
        assert_close(records[0].1.value, 16.0, "chi2 of the first window");
        assert_close_relative(records[0].1.p_value, 6.334_248_366_623_977e-5, "chi2 p of the first window");
        assert_close(records[1].1.value, 0.169_459_572_077_440_72, "psi of the first window");
        assert_close(records[2].1.value, 64.0, "chi2 of the second window");
        assert_close_relative(records[2].1.p_value, 1.244_192_114_854_351_3e-15, "chi2 p of the second window");
        assert_close(records[3].1.value, 0.878_889_830_934_487_8, "psi of the second window");
        assert!(records.iter().all(|(_, r)| r.column == "currency"));
        // Two windows, and the latest chi2 gauge at alert (level 2) with one alert counted.
        assert_eq!(Metrics::get(&metrics.drift.windows), 2);
        let latest = metrics.drift.latest.lock().unwrap();
        let chi2 = &latest[&("currency".to_string(), "chi2".to_string())];
        assert_eq!((chi2.level, chi2.alerts, chi2.window_end_ms), (2, 1, 3_000));
    }
}
