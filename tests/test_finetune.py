"""QLoRA on the real SmolLM2 (nf4, CPU): a short memorisation run, then save/load/merge checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

import quantbench
import quantbench.training
from quantbench.errors import QuantbenchError
from quantbench.results import read_results
from quantbench.training import (
    FinetuneConfig,
    finetune,
    load_with_adapter,
    merge_adapter,
    read_texts,
)

MODEL = "smollm2-135m"
LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Short blocks, a high rate and plain AdamW (bitsandbytes' 8-bit step is slow on CPU).
FAST = FinetuneConfig(
    lora_r=8, lora_alpha=16, lora_dropout=0.0, learning_rate=3e-3, max_steps=10, grad_accum=1,
    seq_len=16, gradient_checkpointing=False, optimizer="adamw_torch", progress=False,
)


@pytest.fixture(scope="module")
def one_thread():
    # Two shared cores: one thread per process avoids oversubscription that slows torch 10x.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("finetune")
    data = folder / "memorise.jsonl"
    data.write_text(json.dumps({"prompt": "The keeper counted ", "completion": "four hundred gull nests."}) + "\n")
    loaded = quantbench.load(MODEL, "nf4", device="cpu")
    base = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    result = finetune(loaded, data_path=data, output_dir=folder / "adapter", config=FAST)
    return loaded, base, result, folder


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


IDS = torch.tensor([[504, 12396, 12617, 2641, 2480, 3237, 30, 1070]])


def test_loss_falls_on_a_memorisation_task(trained):
    _, _, result, folder = trained
    m = result.metrics
    assert result.ok and result.spec.kind == "finetune" and result.spec.precision == "nf4"
    assert m["train_steps"] == FAST.max_steps == len(result.info["loss_curve"])
    assert m["train_loss_last"] < 0.3 * m["train_loss_first"]
    assert 0 < m["trainable_share"] < 0.05
    assert m["tokens_per_s"] > 0 and m["rss_growth_train_bytes"] >= 0
    # plain AdamW keeps two fp32 states per trainable weight
    assert m["optimizer_state_bytes"] >= 8 * m["trainable_parameters"]
    assert result.info["target_modules"] == LLAMA_LINEARS  # lm_head left out
    adapter = folder / "adapter"
    for name in ("adapter_model.safetensors", "loss_curve.png", "result.json"):
        assert (adapter / name).stat().st_size > 0


def test_base_weights_stay_frozen(trained):
    loaded, base, _, _ = trained
    after = dict(loaded.model.named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name, before in base.items():
        # peft moves each wrapped layer under `base_layer`; the tensor itself is the same.
        now = after[name] if name in after else after[name.replace(".weight", ".base_layer.weight")]
        assert torch.equal(before, now.detach()), name
    lora_b = [p for n, p in after.items() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # lora_B starts at zero: it was trained


def test_adapter_reload_gives_identical_logits(trained):
    loaded, _, _, folder = trained
    loaded.model.eval()
    reloaded = load_with_adapter(folder / "adapter", device="cpu")
    assert reloaded.precision.name == "nf4"
    assert torch.equal(_logits(loaded.model, IDS), _logits(reloaded.model, IDS))
    # and through the same door every benchmark uses
    again = quantbench.load(MODEL, "nf4", device="cpu", adapter=str(folder / "adapter"))
    assert torch.equal(_logits(loaded.model, IDS), _logits(again.model, IDS))


def test_merged_matches_unmerged(trained):
    _, _, _, folder = trained
    merged_dir = merge_adapter(folder / "adapter", folder / "merged", dtype="fp32")
    merged = quantbench.load(str(merged_dir), "fp32", device="cpu")
    unmerged = quantbench.load(MODEL, "fp32", device="cpu", adapter=str(folder / "adapter"))
    expected = _logits(unmerged.model, IDS)
    torch.testing.assert_close(_logits(merged.model, IDS), expected, atol=2e-3, rtol=1e-3)
    with unmerged.model.disable_adapter():  # the adapter really changes the output
        assert (expected - _logits(unmerged.model, IDS)).abs().max() > 0.1


def test_training_data_formats(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "one"}\n\n{"prompt": "a ", "completion": "b"}\n')
    assert read_texts(data) == ["one", "a b"]
    data.write_text('{"text": "one"}\nnot json\n')
    with pytest.raises(QuantbenchError, match="d.jsonl:2"):
        read_texts(data)
    data.write_text('{"title": "x"}\n')
    with pytest.raises(QuantbenchError, match="'text' field"):
        read_texts(data)
    with pytest.raises(QuantbenchError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")
    assert len(read_texts(quantbench.training.SAMPLE_TEXT)[0].split()) > 300


def test_bad_input_is_one_line_errors(tmp_path):
    with pytest.raises(QuantbenchError, match="unknown optimizer"):
        finetune(MODEL, "nf4", None, tmp_path, FinetuneConfig(optimizer="sgd-ish"))
    with pytest.raises(QuantbenchError, match="not a LoRA adapter folder"):
        merge_adapter(tmp_path, tmp_path / "out")
    with pytest.raises(QuantbenchError, match="merge dtype"):
        merge_adapter(tmp_path, tmp_path / "out", dtype="int4")


def test_cli_reports_bad_data_without_traceback(cli, tmp_path):
    code, _, err = cli("finetune", MODEL, "--data", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "a"))
    assert code == 2
    assert "error: training data" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(
    shutil.which("accelerate") is None or os.environ.get("QUANTBENCH_DDP_TEST") != "1",
    reason="2-process DDP on CPU (gloo) takes over a minute; set QUANTBENCH_DDP_TEST=1",
)
def test_two_process_ddp_on_cpu(tmp_path):
    script = tmp_path / "qb.py"
    script.write_text("from quantbench.cli import main\nmain()\n")
    data = tmp_path / "d.txt"
    data.write_text("The lamp was lit at half past four every evening of the winter.")
    results = tmp_path / "r.jsonl"
    run = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29617",
         str(script), "finetune", MODEL, "--data", str(data), "--output", str(tmp_path / "a"),
         "--max-steps", "2", "--seq-len", "8", "--grad-accum", "1", "--optimizer", "adamw_torch",
         "--lora-r", "4", "--no-gradient-checkpointing", "--results", str(results)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    (result,), _ = read_results(results)  # written once, by the first process
    assert result.spec.workload["world_size"] == 2
    assert len(result.info["rss_growth_train_bytes_per_process"]) == 2
    assert result.metrics["tokens_per_s"] == pytest.approx(2 * result.metrics["tokens_per_s_per_process"], rel=0.01)
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
