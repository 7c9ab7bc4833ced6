"""The estimate against what loading really allocates, on real SmolLM2 weights on CPU."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from conftest import SHORT_CALIBRATION

import quantbench
from quantbench.calibration.scheme import Calibrated
from quantbench.errors import QuantbenchError
from quantbench.estimate import (
    EstimateSettings,
    build_skeleton,
    default_precisions,
    estimate,
    kv_cache_bytes,
    parse_size,
    training,
)
from quantbench.precisions import PRECISIONS, get_precision

CPU = EstimateSettings(device="cpu")
# Every row that loads on the CPU, but HQQ: its optimiser takes seconds per linear here (its
# storage is checked against the loaded model in tests/test_backends.py).
LOADABLE_ON_CPU = [n for n in default_precisions("cpu") if PRECISIONS[n].backend != "hqq"]
QUANTIZED = [n for n, p in PRECISIONS.items() if p.quantizes]


@pytest.fixture(scope="module")
def small_smollm2():
    """SmolLM2's real weights cut to its first 2 blocks: every precision loads in seconds.

    Kept at one place in QUANTBENCH_CACHE: a calibrated checkpoint is cached by its model's
    folder, so the calibrated rows are calibrated once, not once per session."""
    from quantbench.models import cache_dir

    folder = cache_dir() / "tests" / "smollm2-2blocks"
    if (folder / "config.json").is_file():
        return str(folder)
    loaded = quantbench.load("smollm2-135m", "fp32", device="cpu")
    model = loaded.model
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:2]
    # written beside it and renamed into place: a half-written folder is never found
    partial = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    loaded.tokenizer.save_pretrained(partial)
    try:
        partial.rename(folder)
    except OSError:  # another process put it there first
        shutil.rmtree(partial, ignore_errors=True)
    return str(folder)


def _close(estimated: int, measured: int, tolerance: float = 0.03) -> bool:
    return abs(estimated - measured) / measured <= tolerance


def test_full_smollm2_fp32_matches_inspection(loaded_model):
    loaded = loaded_model("fp32")
    result = estimate("smollm2-135m", "fp32", CPU).precisions[0]
    assert result.parameters == loaded.inspection.parameters  # tied embeddings counted once
    assert _close(result.weights_bytes, loaded.inspection.footprint_bytes)


@pytest.mark.parametrize("precision", LOADABLE_ON_CPU)
def test_weights_match_loaded_footprint(small_smollm2, precision):
    pytest.importorskip(PRECISIONS[precision].backend)
    # the calibration's length changes the values, never the layout or the footprint
    short = SHORT_CALIBRATION if isinstance(PRECISIONS[precision].scheme, Calibrated) else {}
    loaded = quantbench.load(small_smollm2, precision, device="cpu", **short)
    info = loaded.inspection
    result = estimate(small_smollm2, precision, CPU).precisions[0]
    assert result.parameters == info.parameters
    assert result.quantized_linears == sum(info.quantized_layers.values())
    assert _close(result.weights_bytes, info.footprint_bytes), (
        result.weights_bytes, info.footprint_bytes)


@pytest.mark.parametrize("name", QUANTIZED)
def test_bits_per_weight_agree_with_precision_table(name):
    precision = get_precision(name)
    result = estimate("llama-2-7b-arch", name).precisions[0]
    weight_bytes = result.weights_bytes - 2 * result.full_precision_parameters
    bits = 8 * weight_bytes / result.quantized_parameters
    assert abs(bits - precision.weight_bits) / precision.weight_bits < 0.01
    # what `estimate` prints: the same, over the linears it quantizes (lm_head is left alone)
    assert abs(result.bits_per_weight - precision.weight_bits) / precision.weight_bits < 0.01


@pytest.mark.parametrize("precision", ["gptq-4bit", "awq-4bit"])
def test_calibrated_rows_run_with_dense_weights_as_estimated(small_smollm2, precision):
    """transformers expands compressed-tensors' packed int4 to dense weights on the first
    forward: the estimate's run-time weights (and so its peak) are that, not the packed size."""
    pytest.importorskip("llmcompressor")
    from quantbench.inspect import inspect_model

    loaded = quantbench.load(small_smollm2, precision, device="cpu", **SHORT_CALIBRATION)
    result, dense = estimate(small_smollm2, [precision, "fp32"], CPU).precisions
    assert _close(result.weights_bytes, loaded.inspection.footprint_bytes)
    with torch.no_grad():
        loaded.model(torch.tensor([[1, 2, 3]]))
    running = inspect_model(loaded.model).footprint_bytes
    assert running > 1.15 * loaded.inspection.footprint_bytes  # it did expand
    assert _close(result.run_weights_bytes, running)
    assert result.run_weights_bytes == dense.weights_bytes
    assert result.peak_inference_bytes == dense.peak_inference_bytes


def test_split_over_gpus_counts_expanded_weights_on_each_gpu():
    """gptq-4bit is placed by its packed size but each GPU then holds its share expanded."""
    result = estimate("llama-2-7b-arch", "gptq-4bit", EstimateSettings(gpus=2)).precisions[0]
    shares = result.gpu_split
    assert sum(s.run_weights_bytes for s in shares) == result.run_weights_bytes
    assert all(s.run_weights_bytes > 3 * s.weights_bytes for s in shares)
    assert result.per_gpu_inference_bytes > max(s.run_weights_bytes for s in shares)


