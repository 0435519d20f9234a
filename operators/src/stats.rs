//! The statistics of drift, on exact samples or on sketches, and the sketch.
//!
//! A [`Dist`] is a finite distribution: distinct values with counts. From exact samples its
//! statistics equal scipy's and numpy's (checked in tests against golden files made by
//! `scripts/make_drift_golden.py`, within 1e-9):
//!
//! | function | equals |
//! |---|---|
//! | [`Dist::quantile`] | `numpy.quantile(x, q)` (linear interpolation) |
//! | [`ks`] | `scipy.stats.ks_2samp(a, b).statistic`; the p-value is the asymptotic one, `scipy.special.kolmogorov(sqrt(n·m/(n+m))·D)` |
//! | [`wasserstein`] | `scipy.stats.wasserstein_distance(a, b)` |
//! | [`psi`] | `Σ (c−r)·ln(c/r)` over bin proportions floored at [`PSI_EPSILON`] |
//! | [`js_distance`] | `scipy.spatial.distance.jensenshannon(r, c, base=2)` |
//! | [`chi_square`] | `scipy.stats.chisquare(observed, expected)` |
//!
//! A [`Sketch`] summarises numbers in logarithmic buckets (relative accuracy
//! [`SKETCH_ALPHA`] = 0.5%, as DDSketch): mergeable exactly, so workers' partial sketches add up
//! to the sketch of all their values. Statistics of sketches are the exact statistics of the
//! values each rounded to its bucket's representative (moved by at most 0.5% of itself), so:
//! - Wasserstein-1 is within `α·(E|X| + E|Y|)` of the exact value;
//! - KS `D` is at most the exact `D` and at least it minus the largest mass either distribution
//!   has in one bucket ([`ks_sketch_bound`]);
//! - PSI and JS are those of the rounded values (bin edges are reference quantiles, themselves
//!   bucket representatives).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Bin proportions below this count as this in PSI (an empty bin would make it infinite).
pub const PSI_EPSILON: f64 = 1e-4;

/// The relative accuracy of [`Sketch`] buckets.
pub const SKETCH_ALPHA: f64 = 0.005;

/// A finite distribution: sorted distinct values with their counts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dist {
    values: Vec<f64>,
    counts: Vec<u64>,
    total: u64,
}

impl Dist {
    /// The distribution of `samples` (non-finite values are left out).
    pub fn from_samples(samples: &[f64]) -> Dist {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        Dist::from_sorted_weighted(v.into_iter().map(|x| (x, 1)))
    }

    /// From (value, count) pairs in ascending value order.
    fn from_sorted_weighted(pairs: impl Iterator<Item = (f64, u64)>) -> Dist {
        let mut d = Dist::default();
        for (x, c) in pairs {
            if c == 0 {
                continue;
            }
            if d.values.last() == Some(&x) {
                *d.counts.last_mut().expect("invariant: values and counts have one length") += c;
            } else {
                d.values.push(x);
                d.counts.push(c);
            }
            d.total += c;
        }
        d
    }

    /// How many values.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The mean.
    pub fn mean(&self) -> f64 {
        self.values.iter().zip(&self.counts).map(|(x, c)| x * *c as f64).sum::<f64>() / self.total as f64
    }

    /// The mean of |x|.
    pub fn mean_abs(&self) -> f64 {
        self.values.iter().zip(&self.counts).map(|(x, c)| x.abs() * *c as f64).sum::<f64>() / self.total as f64
    }

    /// The population standard deviation.
    pub fn std(&self) -> f64 {
        let m = self.mean();
        (self.values.iter().zip(&self.counts).map(|(x, c)| (x - m) * (x - m) * *c as f64).sum::<f64>() / self.total as f64).sqrt()
    }

    /// The `i`-th smallest value (0-based, counting repeats).
    fn nth(&self, i: u64) -> f64 {
        let mut seen = 0;
        for (x, c) in self.values.iter().zip(&self.counts) {
            seen += c;
            if i < seen {
                return *x;
            }
        }
        *self.values.last().expect("invariant: nth of a non-empty distribution")
    }

