"""Optimizer comparison on the real SmolLM2 (QLoRA, CPU): state bytes, notes, Results."""

from __future__ import annotations

import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.results import append_result, read_results
from quantbench.training import (
    ComparisonConfig,
    compare_optimizers,
    get_optimizer,
    optimizer_notes,
    optimizer_state_bytes,
)


@pytest.fixture(scope="module")
def compared():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: oversubscribed threads slow torch 10x
    config = ComparisonConfig(
        modes=("qlora",), optimizers=("adamw", "adamw8bit", "paged_adamw_8bit"),
        seq_len=16, steps=1, lora_r=8,
    )
    yield compare_optimizers("smollm2-135m", config, device="cpu")
    torch.set_num_threads(before)


def test_one_result_per_optimizer_on_the_same_model(compared, tmp_path):
    assert [r.spec.workload["optimizer"] for r in compared] == [
        "adamw_torch", "adamw_bnb_8bit", "paged_adamw_8bit"
    ]
    assert all(r.ok and r.spec.kind == "optimizer" and r.spec.precision == "nf4" for r in compared)
    trainable = {r.metrics["trainable_parameters"] for r in compared}
    assert len(trainable) == 1
    for result in compared:
        append_result(tmp_path / "r.jsonl", result)
    back, problems = read_results(tmp_path / "r.jsonl")
    assert not problems and [r.metrics for r in back] == [r.metrics for r in compared]


def test_eight_bit_states_are_about_a_quarter_of_adamw(compared):
    adamw, eight, paged = (r.metrics for r in compared)
    n = adamw["trainable_parameters"]
    # fp32 AdamW: exp_avg + exp_avg_sq, 8 bytes per weight (+ a step counter per tensor)
    assert 8 * n <= adamw["optimizer_state_bytes"] < 8.1 * n
    # 8-bit: 2 bytes per weight plus block scales and the quantization maps
    assert 2 * n <= eight["optimizer_state_bytes"] < 0.35 * adamw["optimizer_state_bytes"]
    assert paged["optimizer_state_bytes"] == eight["optimizer_state_bytes"]
    assert all(m["train_step_ms"] > 0 and m["tokens_per_s"] > 0 for m in (adamw, eight, paged))


def test_paged_optimizer_on_cpu_says_it_runs_unpaged(compared):
    paged = compared[2]
    assert paged.metrics["paged_state_bytes"] == 0
    assert any("CUDA unified memory" in note for note in paged.info["notes"])
    assert compared[0].info["notes"] == [] and compared[1].info["notes"] == []
    assert optimizer_notes(get_optimizer("paged_adamw_8bit"), "cpu")


def test_state_bytes_count_shared_tensors_once():
    import bitsandbytes as bnb

    params = [torch.nn.Parameter(torch.randn(64, 128)) for _ in range(3)]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()
    total, paged = optimizer_state_bytes(optimizer)
    states = 2 * 3 * 64 * 128  # two uint8 states per weight
    absmax = 2 * 3 * (64 * 128 // 256) * 4  # one fp32 scale per 256-value block, per state
    maps = 2 * 256 * 4  # the two quantization maps are shared by every parameter
    assert total == states + absmax + maps and paged == 0


def test_unknown_names_are_one_line_errors():
    with pytest.raises(QuantbenchError, match="unknown optimizer 'lion'"):
        get_optimizer("lion")
    with pytest.raises(QuantbenchError, match="unknown mode"):
        compare_optimizers("smollm2-135m", ComparisonConfig(modes=("half",)), device="cpu")
