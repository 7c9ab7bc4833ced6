"""The precision table really builds what it says, on the real SmolLM2 on CPU."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from quantbench.precisions import PRECISIONS, parse_precisions


def _decoder_linears(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if ".layers." in name and isinstance(m, nn.Linear)]


def test_nf4_really_yields_linear4bit_nf4(loaded_model):
    import bitsandbytes as bnb

    loaded = loaded_model("nf4")
    linears = _decoder_linears(loaded.model)
    assert linears and all(isinstance(m, bnb.nn.Linear4bit) for m in linears)
    assert {m.weight.quant_state.quant_type for m in linears} == {"nf4"}
    assert loaded.inspection.quantized_layers == {"Linear4bit": len(linears)}
    assert loaded.inspection.quant_types == {"nf4": len(linears)}


def test_int8_really_yields_linear8bitlt(loaded_model):
    import bitsandbytes as bnb

    loaded = loaded_model("int8")
    linears = _decoder_linears(loaded.model)
    assert linears and all(isinstance(m, bnb.nn.Linear8bitLt) for m in linears)
    assert {m.weight.dtype for m in linears} == {torch.int8}
    assert linears[0].state.threshold == 6.0
    assert not linears[0].state.has_fp16_weights


@pytest.mark.parametrize("precision", ["nf4", "int8"])
def test_lm_head_and_embeddings_stay_unquantized(loaded_model, precision):
    loaded = loaded_model(precision)
    head = loaded.model.get_output_embeddings()
    assert type(head) is nn.Linear
    assert head.weight.dtype == torch.float32  # full precision on CPU
    assert loaded.inspection.unquantized_linears == ["lm_head"]
    assert loaded.inspection.full_precision_modules["model.embed_tokens"] == "float32"


def test_double_quant_really_shrinks_the_footprint(loaded_model):
    plain, nested = loaded_model("nf4").inspection, loaded_model("nf4-dq").inspection
    assert nested.double_quant and not plain.double_quant
    assert nested.footprint_bytes < plain.footprint_bytes
    # absmax goes from fp32 to uint8 per 64-weight block: about 3 bytes saved per block
    saved = plain.footprint_bytes - nested.footprint_bytes
    quantized = sum(m.in_features * m.out_features for m in _decoder_linears(loaded_model("nf4").model))
    assert 0.8 < saved / (quantized / 64 * 3) < 1.2


def test_footprints_order_fp4_eq_nf4_lt_int8_lt_bf16_lt_fp32(loaded_model):
    size = {p: loaded_model(p).inspection.footprint_bytes for p in ("fp4", "nf4", "int8", "bf16", "fp32")}
    assert size["fp4"] == size["nf4"] < size["int8"] < size["bf16"] < size["fp32"]
    assert loaded_model("fp32").inspection.parameters == loaded_model("nf4").inspection.parameters


def test_fp32_footprint_is_parameters_times_four(loaded_model):
    info = loaded_model("fp32").inspection
    assert set(info.storage_dtypes) == {"float32"}
    # buffers (rotary inv_freq) are the only bytes beyond 4 per parameter
    assert 0 <= info.footprint_bytes - 4 * info.parameters < 1024


def test_skip_modules_override():
    from quantbench import load

    loaded = load("smollm2-135m", "nf4", skip_modules=("down_proj",))
    skipped = loaded.inspection.unquantized_linears
    layers = loaded.model.config.num_hidden_layers
    assert sum(name.endswith("mlp.down_proj") for name in skipped) == layers
    # SmolLM2 ties lm_head to the embeddings, which bitsandbytes cannot quantize: it stays
    assert "lm_head" in skipped and len(skipped) == layers + 1


def test_inspect_cli_json(cli):
    code, out, _ = cli("inspect", "smollm2-135m", "--precision", "nf4", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["quantized_layers"]["Linear4bit"] > 0 and data["ratio_to_fp16"] < 1
    assert data["unquantized_linears"] == ["lm_head"] and data["compute_dtype"] == "float32"


def test_precision_table_names_and_parsing():
    assert {"fp32", "fp16", "bf16", "int8", "int8-offload", "nf4", "nf4-dq", "fp4"} <= set(PRECISIONS)
    assert [p.name for p in parse_precisions("fp16, NF4,fp16")] == ["fp16", "nf4"]


# --- bad input: one line, non-zero exit, no traceback ---------------------------------------


def test_unknown_precision_lists_valid_ones(cli):
    code, _, err = cli("inspect", "smollm2-135m", "--precision", "nf5")
    assert code == 2
    assert "unknown precision 'nf5'" in err and "nf4-dq" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_model_not_found_offline_names_the_offline_aliases(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    code, _, err = cli("inspect", "no-such-org/no-such-model")
    assert code == 2
    assert "no-such-org/no-such-model" in err and "smollm2-135m" in err and "tinyllama-1.1b-arch" in err
    assert "Traceback" not in err


def test_folder_without_config_is_refused(cli, tmp_path):
    code, _, err = cli("inspect", str(tmp_path))
    assert code == 2 and "no config.json" in err


def test_bitsandbytes_missing(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes find_spec and import fail
    code, _, err = cli("inspect", "smollm2-135m", "--precision", "nf4")
    assert code == 2 and "needs bitsandbytes" in err and "pip install bitsandbytes" in err


def test_bitsandbytes_broken_on_device(cli, monkeypatch):
    monkeypatch.delitem(sys.modules, "bitsandbytes", raising=False)
    monkeypatch.setattr("builtins.__import__", _import_raising("bitsandbytes"))
    code, _, err = cli("inspect", "smollm2-135m", "--precision", "int8")
    assert code == 2 and "bitsandbytes cannot run on this device" in err


def _import_raising(module: str):
    import builtins

    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == module:
            raise RuntimeError("no native library for this device")
        return real(name, *args, **kwargs)

    return fake


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_gpu_only_precision_on_cpu(cli):
    code, _, err = cli("inspect", "smollm2-135m", "--precision", "int8-offload")
    assert code == 2 and "needs a CUDA GPU" in err


def test_max_memory_parsing_for_multi_gpu_placement():
    from quantbench.commands._options import parse_max_memory
    from quantbench.errors import QuantbenchError

    assert parse_max_memory("0=20GiB,1=20GiB,cpu=30GiB") == {0: "20GiB", 1: "20GiB", "cpu": "30GiB"}
    assert parse_max_memory(None) is None
    for bad in ("0=20", "gpu0=20GiB", "0:20GiB", "=20GiB"):
        with pytest.raises(QuantbenchError, match="bad --max-memory entry"):
            parse_max_memory(bad)


def test_bad_max_memory_is_one_line(cli):
    code, _, err = cli("inspect", "smollm2-135m", "--max-memory", "0=lots")
    assert code == 2 and "bad --max-memory entry '0=lots'" in err


def test_isolated_call_runs_in_its_own_process_and_reports_a_crash():
    import os

    from quantbench.isolation import run_isolated

    outcome = run_isolated("os:getpid")
    assert outcome.ok and outcome.value != os.getpid()
    crashed = run_isolated("os:_exit", 3)
    assert not crashed.ok and crashed.error == "exit code 3"
