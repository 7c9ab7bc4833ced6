"""Decode engines on the real SmolLM2 (CPU): the fast engine gives eager generate's tokens."""

from __future__ import annotations

from functools import cache

import pytest
import torch

import quantbench
from quantbench.engine import get_engine, suppressed_tokens
from quantbench.engine.fast import FastEngine, capture_blocker, pick_next
from quantbench.errors import QuantbenchError

PROMPTS = ["The capital of France is", "Water boils at a temperature of"]
NEW_TOKENS = 8


def _ids(loaded, prompts=PROMPTS):
    # Same-length prompts: the engines take no padding.
    rows = [loaded.tokenizer(p).input_ids for p in prompts]
    width = min(len(r) for r in rows)
    return torch.tensor([r[:width] for r in rows])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls on a shared CPU: OpenMP threads that spin against other jobs made a forward
    # 20x slower than one thread does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@cache
def _load(precision: str):
    return quantbench.load("smollm2-135m", precision, device="cpu")  # each once per session


@pytest.fixture(params=["fp32", "nf4", "int8"])
def loaded(request):
    return _load(request.param)


def test_fast_engine_gives_eager_tokens(loaded):
    ids = _ids(loaded)
    eager = get_engine("eager", loaded.model, max_batch_size=2, max_seq_len=32)
    fast = get_engine("fast", loaded.model, max_batch_size=2, max_seq_len=32)
    expected = eager.generate(ids, NEW_TOKENS)
    got = fast.generate(ids, NEW_TOKENS)
    assert got.shape == (2, NEW_TOKENS) == expected.shape
    assert torch.equal(got, expected), (loaded.precision.name, got, expected)
    if loaded.precision.name == "fp32":  # one-token call = the prefill's choice (TTFT timing)
        assert torch.equal(fast.generate(ids, 1), expected[:, :1])


def test_fast_engine_resets_its_cache_between_calls_and_batch_sizes():
    loaded = _load("fp32")
    fast = get_engine("fast", loaded.model, max_batch_size=2, max_seq_len=32)
    both = _ids(loaded)
    first = fast.generate(both, 6)
    other = fast.generate(_ids(loaded, ["Once upon a time, in a"]), 6)
    assert not torch.equal(other[0], first[0])
    assert torch.equal(fast.generate(both[:1], 6), first[:1])  # new batch size, fresh cache
    assert torch.equal(fast.generate(both, 6), first)
    assert "CPU" in fast.describe()["not_captured_because"]


def test_fast_engine_calls_first_token_between_prefill_and_steps(monkeypatch):
    loaded = _load("fp32")
    fast = get_engine("fast", loaded.model, max_batch_size=2, max_seq_len=32)
    ids = _ids(loaded)
    steps, seen = [], []
    step = fast._decode_step
    monkeypatch.setattr(fast, "_decode_step", lambda slot: (steps.append(1), step(slot)))
    tokens = fast.generate(ids, 5, first_token=lambda: seen.append((len(steps), fast._slot.out[:, 0].clone())))
    assert len(seen) == 1 and seen[0][0] == 0 and len(steps) == 4  # after the prefill, before any step
    assert torch.equal(seen[0][1], tokens[:, 0])


class _Clock:
    """A fake clock the fake engine below advances: the measurement sees exactly these times."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _JitteryEngine:
    """Prefill 100 ms plus 0 or 60 ms of host noise on alternate calls; each later step 1 ms."""

    def __init__(self, clock: _Clock, splits: bool) -> None:
        self.clock, self.splits_first_token, self.calls = clock, splits, 0

    def generate(self, ids, new_tokens, first_token=None):  # noqa: ANN001, ANN201
        self.calls += 1
        self.clock.now += (100 + 60 * (self.calls % 2)) / 1000
        if first_token is not None:
            first_token()
        self.clock.now += (new_tokens - 1) / 1000
        return ids


@pytest.mark.parametrize("splits", [True, False])
def test_decode_ms_per_token_from_the_steps_alone_where_the_engine_splits(monkeypatch, splits):
    from quantbench.measure import latency

    clock = _Clock()
    monkeypatch.setattr(latency.time, "perf_counter", clock)
    measured = latency.measure_decode(_JitteryEngine(clock, splits), torch.zeros(1, 4), 17, "cpu", 3, 0)
    if splits:  # the prefill's noise stays out of decode, and TTFT is the prefill's own time
        assert measured["decode_ms_per_token"] == pytest.approx(1.0)
        assert measured["ttft_ms"] == pytest.approx(160.0)
    else:  # generate(N) - generate(1) carries the difference of two prefills into every token
        assert measured["decode_ms_per_token"] == pytest.approx((17 - 1 - 60) / 16)


def _failing_compile(fast):  # noqa: ANN001, ANN202
    """Make the step's first call fail as torch.compile does on a tensor it cannot trace."""
    from torch._dynamo.exc import BackendCompilerFailed

    def step(*args):  # noqa: ANN002, ANN202
        raise BackendCompilerFailed(lambda: None, AttributeError("'QBits' object has no attribute '_scale'"), None)

    fast._next = step


