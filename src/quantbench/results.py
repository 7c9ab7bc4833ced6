"""RunSpec in, Result out: the two plain records every part of quantbench shares.

No torch here: reports and recommend read Results without importing a framework.

Metric names carry their unit. Those the runner writes (None where not measured):
  weights_footprint_bytes, allocated_after_load_bytes, peak_load_bytes,
  peak_generate_bytes_b{B}, rss_growth_load_bytes (CPU), load_seconds,
  prefill_ms_p{L} (+ _p10/_p90), ttft_ms, decode_ms_per_token (+ _p10/_p90),
  tokens_per_s_b{B}, perplexity, ppl_ratio, ln_ppl_ratio, kl_mean, kl_p99, kl_median,
  top1_agreement (each quality figure with its standard error as <name>_se; kl_mean_mc_se is
  the Monte-Carlo part of kl_mean_se), scored_tokens, bandwidth_limit_ms_per_token;
  under --ppl-protocol lm-eval also loglikelihood, word_perplexity, byte_perplexity, bits_per_byte.
Finetune / optimizer results (spec.kind "finetune" / "optimizer"): train_loss_first,
  train_loss_last, train_steps, train_seconds, train_step_ms (+ _p10/_p90), optimizer_step_ms,
  tokens_per_s, tokens_per_s_per_process, peak_train_bytes (CUDA) or rss_growth_train_bytes
  (CPU), trainable_parameters, all_parameters, trainable_share, optimizer_state_bytes,
  paged_state_bytes, optimizer_state_bytes_per_param, training_blocks.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from quantbench.errors import QuantbenchError

TRACKED_PACKAGES = ("torch", "transformers", "bitsandbytes", "accelerate", "peft", "quantbench")
# The error of a precision that does not fit the device: an answer, not a failure.
OUT_OF_MEMORY = "out of memory"


@dataclass(frozen=True)
class Workload:
    """What is measured and how hard; short settings keep CPU tests fast."""

    prompt_lengths: tuple[int, ...] = (128, 512, 2048)
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    new_tokens: int = 64
    repeats: int = 3
    warmup: int = 1
    ppl_context: int = 1024
    ppl_stride: int = 512
    ppl_max_tokens: int | None = None
    ppl_batch_size: int = 8  # windows per forward, fewer when their logits would not fit
    ppl_protocol: str = "sliding"  # sliding | lm-eval
    kl: str = "sampled"  # sampled[:K:M] | exact: how the reference's log-probs are kept
    text_file: str | None = None
    dataset: str | None = None
    engine: str = "eager"
    kernels: str = "quantbench"  # the fast engine's decode GEMVs on CUDA: quantbench | bnb
    latency: bool = True
    quality: bool = True
    reference_model: str | None = None  # quality judged against this model (default: MODEL itself)

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> Workload:
        """GPU defaults are the full sweep; the CPU gets a lighter one that ends in minutes."""
        if device.startswith("cuda"):
            return cls(**overrides)
        light = {"prompt_lengths": (128, 512), "batch_sizes": (1, 4), "new_tokens": 32, "ppl_max_tokens": 2048,
                 "ppl_batch_size": 1}
        return cls(**{**light, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """As a RunSpec stores it: JSON types (lists, not tuples), so resume keys are stable; a
        reference model left at its default is left out, so the keys of results measured before
        the option existed stay what they were."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if out["reference_model"] is None:
            del out["reference_model"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class RunSpec:
    model: str
    precision: str
    kind: str = "benchmark"  # benchmark | finetune | optimizer
    options: dict[str, Any] = field(default_factory=dict)  # LoadOptions fields set by the user
    workload: dict[str, Any] = field(default_factory=dict)  # Workload / training settings
    adapter: str | None = None

    def key(self) -> str:
        """Stable identity used to skip finished specs on resume."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """What the runner hands one worker process, as one JSON document on its stdin."""

    spec: RunSpec
    reference: str | None = None  # log-probs of the reference precision to compare against
    save_reference: str | None = None  # this run is the reference: write its log-probs here

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(**{**data, "spec": RunSpec(**data["spec"])})


# What a worker writes on stdout, one JSON object a line: {"phase": ...} while it works, then
# {"result": ...}. Anything else on stdout (a library's print) is ignored.
def phase_line(phase: str) -> str:
    return json.dumps({"phase": phase}) + "\n"


def result_line(result: Result) -> str:
    return json.dumps({"result": result.to_dict()}, default=str) + "\n"


def parse_line(line: str) -> tuple[str | None, Result | None]:
    """(phase, None), (None, result) or (None, None) for a line that is not a message."""
    try:
        message = json.loads(line) if line.startswith("{") else {}
    except json.JSONDecodeError:
        return None, None
    if "result" in message:
        return None, Result.from_dict(message["result"])
    return message.get("phase"), None


@dataclass
class Result:
    spec: RunSpec
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # inspection, placement, notes
    error: str | None = None
    random_weights: bool = False
    device: str = ""
    shared_device: str | None = None  # why timings may be slow: other work on the device meanwhile
    versions: dict[str, str] = field(default_factory=dict)
    timestamp: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def answered(self) -> bool:
        """Measured, or known not to fit; anything else is redone by the next run."""
        return self.error is None or self.error == OUT_OF_MEMORY

    @property
    def key(self) -> str:
        return self.spec.key()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        data = {k: v for k, v in data.items() if k != "key"}
        spec = RunSpec(**data.pop("spec"))
        return cls(spec=spec, **data)


# Metrics measured over a sweep carry the swept value in their name: the batch size
# (tokens_per_s_b4) or the prompt length (prefill_ms_p512).
SWEEP_SEPARATORS = {
    "peak_generate_bytes": "_b",
    "tokens_per_s": "_b",
    "decode_ms_per_token": "_b",
    "prefill_ms": "_p",
}


def sweep_key(family: str, value: int) -> str:
    """The metric name of one point of a sweep: sweep_key("tokens_per_s", 4) == "tokens_per_s_b4"."""
    return f"{family}{SWEEP_SEPARATORS[family]}{value}"


def sweep(metrics: dict[str, Any], family: str) -> dict[int, Any]:
    """{swept value: measurement} of one family, ascending; None where it was not measured."""
    prefix = family + SWEEP_SEPARATORS[family]
    points = {int(k[len(prefix):]): v for k, v in metrics.items()
              if isinstance(k, str) and k.startswith(prefix) and k[len(prefix):].isdigit()}
    return dict(sorted(points.items()))


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_result(path: str | Path, result: Result) -> None:
    """One line per Result, flushed at once, so nothing measured is lost to a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(result.to_dict(), default=str) + "\n")
        handle.flush()


def read_results(path: str | Path) -> tuple[list[Result], list[str]]:
    """All readable Results and one message per line that could not be read."""
    path = Path(path)
    if not path.exists():
        raise QuantbenchError(f"results file '{path}' does not exist")
    results: list[Result] = []
    problems: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            results.append(Result.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, KeyError, AttributeError) as err:
            problems.append(f"{path}:{number}: skipped unreadable line ({type(err).__name__})")
    return results, problems


def latest_by_key(results: list[Result]) -> list[Result]:
    """The newest Result for each spec, in first-seen order (a rerun with --force replaces)."""
    newest: dict[str, Result] = {}
    for result in results:
        newest.pop(result.key, None)
        newest[result.key] = result
    return list(newest.values())
