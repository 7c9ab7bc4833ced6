"""One RunSpec in one process: load -> quality -> latency -> Result.

The runner starts it with `python -c "from quantbench.worker import main; main()"`; it reads
a Job as JSON on stdin and writes JSON lines on stdout: {"phase": ...} while working,
{"result": ...} last (quantbench.results says how both are written and read).
Whatever was measured before a failure is kept in the Result beside the error.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

from quantbench.calibration import calibration_metrics
from quantbench.errors import QuantbenchError
from quantbench.loading import Loaded, default_device, load
from quantbench.logfilter import log_repeats_once
from quantbench.measure import latency, quality
from quantbench.measure.hygiene import DeviceWatch
from quantbench.measure.memory import MemoryProbe, copy_bandwidth_bytes_per_s, device_name
from quantbench.precisions import LoadOptions
from quantbench.results import (
    Job,
    Result,
    Workload,
    library_versions,
    now_iso,
    phase_line,
    result_line,
)

OOM = "out of memory"


def _emit(line: str) -> None:
    sys.stdout.write(line)
    sys.stdout.flush()


def _load_metrics(loaded: Loaded, probe: MemoryProbe, rss_before: int) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "weights_footprint_bytes": loaded.inspection.footprint_bytes,
        "load_seconds": loaded.load_seconds,
    }
    if probe.on_cuda:
        metrics |= {
            "allocated_after_load_bytes": probe.allocated_bytes(),
            "peak_load_bytes": probe.peak_bytes(),
            "reserved_after_load_bytes": probe.reserved_bytes(),
        }
    else:
        rss = probe.allocated_bytes()
        metrics |= {"rss_after_load_bytes": rss, "rss_growth_load_bytes": rss - rss_before}
    return metrics


def _quality(loaded: Loaded, work: Workload, job: Job) -> dict[str, Any]:
    reference = Path(job.reference) if job.reference else None
    save = Path(job.save_reference) if job.save_reference else None
    return quality.measure(loaded.model, loaded.tokenizer, work, reference=reference, save_reference=save)


def _latency(loaded: Loaded, work: Workload, probe: MemoryProbe, notes: dict[str, Any]) -> dict[str, Any]:
    from quantbench.engine import get_engine

    config = loaded.model.config
    max_positions = getattr(config, "max_position_embeddings", 2048)
    source = None
    if loaded.tokenizer is not None:
        source = torch.tensor(loaded.tokenizer(quality.load_text()).input_ids)
    ids_for = lambda b, n: latency.prompt_ids(source, config.vocab_size, b, n)  # noqa: E731
    lengths = latency.usable_prompt_lengths(work.prompt_lengths, max_positions, work.new_tokens)
    metrics: dict[str, Any] = latency.measure_prefill(
        loaded.model, ids_for, lengths, loaded.device, work.repeats, work.warmup
    )
    decode_prompt = min(lengths[0], 128)
    make = lambda batch: get_engine(  # noqa: E731
        work.engine, loaded.model, batch, decode_prompt + work.new_tokens, kernels=work.kernels
    )
    metrics |= latency.measure_batches(
        make, ids_for, work.batch_sizes, decode_prompt, work.new_tokens,
        loaded.device, work.repeats, work.warmup, probe, notes,
    )
    return metrics


def execute(job: Job) -> Result:
    spec = job.spec
    work = Workload.from_dict(spec.workload)
    device = default_device()
    probe = MemoryProbe(device)
    result = Result(spec=spec, device=device_name(device), versions=library_versions(), timestamp=now_iso())
    notes: dict[str, Any] = {"memory_source": probe.source, "engine": work.engine}
    result.info = notes
    try:
        _emit(phase_line("loading"))
        rss_before = probe.allocated_bytes()
        probe.reset_peak()
        loaded = load(spec.model, spec.precision, LoadOptions(**spec.options), adapter=spec.adapter)
        result.random_weights = loaded.model_ref.random_weights
        notes["inspection"] = loaded.inspection.to_dict()
        result.metrics |= _load_metrics(loaded, probe, rss_before)
        result.metrics |= calibration_metrics(loaded.model.name_or_path)  # calibrated rows only
        if probe.on_cuda:
            result.metrics["per_device_allocated_bytes"] = probe.per_device_allocated() or None
            if hasattr(loaded.model, "hf_device_map"):
                notes["device_map"] = {k: str(v) for k, v in loaded.model.hf_device_map.items()}
        if work.quality and not loaded.model_ref.random_weights:
            _emit(phase_line("quality"))
            result.metrics |= _quality(loaded, work, job)
        if work.latency:
            _emit(phase_line("latency"))
            with DeviceWatch(device) as watch:
                result.metrics |= _latency(loaded, work, probe, notes)
            result.shared_device, notes["isolation"] = watch.shared, watch.details
            bandwidth = copy_bandwidth_bytes_per_s(device)
            if bandwidth:
                result.metrics["copy_bandwidth_bytes_per_s"] = bandwidth
                result.metrics["bandwidth_limit_ms_per_token"] = (
                    1000 * loaded.inspection.footprint_bytes / bandwidth
                )
    except torch.OutOfMemoryError:
        result.error = OOM
    except QuantbenchError as err:
        result.error = str(err)
    except Exception as err:  # recorded, so one broken precision never stops the sweep
        result.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        notes["traceback"] = traceback.format_exc()
    return result


def main() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    log_repeats_once()
    job = Job.from_json(sys.stdin.read())
    _emit(result_line(execute(job)))


if __name__ == "__main__":
    main()
