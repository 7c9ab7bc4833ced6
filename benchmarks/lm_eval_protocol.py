"""`--ppl-protocol lm-eval` against lm-eval's own loglikelihood_rolling: same number, and the time of both.

    PYTHONPATH=src python benchmarks/lm_eval_protocol.py --out benchmarks/results/cpu

SmolLM2-135M (real weights), fp32, the held-out passage as one document, lm-eval's HFLM
wrapping the very same loaded model (batch size 1) and quantbench's scoring with
--ppl-batch-size 1 and 4. Prints both log-likelihoods, word perplexities and seconds;
writes lm_eval_protocol.json into --out. Needs `pip install lm-eval`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

import quantbench
from quantbench.measure import quality
from quantbench.results import Workload, library_versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--context", type=int, default=1024, help="lm-eval's max_length")
    parser.add_argument("--chars", type=int, default=None, help="score only the passage's first N characters")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import weighted_perplexity
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results

    loaded = quantbench.load("smollm2-135m", "fp32")
    text = quality.load_text()[: args.chars]
    args.out.mkdir(parents=True, exist_ok=True)
    text_file = args.out / "lm_eval_protocol.txt"
    text_file.write_text(text)
    rows = []
    try:
        for batch in (1, 4):
            work = Workload(text_file=str(text_file), ppl_context=args.context, ppl_protocol="lm-eval",
                            ppl_batch_size=batch)
            start = time.perf_counter()
            ours = quality.measure(loaded.model, loaded.tokenizer, work)
            rows.append({"who": f"quantbench --ppl-batch-size {batch}", "seconds": time.perf_counter() - start,
                         "loglikelihood": ours["loglikelihood"], "word_perplexity": ours["word_perplexity"],
                         "scored_tokens": ours["scored_tokens"]})
    finally:
        text_file.unlink()
    harness = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, max_length=args.context)
    start = time.perf_counter()
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (theirs,) = harness.loglikelihood_rolling([request], disable_tqdm=True)
    seconds = time.perf_counter() - start
    word = weighted_perplexity([process_results({"page": text}, [theirs])["word_perplexity"]])
    rows.append({"who": "lm-eval HFLM batch 1", "seconds": seconds, "loglikelihood": theirs,
                 "word_perplexity": word, "scored_tokens": rows[0]["scored_tokens"]})
    report = {"command": "PYTHONPATH=src python benchmarks/lm_eval_protocol.py --out " + str(args.out)
                         + (f" --chars {args.chars}" if args.chars else ""),
              "context": args.context, "threads": args.threads, "machine": platform.platform(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "versions": {**library_versions(), "lm_eval": _version("lm_eval")},
              "relative_difference": abs(rows[0]["loglikelihood"] / theirs - 1), "rows": rows}
    (args.out / "lm_eval_protocol.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'':32} {'log-likelihood':>16} {'word ppl':>10} {'tokens':>7} {'seconds':>8}")
    for row in rows:
        print(f"{row['who']:32} {row['loglikelihood']:>16.6f} {row['word_perplexity']:>10.4f} "
              f"{row['scored_tokens']:>7} {row['seconds']:>8.2f}")
    print(f"relative difference of the log-likelihood: {report['relative_difference']:.2e}")


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
