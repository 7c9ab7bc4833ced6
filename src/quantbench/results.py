"""RunSpec in, Result out: the two plain records every part of quantbench shares.

No torch here: reports and recommend read Results without importing a framework.

Metric names carry their unit. Those the runner writes (None where not measured):
  weights_footprint_bytes, allocated_after_load_bytes, peak_load_bytes,
  peak_generate_bytes_b{B}, rss_growth_load_bytes (CPU), load_seconds,
  prefill_ms_p{L} (+ _p10/_p90), ttft_ms, decode_ms_per_token (+ _p10/_p90),
  tokens_per_s_b{B}, perplexity, ppl_ratio, kl_mean, kl_p99, top1_agreement,
  scored_tokens, bandwidth_limit_ms_per_token.
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
    text_file: str | None = None
    dataset: str | None = None
    engine: str = "eager"
    latency: bool = True
    quality: bool = True

    @classmethod
    def for_device(cls, device: str, **overrides: Any) -> Workload:
        """GPU defaults are the issue's full sweep; the CPU gets a lighter one that ends in minutes."""
        if device.startswith("cuda"):
            return cls(**overrides)
        light = {"prompt_lengths": (128, 512), "batch_sizes": (1, 4), "new_tokens": 32, "ppl_max_tokens": 2048}
        return cls(**{**light, **overrides})


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
