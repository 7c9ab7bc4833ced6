"""The config-only estimate against the weights and peaks the H100 matrix measured.

    python benchmarks/estimate_vs_h100_matrix.py

Reads benchmarks/results/h100/matrix/*.jsonl (committed Results) and prints, per model and
precision, estimated / measured weights and peak generation memory at the largest batch the
run measured (prompt 128 + new tokens). No GPU needed: the estimate reads only the config.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from quantbench.estimate import EstimateSettings, estimate
from quantbench.results import read_results, sweep

HERE = Path(__file__).resolve().parent / "results" / "h100" / "matrix"


def rows() -> list[dict]:
    out = []
    for path in sorted(HERE.glob("*.jsonl")):
        for result in read_results(path)[0]:
            if not result.ok or result.spec.kind != "benchmark":
                continue
            work = result.spec.workload
            batch = max(work["batch_sizes"])
            seq = 128 + work["new_tokens"]
            settings = EstimateSettings(batch_size=batch, seq_len=seq, device="cuda", compute_dtype="bf16")
            est = estimate(result.spec.model, [result.spec.precision], settings).precisions[0]
            measured_peak = sweep(result.metrics, "peak_generate_bytes").get(batch)
            out.append({
                "model": result.spec.model, "precision": result.spec.precision, "batch": batch, "seq_len": seq,
                "weights_estimate_bytes": est.weights_bytes,
                "weights_measured_bytes": result.metrics["weights_footprint_bytes"],
                "peak_estimate_bytes": est.peak_inference_bytes, "peak_measured_bytes": measured_peak,
            })
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    table = rows()
    print(f"{'model':22} {'precision':9} {'weights est/meas':>17} {'peak est/meas':>14}")
    for r in table:
        w = r["weights_estimate_bytes"] / r["weights_measured_bytes"]
        p = r["peak_estimate_bytes"] / r["peak_measured_bytes"] if r["peak_measured_bytes"] else float("nan")
        print(f"{r['model']:22} {r['precision']:9} {w:17.4f} {p:14.4f}")
    (HERE.parent / "estimate_vs_matrix.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