    /// The `q` quantile with linear interpolation between order statistics, as
    /// `numpy.quantile`'s default. NaN when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return f64::NAN;
        }
        let h = (self.total - 1) as f64 * q.clamp(0.0, 1.0);
        let lo = h.floor();
        let (a, b) = (self.nth(lo as u64), self.nth((lo as u64 + 1).min(self.total - 1)));
        let t = h - lo;
        // numpy's _lerp: exact at both ends.
        if t >= 0.5 {
            b - (b - a) * (1.0 - t)
        } else {
            a + (b - a) * t
        }
    }

    /// The inner edges of `bins` equal-mass bins: the quantiles `1/bins, …, (bins−1)/bins`.
    pub fn quantile_edges(&self, bins: usize) -> Vec<f64> {
        (1..bins).map(|i| self.quantile(i as f64 / bins as f64)).collect()
    }

    /// Counts per bin for inner `edges`: bin `i` holds values in `(edges[i−1], edges[i]]`
    /// (`numpy.searchsorted(edges, x, side="left")`).
    pub fn bin_counts(&self, edges: &[f64]) -> Vec<u64> {
        let mut out = vec![0; edges.len() + 1];
        for (x, c) in self.values.iter().zip(&self.counts) {
            out[edges.partition_point(|e| e < x)] += c;
        }
        out
    }

    /// (value, count) pairs in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.values.iter().copied().zip(self.counts.iter().copied())
    }
}

/// The two empirical CDFs at every distinct value of either, as (value, F_a, F_b).
fn joint_cdfs<'a>(a: &'a Dist, b: &'a Dist) -> impl Iterator<Item = (f64, f64, f64)> + 'a {
    let (na, nb) = (a.total as f64, b.total as f64);
    let (mut i, mut j, mut ca, mut cb) = (0, 0, 0u64, 0u64);
    std::iter::from_fn(move || {
        let x = match (a.values.get(i), b.values.get(j)) {
            (None, None) => return None,
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (Some(x), Some(y)) => x.min(*y),
        };
        if a.values.get(i) == Some(&x) {
            ca += a.counts[i];
            i += 1;
        }
        if b.values.get(j) == Some(&x) {
            cb += b.counts[j];
            j += 1;
        }
        Some((x, ca as f64 / na, cb as f64 / nb))
    })
}

/// The two-sample Kolmogorov–Smirnov statistic `D` and its asymptotic p-value.
pub fn ks(a: &Dist, b: &Dist) -> (f64, f64) {
    if a.is_empty() || b.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let d = joint_cdfs(a, b).map(|(_, fa, fb)| (fa - fb).abs()).fold(0.0, f64::max);
    let (n, m) = (a.total as f64, b.total as f64);
    (d, kolmogorov_sf((n * m / (n + m)).sqrt() * d))
}

/// How much lower the `D` of two sketches can be than the `D` of the exact values: the largest
/// mass either has in one bucket.
pub fn ks_sketch_bound(a: &Sketch, b: &Sketch) -> f64 {
    let top = |s: &Sketch| s.buckets().map(|(_, c)| c).max().unwrap_or(0) as f64 / s.count().max(1) as f64;
    top(a).max(top(b))
}

/// Wasserstein-1 (earth mover's) distance: `∫ |F_a − F_b| dx`.
pub fn wasserstein(a: &Dist, b: &Dist) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut sum = 0.0;
    let mut previous: Option<(f64, f64, f64)> = None;
    for (x, fa, fb) in joint_cdfs(a, b) {
        if let Some((px, pa, pb)) = previous {
            sum += (pa - pb).abs() * (x - px);
        }
        previous = Some((x, fa, fb));
    }
    sum
}

fn proportions(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts.iter().map(|c| *c as f64 / n.max(1) as f64).collect()
}

