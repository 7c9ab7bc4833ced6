"""RunSpecs -> one subprocess each -> Results appended to a JSONL file, resumable.

Each precision runs in its own process, so an OOM or a crash cannot touch another's numbers
and memory never leaks between precisions. A Result is appended the moment it exists; a rerun
skips specs already in the file unless forced.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from quantbench.lock import results_lock
from quantbench.precisions import LoadOptions, get_precision, reference_precision
from quantbench.report.notebook import ResultList
from quantbench.results import (
    Job,
    Result,
    RunSpec,
    Workload,
    append_result,
    library_versions,
    now_iso,
    parse_line,
    read_results,
)

Progress = Callable[[str], None]


def _spec_options(options: LoadOptions) -> dict[str, Any]:
    """Only what differs from the defaults, so specs stay short and resume keys stay stable."""
    default = asdict(LoadOptions())
    return {k: v for k, v in asdict(options).items() if v != default[k]}


def build_specs(model: str, precisions: list[str], workload: Workload, options: LoadOptions,
                adapter: str | None, device: str) -> list[RunSpec]:
    """The reference precision first (quality is measured against it), then the rest."""
    names = [get_precision(p).name for p in precisions]
    work = workload.to_dict()

    def spec(name: str, with_adapter: str | None) -> RunSpec:
        return RunSpec(model=model, precision=name, options=_spec_options(options), workload=work,
                       adapter=with_adapter)

    specs = [spec(name, adapter) for name in names]
    if workload.quality:  # the base model, never an adapter, is what quality is judged against
        reference = spec(reference_precision(device), None)
        if workload.reference_model:  # that model's own reference row, as `run` on it writes it
            own = {k: v for k, v in work.items() if k != "reference_model"}
            reference = replace(reference, model=workload.reference_model, workload=own)
        specs = [reference] + [s for s in specs if s != reference]
    return specs


def _reference_model(spec: RunSpec) -> str:
    return spec.workload.get("reference_model") or spec.model


def reference_file(spec: RunSpec, results_path: Path) -> Path:
    """Where the reference's log-probs live: keyed by everything that shapes them."""
    work = spec.workload
    keyed = [_reference_model(spec), spec.options.get("trust_remote_code"), work.get("text_file"),
             work.get("dataset"), work.get("ppl_context"), work.get("ppl_stride"),
             work.get("ppl_max_tokens"), work.get("kl", "sampled"), work.get("ppl_protocol", "sliding")]
    digest = hashlib.sha1(json.dumps(keyed, default=str).encode()).hexdigest()[:12]
    return results_path.with_name(results_path.name + ".ref") / f"reference-{digest}.npy"


def _job(spec: RunSpec, reference_name: str, results_path: Path) -> Job:
    quality_on = spec.workload.get("quality", True)
    ref_file = reference_file(spec, results_path)
    is_reference = spec.precision == reference_name and spec.adapter is None and spec.model == _reference_model(spec)
    return Job(
        spec=spec,
        save_reference=str(ref_file) if quality_on and is_reference else None,
        reference=str(ref_file) if quality_on and not is_reference and ref_file.exists() else None,
    )


def _run_in_subprocess(job: Job, log_path: Path, progress: Progress) -> Result:
    spec = job.spec
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            # -c, not -m: the worker stays the module quantbench.worker, which tests can patch
            [sys.executable, "-c", "from quantbench.worker import main; main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
        )
        try:
            proc.stdin.write(job.to_json())
            proc.stdin.close()
            result = None
            for line in proc.stdout:
                phase, finished = parse_line(line)
                if phase:
                    progress(f"{spec.precision}: {phase}")
                result = finished or result
            code = proc.wait()
        except BaseException:  # Ctrl-C included: never leave a worker behind
            proc.kill()
            proc.wait()
            raise
    if result is not None:
        return result
    return Result(
        spec=spec, error=f"crashed (exit code {code}); log: {log_path}", device="unknown",
        versions=library_versions(), timestamp=now_iso(),
    )


def run_specs(specs: list[RunSpec], results_path: str | Path, force: bool = False,
              progress: Progress | None = None) -> tuple[list[Result], list[str]]:
    """Run what is not done yet; return every Result for `specs` and any unreadable-line notes."""
    from quantbench.loading import default_device

    results_path = Path(results_path)
    progress = progress or (lambda message: None)
    done, problems = read_results(results_path) if results_path.exists() else ([], [])
    by_key = {r.key: r for r in done if r.answered}  # a crash or error is redone
    reference_name = reference_precision(default_device())
    out: list[Result] = []
    for index, spec in enumerate(specs, 1):
        job = _job(spec, reference_name, results_path)
        needs_reference_file = job.save_reference and not Path(job.save_reference).exists()
        if spec.key() in by_key and not force and not needs_reference_file:
            progress(f"[{index}/{len(specs)}] {spec.precision}: already measured, skipped")
            out.append(by_key[spec.key()])
            continue
        progress(f"[{index}/{len(specs)}] {spec.precision}: starting")
        log = results_path.with_name(results_path.name + ".logs") / f"{spec.precision}-{spec.key()}.log"
        result = _run_in_subprocess(job, log, progress)
        append_result(results_path, result)
        out.append(result)
    return out, problems


def run(model: str = "smollm2-135m", precisions: list[str] | str = "fp16,int8,nf4",
        workload: Workload | None = None, results_path: str | Path = "results.jsonl",
        options: LoadOptions | None = None, adapter: str | None = None, force: bool = False,
        progress: Progress | None = None) -> ResultList:
    """Measure every precision of one model, each in its own process; see the README."""
    from quantbench.loading import default_device
    from quantbench.models import resolve

    if isinstance(precisions, str):
        precisions = [p for p in precisions.split(",") if p.strip()]
    workload = workload or Workload.for_device(default_device())
    ref = resolve(model)  # fail fast on an unknown model, and materialise aliases once
    if ref.random_weights:
        workload = replace(workload, quality=False)
    if not workload.quality:  # no quality: nothing is judged against a reference model
        workload = replace(workload, reference_model=None)
    specs = build_specs(ref.name, precisions, workload, options or LoadOptions(), adapter, default_device())
    with results_lock(results_path):  # a second sweep on the same file is refused, not interleaved
        results, problems = run_specs(specs, results_path, force=force, progress=progress)
    for problem in problems:
        print(problem, file=sys.stderr)
    return ResultList(results)
