"""Markdown table of the calibrated rows next to the bitsandbytes ones, from a results file.

    python benchmarks/calibrated_table.py benchmarks/results/cpu/calibrated.jsonl
"""

from __future__ import annotations

import argparse

from quantbench.results import latest_by_key, read_results

COLUMNS = ("precision", "perplexity", "ratio", "KL mean", "top-1", "weights (MiB)", "bits/weight",
           "calibration")


def _bits_per_weight(result) -> str:
    """Stored bits per quantized-or-not weight: footprint over the model's logical parameters."""
    inspection = result.info.get("inspection") or {}
    params = inspection.get("parameters")
    footprint = result.metrics.get("weights_footprint_bytes")
    return f"{8 * footprint / params:.2f}" if params and footprint else "-"


def row(result) -> list[str]:
    m = result.metrics
    if not result.ok:
        return [result.spec.precision, f"error: {result.error}", *["-"] * (len(COLUMNS) - 2)]
    calibration = "-"
    if m.get("calibration_seconds") is not None:
        peak = m.get("calibration_peak_bytes") or m.get("calibration_peak_rss_bytes")
        calibration = (f"{m['calibration_samples']}x{m['calibration_seq_len']} tokens, "
                       f"{m['calibration_seconds']:.0f} s, peak {peak / 2**30:.2f} GiB")
    return [
        f"`{result.spec.precision}`",
        f"{m['perplexity']:.2f}",
        f"{m['ppl_ratio']:.3f}" if m.get("ppl_ratio") else "1.000",
        f"{m['kl_mean']:.4f}" if m.get("kl_mean") is not None else "-",
        f"{m['top1_agreement']:.3f}" if m.get("top1_agreement") is not None else "-",
        f"{m['weights_footprint_bytes'] / 2**20:.1f}",
        _bits_per_weight(result),
        calibration,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results")
    args = parser.parse_args()
    results, problems = read_results(args.results)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for result in latest_by_key(results):
        print("| " + " | ".join(row(result)) + " |")
    for problem in problems:
        print(problem)


if __name__ == "__main__":
    main()