/// The population stability index of `current` against `reference` (counts over the same
/// bins): `Σ (c − r)·ln(c / r)`, proportions floored at [`PSI_EPSILON`].
pub fn psi(reference: &[u64], current: &[u64]) -> f64 {
    proportions(reference)
        .into_iter()
        .zip(proportions(current))
        .map(|(r, c)| {
            let (r, c) = (r.max(PSI_EPSILON), c.max(PSI_EPSILON));
            (c - r) * (c / r).ln()
        })
        .sum()
}

/// The Jensen–Shannon distance (base 2, so in [0, 1]) between two count vectors over the
/// same bins.
pub fn js_distance(reference: &[u64], current: &[u64]) -> f64 {
    let (p, q) = (proportions(reference), proportions(current));
    let rel = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let js: f64 = p.iter().zip(&q).map(|(a, b)| (rel(*a, (a + b) / 2.0) + rel(*b, (a + b) / 2.0)) / 2.0).sum();
    (js / std::f64::consts::LN_2).max(0.0).sqrt()
}

/// Pearson's chi-square goodness of fit of `observed` counts to `expected` counts (same
/// total): the statistic and its p-value with `k − 1` degrees of freedom.
pub fn chi_square(observed: &[u64], expected: &[f64]) -> (f64, f64) {
    let stat: f64 = observed.iter().zip(expected).map(|(o, e)| (*o as f64 - e) * (*o as f64 - e) / e).sum();
    let dof = observed.len().saturating_sub(1);
    (stat, if dof == 0 { 1.0 } else { chi2_sf(stat, dof as f64) })
}

/// The survival function of the Kolmogorov distribution (`scipy.special.kolmogorov`).
pub fn kolmogorov_sf(y: f64) -> f64 {
    if y.is_nan() {
        return f64::NAN;
    }
    if y <= 0.0 {
        return 1.0;
    }
    if y < 1.0 {
        // CDF = sqrt(2π)/y · Σ exp(−(2k−1)²π²/(8y²)), converging fast for small y.
        let w = std::f64::consts::PI * std::f64::consts::PI / (8.0 * y * y);
        let cdf: f64 = (1..=20).map(|k: i32| (-((2 * k - 1) as f64).powi(2) * w).exp()).sum::<f64>() * (2.0 * std::f64::consts::PI).sqrt() / y;
        return (1.0 - cdf).clamp(0.0, 1.0);
    }
    let s: f64 = (1..=100).map(|k: i32| if k % 2 == 1 { 1.0 } else { -1.0 } * (-2.0 * (k as f64).powi(2) * y * y).exp()).sum();
    (2.0 * s).clamp(0.0, 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularized upper incomplete gamma function Q(a, x).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // Series for P.
        let (mut sum, mut term, mut n) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            n += 1.0;
            term *= x / n;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        (1.0 - front * sum).clamp(0.0, 1.0)
    } else {
        // Continued fraction for Q (modified Lentz).
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// The survival function of the chi-square distribution with `k` degrees of freedom.
pub fn chi2_sf(x: f64, k: f64) -> f64 {
    gamma_q(k / 2.0, x / 2.0)
}

/// Numbers in logarithmic buckets: bucket `i > 0` of the positive side holds `(γ^(i−1), γ^i]`
/// with `γ = (1+α)/(1−α)`, represented by `2γ^i/(γ+1)` (within `α` of every value in it); the
/// negative side mirrors it, and values with |x| below 1e-9 count as zero. Mergeable exactly.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Sketch {
    positive: BTreeMap<i32, u64>,
    negative: BTreeMap<i32, u64>,
    zero: u64,
}

const SKETCH_ZERO: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + SKETCH_ALPHA) / (1.0 - SKETCH_ALPHA)
}