def _expect_uncompiled(fast, expected, ids):  # noqa: ANN001, ANN202
    assert torch.equal(fast.generate(ids, 6), expected)
    described = fast.describe()
    assert described["mode"] == "static cache, eager step"
    assert "torch.compile failed" in described["not_captured_because"]
    assert "AttributeError" in described["not_captured_because"]


def test_a_step_torch_compile_fails_on_runs_uncompiled_and_says_why():
    loaded = _load("fp32")
    ids = _ids(loaded)
    expected = get_engine("eager", loaded.model, max_batch_size=2, max_seq_len=32).generate(ids, 6)
    fast = FastEngine(loaded.model, 2, 32)
    fast.compile = True  # asked for, not captured (the CPU)
    _failing_compile(fast)
    _expect_uncompiled(fast, expected, ids)


def test_out_of_memory_while_compiling_is_not_taken_for_a_compile_failure():
    from torch._dynamo.exc import BackendCompilerFailed

    loaded = _load("fp32")
    fast = FastEngine(loaded.model, 2, 32)
    fast.compile = True

    def step(*args):  # noqa: ANN002, ANN202
        raise BackendCompilerFailed(lambda: None, torch.OutOfMemoryError("CUDA out of memory"), None)

    fast._next = step
    with pytest.raises(BackendCompilerFailed):  # left to the sweep, which records it
        fast.generate(_ids(loaded), 4)
    assert fast.compile and fast.describe()["mode"] == "static cache, compiled step"


def test_no_graph_is_captured_of_a_step_that_failed_to_compile(monkeypatch):
    import contextlib

    loaded = _load("fp32")
    ids = _ids(loaded)
    expected = get_engine("eager", loaded.model, max_batch_size=2, max_seq_len=32).generate(ids, 6)
    fast = FastEngine(loaded.model, 2, 32)
    fast.capture = fast.compile = True  # as on a GPU: the warm-up steps before capture compile
    _failing_compile(fast)
    graphs = []

    class Stream:
        def __init__(self, *args) -> None:  # noqa: ANN002
            pass

        def wait_stream(self, other) -> None:  # noqa: ANN001
            pass

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "current_stream", Stream)
    monkeypatch.setattr(cuda, "Stream", Stream)
    monkeypatch.setattr(cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "CUDAGraph", lambda: graphs.append(1))
    _expect_uncompiled(fast, expected, ids)
    assert graphs == [] and fast._slot.graph is None


def test_a_fast_engine_result_says_its_decode_was_timed_on_its_own_steps():
    from quantbench.measure import latency
    from quantbench.measure.memory import MemoryProbe

    loaded = _load("fp32")
    notes: dict = {}
    metrics = latency.measure_batches(
        lambda batch: get_engine("fast", loaded.model, batch, 16), lambda b, n: _ids(loaded)[:b, :n], (1,),
        4, 4, "cpu", 1, 0, MemoryProbe("cpu"), notes)
    assert metrics["decode_ms_per_token"] > 0
    assert notes["decode_timing"] == "the steps after the first token, timed on their own"


def test_llm_int8_with_outlier_threshold_is_not_captured():
    reason = capture_blocker(_load("int8").model)  # default threshold 6.0
    assert reason is not None and "threshold" in reason
    assert capture_blocker(_load("fp32").model) is None


def test_end_of_sequence_is_never_chosen_as_in_min_new_tokens():
    logits = torch.tensor([[[0.0, 1.0, 5.0, 2.0]]])  # eos (2) is the argmax
    assert pick_next(logits, None).item() == 2
    assert pick_next(logits, torch.tensor([2])).item() == 3


def test_engine_checks_its_limits():
    loaded = _load("fp32")
    assert suppressed_tokens(loaded.model) == [loaded.model.generation_config.eos_token_id]
    fast = FastEngine(loaded.model, max_batch_size=1, max_seq_len=8)
    with pytest.raises(quantbench.QuantbenchError, match="max_batch_size"):
        fast.generate(torch.ones(2, 3, dtype=torch.long), 2)
    with pytest.raises(quantbench.QuantbenchError, match="max_seq_len"):
        fast.generate(torch.ones(1, 6, dtype=torch.long), 3)
    with pytest.raises(quantbench.QuantbenchError, match="unknown engine 'turbo'"):
        get_engine("turbo", loaded.model, 1, 8)


def test_fast_engine_kernels_choice_is_checked_and_described():
    loaded = _load("fp32")
    with pytest.raises(QuantbenchError, match="unknown kernels"):
        get_engine("fast", loaded.model, 1, 16, kernels="cutlass")
    described = get_engine("fast", loaded.model, 1, 16, kernels="bnb").describe()["kernels"]
    assert described == {"kernels": "none on the CPU", "layers": "own forwards"}  # CPU path unchanged


def test_run_rejects_an_unknown_kernels_choice_in_one_line(cli):
    code, _, err = cli("run", "smollm2-135m", "-p", "fp32", "--engine", "fast", "--kernels", "cutlass")
    assert code != 0
    assert "unknown kernels 'cutlass'" in err and "Traceback" not in err
