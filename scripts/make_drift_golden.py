#!/usr/bin/env python3
"""Writes tests/fixtures/drift/golden.json: samples and the drift statistics numpy and scipy
give for them, which operators/src/stats.rs must equal within 1e-9.

    pip install -r scripts/models-requirements.txt   # numpy, scipy (with scikit-learn)
    python3 scripts/make_drift_golden.py

Definitions (the same as sluice's):
- edges: numpy.quantile(reference, [0.1, ..., 0.9]) (linear interpolation);
- bin of x: numpy.searchsorted(edges, x, side="left") (bins are (e[i-1], e[i]]);
- PSI: sum((c - r) * ln(c / r)) over bin proportions floored at 1e-4;
- JS: scipy.spatial.distance.jensenshannon(r_counts, c_counts, base=2);
- KS: scipy.stats.ks_2samp(...).statistic; p-value: scipy.special.kolmogorov(sqrt(n m / (n + m)) D)
  (the asymptotic distribution; scipy's ks_2samp itself applies a finite-n correction);
- Wasserstein: scipy.stats.wasserstein_distance;
- chi-square: scipy.stats.chisquare(observed, expected), expected = n_observed * reference
  proportions smoothed as (count + 0.5) / (n + 0.5 k).
"""
import json
import os

import numpy as np
from scipy import spatial, special, stats

EPS = 1e-4


def numeric_case(name, ref, cur):
    ref = np.asarray(ref, dtype=float)
    cur = np.asarray(cur, dtype=float)
    edges = np.quantile(ref, np.arange(1, 10) / 10)
    rc = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=10)
    cc = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=10)
    rp = np.maximum(rc / rc.sum(), EPS)
    cp = np.maximum(cc / cc.sum(), EPS)
    psi = float(np.sum((cp - rp) * np.log(cp / rp)))
    ks = stats.ks_2samp(ref, cur)
    n, m = len(ref), len(cur)
    return {
        "name": name,
        "reference": ref.tolist(),
        "current": cur.tolist(),
        "edges": edges.tolist(),
        "reference_counts": rc.tolist(),
        "current_counts": cc.tolist(),
        "psi": psi,
        "js": float(spatial.distance.jensenshannon(rc, cc, base=2)),
        "ks_d": float(ks.statistic),
        "ks_p": float(special.kolmogorov(np.sqrt(n * m / (n + m)) * ks.statistic)),
        "wasserstein": float(stats.wasserstein_distance(ref, cur)),
    }


def categorical_case(name, ref_counts, cur_counts):
    ref = np.asarray(ref_counts, dtype=float)
    obs = np.asarray(cur_counts, dtype=float)
    k = len(ref)
    p = (ref + 0.5) / (ref.sum() + 0.5 * k)
    expected = obs.sum() * p
    rp = np.maximum(ref / ref.sum(), EPS)
    op = np.maximum(obs / obs.sum(), EPS)
    chi = stats.chisquare(obs, expected)
    return {
        "name": name,
        "reference": [int(x) for x in ref_counts],
        "observed": [int(x) for x in cur_counts],
        "expected": expected.tolist(),
        "chi2": float(chi.statistic),
        "chi2_p": float(chi.pvalue),
        "psi": float(np.sum((op - rp) * np.log(op / rp))),
    }


def main():
    rng = np.random.default_rng(20261124)
    numeric = [
        numeric_case("same normal", rng.normal(100, 15, 2000), rng.normal(100, 15, 1500)),
        numeric_case("shifted normal", rng.normal(100, 15, 2000), rng.normal(110, 15, 1500)),
        numeric_case("scaled lognormal", rng.lognormal(3, 1, 3000), rng.lognormal(3, 1, 1000) * 1.5),
        numeric_case("integers with ties", rng.poisson(4, 1000), rng.poisson(5, 800)),
        numeric_case("small samples", rng.normal(0, 1, 37), rng.normal(0.3, 1.2, 23)),
        numeric_case("negative and wide", rng.standard_t(3, 2500) * 50 - 20, rng.standard_t(3, 2500) * 60 - 10),
        numeric_case("disjoint", rng.uniform(0, 1, 500), rng.uniform(2, 3, 400)),
    ]
    categorical = [
        categorical_case("same currencies", [5000, 2500, 1500, 1000], [498, 262, 139, 101]),
        categorical_case("shifted currencies", [5000, 2500, 1500, 1000], [300, 300, 200, 200]),
        categorical_case("new category", [900, 100, 0], [800, 150, 50]),
    ]
    kolmogorov = [[y, float(special.kolmogorov(y))] for y in [0.05, 0.2, 0.5, 0.8, 0.99, 1.0, 1.36, 2.0, 3.0]]
    chi2_sf = [[x, k, float(stats.chi2.sf(x, k))] for x, k in [(0.5, 1), (3.84, 1), (10.0, 3), (2.0, 5), (30.0, 10), (7.5, 7), (100.0, 20), (0.01, 2)]]
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "drift", "golden.json")
    with open(out, "w") as f:
        json.dump({"numeric": numeric, "categorical": categorical, "kolmogorov": kolmogorov, "chi2_sf": chi2_sf}, f)
        f.write("\n")
    print("wrote", os.path.normpath(out))


if __name__ == "__main__":
    main()
