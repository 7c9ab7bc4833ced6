"""The fast engine: static KV cache, one decode step compiled and captured as a CUDA graph.

A batch-1 decode step of a small model is a few hundred tiny kernels; launched one by one from
Python (and from bitsandbytes' Python wrappers) the launch overhead, not the weight reads, sets
the time. So the step is
  1. written over fixed buffers only (token, position, attention mask, output row, static cache),
  2. compiled with `torch.compile` (fuses the elementwise work around the matmuls),
  3. captured once as a CUDA graph and replayed once per token: no Python per kernel.
The step picks the next token on the GPU (argmax, end-of-sequence masked as in `generate`) and
feeds it to itself, so the host never waits inside the loop.

Where capture is impossible the engine says why (`describe()`) and runs the same step on the
same static cache without a graph, so tokens never silently change:
  - CPU: no CUDA graphs; a plain Python loop over the step.
  - LLM.int8 with an outlier threshold > 0 on bitsandbytes' kernels (`kernels="bnb"`, or batches
    over the GEMVs' row limit): bitsandbytes finds the outlier columns of every activation with
    data-dependent shapes and a host sync in each of the model's linears; a CUDA graph cannot
    hold that. quantbench's int8 GEMV finds and adds the outliers inside its one kernel (static
    shapes, no sync), so with it the step is captured.
  - modules offloaded to the CPU or disk;
  - a model torch.compile fails on (e.g. optimum-quanto's int4 weights): uncompiled too.
Prefill runs eagerly (any prompt length, outside the graph).

Kernels (`kernels=`, on CUDA): "quantbench" (default) routes the decode step's linears through
quantbench.kernels' GEMVs (NF4/FP4, LLM.int8 and fp16/bf16, q/k/v and gate/up merged into one
launch each, the blocks' norms, residual adds and silu * up inside them) and its attention over
the static cache while the step runs; prefill keeps the layers' own forwards. "bnb" leaves every layer
on its own forward (bitsandbytes' kernels, cuBLAS). `describe()` names the kernel of each layer.

Numbers: the uncompiled step gives exactly eager's tokens (CPU test; GPU check in
benchmarks/NOTES-decode.md). The compiled step fuses and reorders reductions, so its logits
differ from eager ones by rounding (on real weights in bf16 about as much as eager's own prefill
path differs from its decode path), and a near tie between two tokens can flip (seen on random
weights, where ties are common; `emulate_precision_casts` makes that rarer). For bitwise
eager tokens on the GPU pass `compile=False, capture=False` (eager speed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from quantbench.engine import Engine, suppressed_tokens, synchronize
from quantbench.errors import QuantbenchError
from quantbench.kernels import DEFAULT_KINDS, check_choice

WARMUP_STEPS = 3  # compile, autotune and allocate outside the capture, as CUDA graphs require


@dataclass
class _Slot:
    """Fixed buffers for one batch size; a captured graph reads and writes exactly these."""

    batch: int
    cache: Any  # transformers StaticCache
    tokens: torch.Tensor  # [batch, 1] the token fed to the next step
    position: torch.Tensor  # [1] its position in the cache
    mask: torch.Tensor  # [batch, max_seq_len] 1 where the cache holds a token
    out: torch.Tensor  # [batch, max_seq_len] the generated ids
    step: torch.Tensor  # [1] the column of `out` the next step writes
    logits: torch.Tensor | None = None  # [batch, vocab] fp32, the last step's (keep_logits=True)
    graph: torch.cuda.CUDAGraph | None = None
    prefilled: bool = False


def capture_blocker(model: Any, plan: Any = None, max_batch_size: int = 1,
                    kinds: frozenset[str] | None = None) -> str | None:
    """Why a decode step of `model` cannot be captured as a CUDA graph, or None. `plan`: the
    installed quantbench kernels, which serve LLM.int8 with outliers up to their row limit."""
    from quantbench.kernels.layers import MAX_ROWS

    for module in model.modules():
        served = plan is not None and plan.handles(module, kinds) and max_batch_size <= MAX_ROWS
        if type(module).__name__ == "Linear8bitLt" and getattr(module.state, "threshold", 0) > 0 and not served:
            return (
                "LLM.int8 outlier threshold > 0: outlier columns are found per activation with "
                "data-dependent shapes and a host sync in every linear, which a CUDA graph cannot "
                "hold; the step runs uncaptured (threshold 0 is captured)"
            )
    placement = getattr(model, "hf_device_map", None) or {}
    if any(str(where) in ("cpu", "disk") for where in placement.values()):
        return "modules are offloaded to the CPU or disk; the step runs uncaptured"
    return None


def kernel_plan(model: Any, kinds: frozenset[str]) -> Any:
    """quantbench's kernels of `kinds` on `model`, each kind installed once per model (engines on
    it share them); kinds not asked for leave their layers' weights untouched."""
    from quantbench.kernels import install

    plan = getattr(model, "_quantbench_kernels", None)
    missing = tuple(sorted(set(kinds) - (plan.installed if plan is not None else set())))
    if plan is None or missing:
        plan = install(model, kinds=missing, plan=plan)
        model._quantbench_kernels = plan
    return plan


