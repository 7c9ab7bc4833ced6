from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from quantbench import validate
from quantbench.commands import _options as opt
from quantbench.errors import QuantbenchError
from quantbench.results import Workload

if TYPE_CHECKING:
    from quantbench.models import ModelRef


def run_command(
    model: str = typer.Argument("smollm2-135m", help="HF id, local folder or offline alias"),
    precisions: str = typer.Option("fp16,int8,nf4", "--precisions", "-p", help="comma-separated"),
    results: Path = typer.Option(Path("results.jsonl"), "--results", "-o", help="JSONL, appended"),
    force: bool = typer.Option(False, help="redo specs already in the results file"),
    prompt_lengths: str = typer.Option(None, help="prefill lengths, capped by context [GPU 128,512,2048; CPU 128,512]"),
    batch_sizes: str = typer.Option(None, help="batch sweep for tokens/s [GPU 1,4,16; CPU 1,4]"),
    new_tokens: int = typer.Option(None, help="generated tokens per decode measurement [GPU 64; CPU 32]"),
    repeats: int = typer.Option(3),
    warmup: int = typer.Option(1),
    engine: str = typer.Option("eager", help="eager (model.generate) | fast (static cache, graphs)"),
    kernels: str = opt.KERNELS,
    ppl_context: int = typer.Option(1024, help="perplexity window (tokens)"),
    ppl_stride: int = typer.Option(512, help="perplexity stride (tokens)"),
    max_ppl_tokens: int = typer.Option(None, help="score only the first N tokens [GPU: all; CPU: 2048]"),
    ppl_batch_size: int = typer.Option(None, min=1, help="perplexity windows per forward [GPU 8; CPU 1]"),
    ppl_protocol: str = typer.Option("sliding", help="sliding (ours) | lm-eval (its loglikelihood_rolling; "
                                                     "--ppl-context is its max_length)"),
    kl: str = typer.Option("sampled", "--kl", help="reference kept for KL: sampled (top-16 + a "
                                                   "priority sample of the tail, 1 KB/token) | sampled:K:M | "
                                                   "exact (full vocabulary)"),
    text_file: Path = typer.Option(None, help="text for perplexity (default: our held-out passage)"),
    dataset: str = typer.Option(None, help="HF dataset name:config:split (online only)"),
    latency: bool = typer.Option(True, "--latency/--no-latency"),
    quality: bool = typer.Option(True, "--quality/--no-quality"),
    adapter: str = typer.Option(None, help="LoRA adapter folder to load onto every precision"),
    reference_model: str = typer.Option(None, help="judge quality against this model in the reference "
                                                   "precision (a pre-quantized MODEL's unquantized original; "
                                                   "same tokenizer) [default: MODEL]"),
    compute_dtype: str = opt.COMPUTE_DTYPE,
    skip_modules: str = opt.SKIP_MODULES,
    int8_threshold: float = opt.INT8_THRESHOLD,
    device_map: str = opt.DEVICE_MAP,
    max_memory: str = opt.MAX_MEMORY,
    trust_remote_code: bool = opt.TRUST_REMOTE_CODE,
    calibration_file: Path = opt.CALIBRATION_FILE,
    calibration_samples: int = opt.CALIBRATION_SAMPLES,
    calibration_seq_len: int = opt.CALIBRATION_SEQ_LEN,
) -> None:
    """Measure memory, latency and quality of MODEL in each precision, one process each."""
    from quantbench.loading import default_device
    from quantbench.measure.quality import PROTOCOLS
    from quantbench.measure.reference import parse_kl
    from quantbench.models import resolve
    from quantbench.report import rich_renderables
    from quantbench.runner import run

    # everything checkable is checked here, before a worker starts or the results file is touched
    names = validate.precision_names(precisions)
    validate.model_name(model)
    validate.positive(repeats=repeats)
    validate.at_least(0, warmup=warmup)
    validate.at_least(2, new_tokens=new_tokens)
    validate.perplexity_window(ppl_context, ppl_stride, max_ppl_tokens)
    validate.engine(engine)
    parse_kl(kl)
    if ppl_protocol not in PROTOCOLS:
        raise QuantbenchError(f"unknown --ppl-protocol '{ppl_protocol}'; choose from {', '.join(PROTOCOLS)}")
    chosen = {
        "prompt_lengths": opt.parse_ints(prompt_lengths, "--prompt-lengths") if prompt_lengths else None,
        "batch_sizes": opt.parse_ints(batch_sizes, "--batch-sizes") if batch_sizes else None,
        "new_tokens": new_tokens,
        "ppl_max_tokens": max_ppl_tokens,
        "ppl_batch_size": ppl_batch_size,
    }
    calibration = {"calibration_file": calibration_file, "calibration_samples": calibration_samples,
                   "calibration_seq_len": calibration_seq_len}
    options = opt.load_options(compute_dtype, skip_modules, int8_threshold, device_map, max_memory,
                               trust_remote_code, calibration)
    validate.results_to_append(results)
    if adapter:
        validate.adapter_folder(adapter)
    device = default_device()
    validate.runnable_here(names, device)
    ref = resolve(model)  # one line for a model that cannot be had; aliases materialise once
    reference_model = _reference_model(ref, reference_model) if quality else None
    _check_quality_text(ref, text_file, dataset, quality)
    validate.calibration_text(names, options, ref.source)
    workload = Workload.for_device(
        device, **{k: v for k, v in chosen.items() if v is not None},
        repeats=repeats, warmup=warmup, engine=engine, kernels=opt.kernels_choice(kernels),
        ppl_context=ppl_context, ppl_stride=ppl_stride, ppl_protocol=ppl_protocol, kl=kl,
        text_file=str(text_file) if text_file else None, dataset=dataset,
        latency=latency, quality=quality, reference_model=reference_model,
    )
    console = Console(stderr=True)
    try:
        with console.status("starting") as status:
            measured = run(model, names, workload, results, options=options, adapter=adapter,
                           force=force, progress=lambda message: status.update(message))
    except KeyboardInterrupt:
        kept = len(results.read_text().splitlines()) if results.exists() else 0
        console.print(f"interrupted: the {kept} result(s) already in {results} are kept; rerun to resume")
        raise typer.Exit(130) from None
    out = Console(width=None if sys.stdout.isatty() else 200)  # a file or pipe gets the full row
    for renderable in rich_renderables(measured):
        out.print(renderable)
    console.print(f"results: {results} (quantbench report {results} --html report.html)")
    failed = [r.spec.precision for r in measured if not r.answered]  # out of memory is an answer
    if failed:
        console.print(f"error: {', '.join(failed)} ended in an error (see the status column); "
                      f"the results are kept in {results} and a rerun redoes only these")
        raise typer.Exit(1)


def _reference_model(ref: ModelRef, name: str | None) -> str | None:
    """The --reference-model as results name it (None where it is MODEL itself), checked: it
    exists, has real weights, and cuts text into the same tokens as MODEL."""
    from quantbench.models import resolve

    if not name:
        return None
    validate.model_name(name)
    other = resolve(name)
    if other.name == ref.name:
        return None
    if other.random_weights:
        raise QuantbenchError(f"--reference-model '{name}' has random weights; quality against it means nothing")
    validate.same_tokenizer(ref.source, other.source, name)
    return other.name


def _check_quality_text(ref: ModelRef, text_file: Path | None, dataset: str | None, quality: bool) -> None:
    """The perplexity text, read in the parent: a typo fails here, not as a precision's result."""
    if not quality or ref.random_weights:
        return
    if text_file:
        text = validate.text_file(text_file)
        validate.enough_tokens(text, ref.source, f"text file '{text_file}'")
    elif dataset:
        validate.enough_tokens(validate.dataset(dataset), ref.source, f"dataset '{dataset}'")


def register(app: typer.Typer) -> None:
    app.command("run", epilog=opt.EXIT_CODES)(run_command)