def test_torchao_int4_keeps_linears_its_groups_do_not_divide():
    """SmolLM2's 576-wide linears stay in bf16 under torchao int4 (group 128), as torchao leaves
    them; only down_proj (1536 inputs) is int4: 30 of 210, as inspect found on the H100."""
    result, bf16 = estimate("smollm2-135m", ["torchao-int4", "bf16"]).precisions
    assert result.quantized_linears == 30
    measured = 223.9 * 2**20  # its weights on the H100 (benchmarks/results/h100/calibrated/)
    assert _close(result.weights_bytes, measured)
    assert 0.8 < result.weights_bytes / bf16.weights_bytes < 0.9


def test_kv_cache_matches_transformers_cache(small_smollm2):
    loaded = quantbench.load(small_smollm2, "fp32", device="cpu")
    batch, seq = 2, 24
    ids = torch.randint(0, 1000, (batch, seq))
    with torch.no_grad():
        cache = loaded.model(ids, use_cache=True).past_key_values
    measured = sum(
        t.numel() * t.element_size()
        for layer in cache.layers for t in (layer.keys, layer.values)
    )
    result = estimate(small_smollm2, "fp32", EstimateSettings(device="cpu", batch_size=batch,
                                                              seq_len=seq))
    assert result.precisions[0].kv_cache_bytes == measured
    assert kv_cache_bytes(result.architecture, batch, seq, 2) * 2 == measured


def test_lora_trainables_and_optimizer_states_match_peft_and_bitsandbytes(small_smollm2):
    from peft import LoraConfig, get_peft_model

    from quantbench.training import build_optimizer, find_target_modules, get_optimizer, optimizer_state_bytes

    loaded = quantbench.load(small_smollm2, "fp32", device="cpu")
    model = get_peft_model(loaded.model, LoraConfig(
        r=8, target_modules=find_target_modules(loaded.model), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    skeleton = build_skeleton(loaded.model.config)
    for optimizer in ("adamw", "adamw8bit"):
        settings = EstimateSettings(device="cpu", train="lora", optimizer=optimizer, lora_r=8)
        est, note = training(skeleton, get_precision("fp32"), torch.float32, settings)
        assert note is None
        assert est.trainable_parameters == sum(p.numel() for p in params)
        opt = build_optimizer(get_optimizer(optimizer), params, lr=1e-4)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        measured, _ = optimizer_state_bytes(opt)
        assert _close(est.optimizer_bytes, measured, 0.01), (optimizer, est.optimizer_bytes,
                                                            measured)


def test_training_modes_and_checkpointing():
    settings = EstimateSettings(train="qlora", optimizer="paged_adamw_8bit", seq_len=512)
    result = estimate("tinyllama-1.1b-arch", "fp16,nf4", settings)
    fp16, nf4 = result.precisions
    assert fp16.training is None and "qlora" in fp16.training_note
    t = nf4.training
    assert t.activations_checkpointed_bytes < t.activations_bytes
    assert t.peak_bytes > nf4.weights_bytes
    full = estimate("tinyllama-1.1b-arch", "bf16",
                    EstimateSettings(train="full", optimizer="adamw")).precisions[0].training
    full8 = estimate("tinyllama-1.1b-arch", "bf16",
                     EstimateSettings(train="full", optimizer="adamw8bit")).precisions[0].training
    assert full.optimizer_bytes > 1.8 * full8.optimizer_bytes  # bf16 states vs 8-bit states


def test_split_over_gpus_places_every_block_once():
    result = estimate("llama-2-7b-arch", "fp16,nf4", EstimateSettings(gpus=2))
    for p in result.precisions:
        devices = [s.device for s in p.gpu_split]
        assert devices == ["cuda:0", "cuda:1"]
        placed = [m for s in p.gpu_split for m in s.modules if m.startswith("model.layers.")]
        assert sorted(placed) == sorted(f"model.layers.{i}" for i in range(32))
        assert sum(s.weights_bytes for s in p.gpu_split) == p.weights_bytes
        assert p.per_gpu_inference_bytes < p.inference_total_bytes


def test_unknown_architecture_is_a_clear_error():
    from transformers import GPT2Config

    with pytest.raises(QuantbenchError, match="gpt2"):
        estimate("gpt2-like", "fp16", config=GPT2Config(n_layer=2))


@pytest.mark.parametrize("settings", [EstimateSettings(batch_size=0), EstimateSettings(train="x"),
                                      EstimateSettings(optimizer="sgd"),
                                      EstimateSettings(compute_dtype="fp8")])
def test_bad_settings_are_user_errors(settings):
    with pytest.raises(QuantbenchError):
        estimate("tinyllama-1.1b-arch", "fp16", settings)


def test_sizes():
    assert parse_size("8GiB") == 8 * 2**30
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("8000MiB") == 8000 * 2**20
    for bad in ("8", "eight GiB", "8XB", "0GiB"):
        with pytest.raises(QuantbenchError):
            parse_size(bad)


def test_cli_json_matches_api():
    from typer.testing import CliRunner

    from quantbench import cli

    cli._register_commands()
    out = CliRunner().invoke(cli.app, ["estimate", "tinyllama-1.1b-arch", "-p", "nf4", "--json",
                                       "--seq-len", "256"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    api = estimate("tinyllama-1.1b-arch", "nf4", EstimateSettings(seq_len=256))
    assert data["precisions"][0]["weights_bytes"] == api.precisions[0].weights_bytes
    assert set(data["precisions"][0]["fits"]) >= {"T4 16GB", "H100 80GB"}