impl Sketch {
    /// Adds a value (non-finite values are ignored).
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if x.abs() < SKETCH_ZERO {
            self.zero += 1;
            return;
        }
        let i = (x.abs().ln() / gamma().ln()).ceil() as i32;
        *if x > 0.0 { &mut self.positive } else { &mut self.negative }.entry(i).or_default() += 1;
    }

    /// Adds all of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        for (i, c) in &other.positive {
            *self.positive.entry(*i).or_default() += c;
        }
        for (i, c) in &other.negative {
            *self.negative.entry(*i).or_default() += c;
        }
        self.zero += other.zero;
    }

    /// How many values.
    pub fn count(&self) -> u64 {
        self.zero + self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>()
    }

    /// (representative, count) per bucket, ascending.
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let g = gamma();
        let rep = move |i: i32| 2.0 * g.powi(i) / (g + 1.0);
        self.negative
            .iter()
            .rev()
            .map(move |(i, c)| (-rep(*i), *c))
            .chain((self.zero > 0).then_some((0.0, self.zero)))
            .chain(self.positive.iter().map(move |(i, c)| (rep(*i), *c)))
    }

    /// The distribution of the representatives.
    pub fn dist(&self) -> Dist {
        Dist::from_sorted_weighted(self.buckets())
    }

    /// The value `x` is represented by.
    pub fn round(x: f64) -> f64 {
        let mut s = Sketch::default();
        s.add(x);
        let rounded = s.buckets().next().map_or(x, |(r, _)| r);
        rounded
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn golden() -> serde_json::Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/drift/golden.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    fn close(got: f64, want: f64, what: &str) {
        assert!((got - want).abs() <= 1e-9, "{what}: {got} vs scipy {want}");
    }

    #[test]
    fn statistics_equal_scipy_on_the_golden_samples() {
        let g = golden();
        let cases = g["numeric"].as_array().unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let (a, b) = (Dist::from_samples(&floats(&case["reference"])), Dist::from_samples(&floats(&case["current"])));
            let edges = a.quantile_edges(10);
            for (got, want) in edges.iter().zip(floats(&case["edges"])) {
                close(*got, want, &format!("{name} edges"));
            }
            let (rc, cc) = (a.bin_counts(&edges), b.bin_counts(&edges));
            assert_eq!(rc.iter().map(|c| *c as f64).collect::<Vec<_>>(), floats(&case["reference_counts"]), "{name}");
            assert_eq!(cc.iter().map(|c| *c as f64).collect::<Vec<_>>(), floats(&case["current_counts"]), "{name}");
            close(psi(&rc, &cc), case["psi"].as_f64().unwrap(), &format!("{name} psi"));
            close(js_distance(&rc, &cc), case["js"].as_f64().unwrap(), &format!("{name} js"));
            let (d, p) = ks(&a, &b);
            close(d, case["ks_d"].as_f64().unwrap(), &format!("{name} ks D"));
            close(p, case["ks_p"].as_f64().unwrap(), &format!("{name} ks p"));
            close(wasserstein(&a, &b), case["wasserstein"].as_f64().unwrap(), &format!("{name} wasserstein"));
        }
        for case in g["categorical"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let observed: Vec<u64> = floats(&case["observed"]).iter().map(|x| *x as u64).collect();
            let (stat, p) = chi_square(&observed, &floats(&case["expected"]));
            close(stat, case["chi2"].as_f64().unwrap(), &format!("{name} chi2"));
            close(p, case["chi2_p"].as_f64().unwrap(), &format!("{name} chi2 p"));
            let reference: Vec<u64> = floats(&case["reference"]).iter().map(|x| *x as u64).collect();
            close(psi(&reference, &observed), case["psi"].as_f64().unwrap(), &format!("{name} psi"));
        }
        for case in g["kolmogorov"].as_array().unwrap() {
            close(kolmogorov_sf(case[0].as_f64().unwrap()), case[1].as_f64().unwrap(), "kolmogorov");
        }
        for case in g["chi2_sf"].as_array().unwrap() {
            close(chi2_sf(case[0].as_f64().unwrap(), case[1].as_f64().unwrap()), case[2].as_f64().unwrap(), "chi2.sf");
        }
    }

    fn sample(rng: &mut rand_chacha::ChaCha8Rng, n: usize, scale: f64, shift: f64) -> Vec<f64> {
        (0..n).map(|_| (rng.gen::<f64>() * 3.0).exp() * scale + shift).collect()
    }

    #[test]
    fn sketch_statistics_stay_within_their_stated_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (scale, shift) in [(1.0, 0.0), (1.3, 0.0), (1.0, 2.0), (10.0, -40.0)] {
            let (a, b) = (sample(&mut rng, 5_000, 1.0, 0.0), sample(&mut rng, 3_000, scale, shift));
            let (mut sa, mut sb) = (Sketch::default(), Sketch::default());
            // Partial sketches merged = one sketch of everything.
            let mut half = Sketch::default();
            for x in &a[..2_500] {
                sa.add(*x);
            }
            for x in &a[2_500..] {
                half.add(*x);
            }
            sa.merge(&half);
            b.iter().for_each(|x| sb.add(*x));
            let mut whole = Sketch::default();
            a.iter().for_each(|x| whole.add(*x));
            assert_eq!(sa, whole);
            assert_eq!(sa.count(), 5_000);

            let (ea, eb) = (Dist::from_samples(&a), Dist::from_samples(&b));
            let (da, db) = (sa.dist(), sb.dist());
            let w_exact = wasserstein(&ea, &eb);
            let bound = SKETCH_ALPHA * (ea.mean_abs() + eb.mean_abs());
            assert!((wasserstein(&da, &db) - w_exact).abs() <= bound, "W1 {} vs {w_exact} (bound {bound})", wasserstein(&da, &db));
            let (d_exact, _) = ks(&ea, &eb);
            let (d_sketch, _) = ks(&da, &db);
            let bound = ks_sketch_bound(&sa, &sb);
            assert!(d_sketch <= d_exact + 1e-12 && d_exact - d_sketch <= bound + 1e-12, "KS {d_sketch} vs {d_exact} (bound {bound})");
            // PSI of the sketches is the PSI of the rounded values.
            let (ra, rb): (Vec<f64>, Vec<f64>) = (a.iter().map(|x| Sketch::round(*x)).collect(), b.iter().map(|x| Sketch::round(*x)).collect());
            let (xa, xb) = (Dist::from_samples(&ra), Dist::from_samples(&rb));
            let edges = xa.quantile_edges(10);
            assert_eq!(da.quantile_edges(10), edges);
            assert_eq!(psi(&da.bin_counts(&edges), &db.bin_counts(&edges)), psi(&xa.bin_counts(&edges), &xb.bin_counts(&edges)));
            for x in &a {
                assert!((Sketch::round(*x) - x).abs() <= SKETCH_ALPHA * x.abs() * (1.0 + 1e-12));
            }
        }
    }

    #[test]
    fn psi_of_a_distribution_with_itself_is_zero_and_grows_with_a_shift() {
        let a = Dist::from_samples(&(0..1000).map(f64::from).collect::<Vec<_>>());
        let edges = a.quantile_edges(10);
        assert_eq!(a.bin_counts(&edges), vec![100; 10]);
        assert_eq!(psi(&a.bin_counts(&edges), &a.bin_counts(&edges)), 0.0);
        let b = Dist::from_samples(&(0..1000).map(|x| f64::from(x) + 300.0).collect::<Vec<_>>());
        // By hand: the edges are 99.9·k; of b, bins 0..=2 get none (floored to 1e-4), bins
        // 3..=8 get 100 each (0.1: ln 1 = 0), bin 9 (above 899.1) gets 400.
        let want = 3.0 * (1e-4 - 0.1) * (1e-4f64 / 0.1).ln() + (0.4 - 0.1) * (4.0f64).ln();
        assert!((psi(&a.bin_counts(&edges), &b.bin_counts(&edges)) - want).abs() < 1e-12);
    }
}