def pick_next(logits: torch.Tensor, suppress: torch.Tensor | None) -> torch.Tensor:
    """Greedy choice as `generate` makes it: fp32 scores, end-of-sequence masked, argmax."""
    scores = logits[:, -1].float()
    if suppress is not None:
        scores = scores.index_fill(1, suppress, float("-inf"))
    return scores.argmax(-1)


class FastEngine(Engine):
    name = "fast"
    # The prefill runs the model's own eager forward, whose host-bound time varies between calls
    # by tens of milliseconds: as generate(N) - generate(1), that noise spread over N - 1 tokens
    # moved a ~1 ms decode step by tenths of a millisecond (once below zero). The steps after the
    # first token are timed on their own instead.
    splits_first_token = True

    def __init__(
        self,
        model: Any,
        max_batch_size: int,
        max_seq_len: int,
        *,
        compile: bool | None = None,
        capture: bool | None = None,
        compile_mode: str | None = None,
        exact_casts: bool = True,
        kernels: str | None = None,
        kernel_kinds: tuple[str, ...] | None = None,
        keep_logits: bool = False,
    ) -> None:
        super().__init__(model, max_batch_size, max_seq_len)
        on_gpu = self.device.type == "cuda"
        self.kernels = check_choice(kernels or "quantbench")
        # which of quantbench's kernels serve (the others leave their layers on their own forward)
        self.kinds = frozenset(kernel_kinds or DEFAULT_KINDS)
        self.plan = kernel_plan(model, self.kinds) if on_gpu and self.kernels == "quantbench" else None
        self.blocker = (capture_blocker(model, self.plan, max_batch_size, self.kinds) if on_gpu
                        else "CPU: no CUDA graphs")
        if compile is False or capture is False:
            # Uncompiled, transformers' mask code reads a tensor on the host: not capturable.
            self.blocker = self.blocker or "compile=False or capture=False was asked"
        self.capture = self.blocker is None
        self.compile = self.capture if compile is None else compile
        self.compile_mode = compile_mode
        # Inductor keeps fused intermediates in fp32 where eager rounds them to fp16/bf16;
        # emulating the casts brings the compiled step's numbers closer to eager ones.
        self.exact_casts = exact_casts
        self.keep_logits = keep_logits  # each step also writes its fp32 logits (teacher_forced_logits)
        eos = suppressed_tokens(model)
        self.suppress = torch.tensor(eos, device=self.device) if eos else None
        self._next = self._step_function()
        self._slot: _Slot | None = None

    def describe(self) -> dict[str, Any]:
        if self.capture:
            mode = "torch.compile + CUDA graph"
        else:
            mode = "static cache, compiled step" if self.compile else "static cache, eager step"
        return {
            "engine": self.name,
            "mode": mode,
            "compile_mode": (self.compile_mode or "default") if self.compile else None,
            "exact_casts": self.exact_casts if self.compile else None,
            "not_captured_because": None if self.capture else self.blocker,
            "kernels": self.plan.describe(self.kinds) if self.plan else {
                "kernels": self.kernels if self.device.type == "cuda" else "none on the CPU",
                "layers": "own forwards"},
        }

    def generate(self, input_ids: torch.Tensor, new_tokens: int,
                 first_token: Callable[[], None] | None = None) -> torch.Tensor:
        input_ids = self._check(input_ids, new_tokens)
        with torch.no_grad():
            slot = self._slot_for(input_ids)
            self._prefill(slot, input_ids)
            if first_token is not None:
                first_token()
            for _ in range(new_tokens - 1):
                if slot.graph is not None:
                    slot.graph.replay()
                else:
                    self._decode_step(slot)
            result = slot.out[:, :new_tokens].clone()
        synchronize(self.device)
        return result

    def teacher_forced_logits(self, input_ids: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """fp32 logits [batch, steps, vocab] of decode steps fed `forced` [batch, steps] tokens
        (e.g. another engine's) instead of their own choices: step i sees forced[:, :i]. Needs
        keep_logits=True. Step 0 is the prefill's, later ones the (captured) decode step's."""
        if not self.keep_logits:
            raise QuantbenchError("teacher_forced_logits needs FastEngine(keep_logits=True)")
        input_ids = self._check(input_ids, forced.shape[1])
        rows = []
        with torch.no_grad():
            slot = self._slot_for(input_ids)
            self._prefill(slot, input_ids)
            rows.append(slot.logits.clone())
            for i in range(1, forced.shape[1]):
                slot.tokens.copy_(forced[:, i - 1:i])
                if slot.graph is not None:
                    slot.graph.replay()
                else:
                    self._decode_step(slot)
                rows.append(slot.logits.clone())
        synchronize(self.device)
        return torch.stack(rows, dim=1)

    def _step_function(self) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
        model, suppress, keep = self.model, self.suppress, self.keep_logits

        def next_token(tokens, position, mask, cache):  # noqa: ANN001, ANN202
            logits = model(
                input_ids=tokens,
                attention_mask=mask,
                cache_position=position,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
            return pick_next(logits, suppress), (logits[:, -1].float() if keep else None)

        if not self.compile:
            return next_token
        # dynamic=None: batch 1 is compiled for its fixed shapes; a second batch size compiles
        # once more with a symbolic batch that then serves every other size.
        if self.exact_casts:  # torch.compile takes a mode or options, not both
            from torch._inductor import list_mode_options

            options = {**list_mode_options(self.compile_mode or "default"),
                       "emulate_precision_casts": True}
            return torch.compile(next_token, options=options, fullgraph=False)
        return torch.compile(next_token, mode=self.compile_mode, fullgraph=False)

    def _slot_for(self, input_ids: torch.Tensor) -> _Slot:
        batch = input_ids.shape[0]
        if self._slot is None or self._slot.batch != batch:
            self._slot = None  # one batch size at a time: free the old cache and graph first
            slot = self._new_slot(batch)
            self._prefill(slot, input_ids)  # StaticCache allocates its tensors on first use
            if self.capture:
                slot.graph = self._capture(slot)
            self._slot = slot
        return self._slot

    def _compile_failed(self, err: Exception) -> bool:
        """Whether `err` is torch.compile failing to build the step, which _run_uncompiled answers;
        not an out-of-memory error it wraps (the sweep records those) nor one inside a graph
        capture (an uncompiled step cannot be captured)."""
        if not self.compile or (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return False
        # imported here, not with the module: torch._dynamo brings Triton in, and Triton imported
        # early ignores a TRITON_INTERPRET set after it (the kernels' CPU tests)
        from torch._dynamo.exc import BackendCompilerFailed

        return isinstance(err, BackendCompilerFailed) and not isinstance(err.inner_exception, torch.OutOfMemoryError)

    def _run_uncompiled(self, err: Exception) -> None:
        """torch.compile could not build the step (a backend's tensor subclass it cannot trace,
        e.g. optimum-quanto's int4 weights): the same step runs uncompiled and uncaptured, and
        describe() says why, rather than the row ending in an error."""
        inner = getattr(err, "inner_exception", err)
        failed = (f"torch.compile failed on this model ({type(inner).__name__}: "
                  f"{str(inner).splitlines()[0][:160] if str(inner) else ''}); the step runs uncompiled")
        self.blocker = f"{self.blocker}; {failed}" if self.blocker else failed
        self.capture = self.compile = False
        self._next = self._step_function()
        synchronize(self.device)

    def _new_slot(self, batch: int) -> _Slot:
        from transformers import StaticCache

        def buffer(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.long, device=self.device)

        vocab = self.model.config.vocab_size
        return _Slot(
            batch=batch,
            cache=StaticCache(config=self.model.config, max_cache_len=self.max_seq_len),
            tokens=buffer(batch, 1),
            position=buffer(1),
            mask=buffer(batch, self.max_seq_len),
            out=buffer(batch, self.max_seq_len),
            step=buffer(1),
            logits=torch.zeros(batch, vocab, device=self.device) if self.keep_logits else None,
        )

    def _prefill(self, slot: _Slot, input_ids: torch.Tensor) -> None:
        length = input_ids.shape[1]
        if slot.prefilled:
            slot.cache.reset()  # in place: a captured graph keeps pointing at the same tensors
        slot.mask.zero_()
        slot.mask[:, :length] = 1
        logits = self.model(
            input_ids=input_ids,
            attention_mask=slot.mask,
            cache_position=torch.arange(length, device=self.device),
            past_key_values=slot.cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        first = pick_next(logits, self.suppress)
        if slot.logits is not None:
            slot.logits.copy_(logits[:, -1].float())
        slot.tokens.copy_(first[:, None])
        slot.out[:, 0] = first
        slot.position.fill_(length)
        slot.step.fill_(1)
        slot.prefilled = True

    def _decode_step(self, slot: _Slot) -> None:
        """One token, in place on the slot's buffers: this is what the graph holds."""
        slot.mask.index_fill_(1, slot.position, 1)
        if self.plan is not None:
            self.plan.enabled, self.plan.kinds = True, self.kinds
        try:
            try:
                token, logits = self._next(slot.tokens, slot.position, slot.mask, slot.cache)
            except Exception as err:  # the first call compiles
                if not self._compile_failed(err):
                    raise
                self._run_uncompiled(err)
                token, logits = self._next(slot.tokens, slot.position, slot.mask, slot.cache)
        finally:
            if self.plan is not None:
                self.plan.enabled = False
        if slot.logits is not None:
            slot.logits.copy_(logits)
        slot.tokens.copy_(token[:, None])
        slot.out.index_copy_(1, slot.step, token[:, None])
        slot.position.add_(1)
        slot.step.add_(1)

    def _capture(self, slot: _Slot) -> torch.cuda.CUDAGraph | None:
        # Warm-up steps write from position 0; every generate() prefills again from scratch.
        slot.position.zero_()
        slot.step.zero_()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._decode_step(slot)
        current.wait_stream(side)
        if not self.capture:  # the step could not be compiled (_run_uncompiled): no graph of it
            return None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._decode_step(slot)
        return graph
