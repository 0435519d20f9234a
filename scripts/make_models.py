#!/usr/bin/env python3
"""Trains the two small fraud models sluice ships, and their golden scores.

How they were made (and how to make them again):

    pip install -r scripts/models-requirements.txt
    target/release/sluice demo --rate 0 --events 200000 --out /tmp/model-data
    python3 scripts/make_models.py --features /tmp/model-data/features.jsonl

Inputs are the six standard features of `sluice demo` (dataflows/src/demo.rs), in this order:
txn_count_1m, amount_sum_1h, amount_mean_24h, amount_max_1h, amount_min_all, amount_last.
The generator has no fraud label, so the label is synthetic: an event is "fraud" with a
probability that rises with its amount relative to the customer's 24 h mean and with the
number of transactions in the last minute (seeded, so the data set is fixed for a given file).

Writes, under models/:
- fraud_lr.onnx: logistic regression (scikit-learn, converted by skl2onnx; ONNX ops
  LinearClassifier, Normalizer-free, ZipMap disabled)
- fraud_gbt.onnx: gradient-boosted trees, 30 trees of depth 3 (ONNX op TreeEnsembleClassifier)
- golden.json: 200 input rows and, per model, the probability of class 1 that Python's
  onnxruntime gives for them
Both models take one float tensor `input` of shape [N, 6] and give `label` [N] and
`probabilities` [N, 2].
"""
import argparse
import json
import os

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

FEATURES = ["txn_count_1m", "amount_sum_1h", "amount_mean_24h", "amount_max_1h", "amount_min_all", "amount_last"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "models")


def load(path, limit):
    rows = []
    with open(path) as f:
        for line in f:
            v = json.loads(line)["features"]
            if any(v.get(n) is None for n in FEATURES):
                continue
            rows.append([float(v[n]) for n in FEATURES])
            if len(rows) >= limit:
                break
    return np.array(rows, dtype=np.float32)


def label(x, rng):
    ratio = x[:, 5] / np.maximum(x[:, 2], 1.0)
    logit = 1.5 * np.log(np.maximum(ratio, 1e-3)) + 0.8 * x[:, 0] - 3.0
    p = 1.0 / (1.0 + np.exp(-logit))
    return (rng.random(len(p)) < p).astype(np.int64)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True, help="features.jsonl written by `sluice demo`")
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    rng = np.random.default_rng(7)
    x = load(args.features, args.rows)
    y = label(x, rng)
    os.makedirs(OUT, exist_ok=True)
    models = {
        "fraud_lr": LogisticRegression(max_iter=1000).fit(x, y),
        "fraud_gbt": GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=7).fit(x, y),
    }
    golden_rows = x[rng.choice(len(x), size=200, replace=False)]
    golden = {"features": FEATURES, "inputs": golden_rows.tolist(), "scores": {}}
    for name, model in models.items():
        onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3},
                      initial_types=None)
        # Name the input `input` for every model.
        onx.graph.input[0].name = "input"
        for node in onx.graph.node:
            node.input[:] = ["input" if i == "X" else i for i in node.input]
        path = os.path.join(OUT, f"{name}.onnx")
        with open(path, "wb") as f:
            f.write(onx.SerializeToString())
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        probabilities = session.run(["probabilities"], {"input": golden_rows})[0]
        golden["scores"][name] = [float(p) for p in probabilities[:, 1]]
        print(f"{name}: {len(x)} rows, {y.mean():.3f} positive, ops {sorted({n.op_type for n in onx.graph.node})}")
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)


if __name__ == "__main__":
    main()
