"""Does the fast engine with quantbench's kernels compute what eager bitsandbytes computes?

    python benchmarks/kernels_equivalence.py --out DIR [--precisions fp16,nf4,nf4-dq,int8,int8-t0]

On the real SmolLM2-135M (GPU), per precision, in this one process:
  eager      `model.generate` greedy with its raw logits per step (the reference);
  forced     the fast engine (kernels=quantbench, compiled, captured) fed eager's tokens, so each
             step sees the same prefix: mean and max KL(eager || fast) over the decode steps and
             the share of steps with the same top-1 token;
  one pass   eager's own second path: the prompt and eager's tokens in one forward (prefill
             kernels): KL(eager || one pass) and top-1, how far two eager computations of the
             precision already are;
  free       the fast engine's own greedy tokens: the first step where they leave eager's, and
             there eager's score gap between its choice and the fast one (a near tie flips);
  reference  the same stored weights (loaded as eager's, so quantized alike) widened to fp32 and
             run in fp32 (4-bit: code x absmax unrounded; LLM.int8's GEMV still casts its input
             to fp16 itself), fed the same tokens: mean KL(reference || eager) and
             KL(reference || fast), which of the two 16-bit runs is nearer the fp32 arithmetic
             (eager's roundings are one choice of many).
Writes kernels_equivalence.json into --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

VARIANTS = {"int8-t0": ("int8", {"int8_threshold": 0.0})}
PROMPT = ("The history of the printing press begins in the fifteenth century, when movable metal type "
          "made books cheaper than ever before. Within fifty years")


def reference_logits(precision: str, options: dict, ids: torch.Tensor, tokens: torch.Tensor,
                     device: str | None = None) -> torch.Tensor:
    """Logits [1, len(tokens), vocab] of the model loaded as eager's (`precision`, `options`: the
    same quantization of the same 16-bit weights) with every floating tensor widened to fp32 and
    the 4-bit layers computing and dequantizing in fp32, fed the prompt `ids` and then `tokens`
    (teacher-forced: position i scores tokens[i], as generate's i-th logits do)."""
    import bitsandbytes as bnb
    import torch

    import quantbench

    loaded = quantbench.load("smollm2-135m", precision, **options, **({"device": device} if device else {}))
    # exact; the packed and int8 weights are not floating and stay (nn.Module's own float():
    # transformers refuses it on quantized models, to keep users from undoing the quantization)
    model = torch.nn.Module.float(loaded.model)
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = torch.float32
            module.weight.quant_state.dtype = torch.float32  # code * absmax, not rounded to 16 bits
    logits = sequence_logits(model, ids, tokens)
    del loaded, model
    return logits


def sequence_logits(model: torch.nn.Module, ids: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """fp32 logits [1, len(tokens), vocab] of one forward pass over the prompt `ids` and then
    `tokens`: position i scores tokens[i], as generate's i-th logits do."""
    import torch

    sequence = torch.cat([ids, tokens], dim=1).to(model.device)
    with torch.no_grad():
        return model(sequence).logits[:, ids.shape[1] - 1:-1].float()


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def unknown_flags(spec: str) -> set[str]:
    """The "+" flags of `spec` that one() does not know."""
    from quantbench.kernels import DEFAULT_KINDS

    known = {"pdl", "prefetch", "once", "inline", "fp16", "bf16", *(f"no{kind}" for kind in DEFAULT_KINDS)}
    return set(spec.split("+")[1:]) - known


def one(spec: str, new_tokens: int, kernels: str, defaults: dict[str, str]) -> dict:
    """spec: a precision, or PRECISION:bitsandbytes for the 4-bit kernel with bitsandbytes'
    roundings, PRECISION:bitsandbytes:registers with its register lookup (PRECISION:fp32:shuffle:
    fp32 arithmetic, codes by warp shuffles); a "+pdl" or "+prefetch"
    suffix overlaps each launch with the one before it (modes not given are `defaults`, a
    config.modes() snapshot), "+fp16" / "+bf16" sets the compute dtype (the
    device's best, bf16 on an H100, otherwise), "+noKIND" leaves a kind of kernel out of the
    default kinds ("+norope": the rotary + cache-write kernel; "+noattention", "+nofuse",
    "+nodense", ...: which kernel's roundings part the fast engine from eager; "+noattention"
    leaves the rotary kernel out too, since it feeds the attention kernel), "+once" /
    "+inline" sets where each GEMV's row work runs."""
    import torch

    import quantbench
    from quantbench.engine.fast import FastEngine
    from quantbench.kernels import DEFAULT_KINDS
    from quantbench.kernels.config import set_modes

    base, *flags = spec.split("+")
    precision_name, numerics, gather = (base.split(":") + ["", ""])[:3]
    overlap = "prefetch" if "prefetch" in flags else "launch" if "pdl" in flags else defaults["launch_overlap"]
    rows = "once" if "once" in flags else "inline" if "inline" in flags else defaults["row_prologue"]
    set_modes(defaults | {"4bit_numerics": numerics or defaults["4bit_numerics"],
                          "4bit_lookup": gather or defaults["4bit_lookup"], "launch_overlap": overlap,
                          "row_prologue": rows})
    precision, options = VARIANTS.get(precision_name, (precision_name, {}))
    options = options | dict(("compute_dtype", dtype) for dtype in ("fp16", "bf16") if dtype in flags)
    loaded = quantbench.load("smollm2-135m", precision, **options)
    model = loaded.model
    ids = torch.tensor([loaded.tokenizer(PROMPT).input_ids], device=loaded.device)
    with torch.no_grad():
        eager = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=model.generation_config.eos_token_id,
                               output_logits=True, return_dict_in_generate=True)
    tokens = eager.sequences[:, ids.shape[1]:]
    eager_logits = torch.stack(eager.logits, dim=1).float()  # [1, steps, vocab]
    # bitsandbytes' and torch's own second path through the same model (prefill kernels, one
    # pass): how far two eager computations of this precision already are from each other
    one_pass = sequence_logits(model, ids, tokens)
    dropped = {flag[2:] for flag in flags if flag.startswith("no") and flag[2:] in DEFAULT_KINDS}
    kinds = tuple(kind for kind in DEFAULT_KINDS if kind not in dropped) if dropped else None
    fast = FastEngine(model, 1, ids.shape[1] + new_tokens + 1, kernels=kernels, kernel_kinds=kinds,
                      keep_logits=True)
    fast.warmup(ids, 4)
    forced = fast.teacher_forced_logits(ids, tokens)
    steps = slice(1, new_tokens)  # step 0 is the prefill, eager in both
    log_e = torch.log_softmax(eager_logits[0, steps], -1)
    log_f = torch.log_softmax(forced[0, steps], -1)
    kl = _kl(log_e, log_f)
    log_o = torch.log_softmax(one_pass[0, steps], -1)
    same_top1 = (eager_logits[0, steps].argmax(-1) == forced[0, steps].argmax(-1)).float()
    own = fast.generate(ids, new_tokens)
    differ = (own != tokens).nonzero()
    first = int(differ[0, 1]) if differ.numel() else None
    gap = None
    if first is not None:
        scores = eager_logits[0, first]
        gap = float(scores[tokens[0, first]] - scores[own[0, first]])
    described = fast.describe()
    del fast, model, loaded
    torch.cuda.empty_cache()
    row = {
        "precision": spec, "options": options, "decode_steps": new_tokens - 1,
        "engine": described, "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
        "top1_agreement": float(same_top1.mean()), "free_run_first_divergence": first,
        "free_run_gap_at_divergence": gap,
        "passes": bool(kl.mean() <= 1e-4 and same_top1.mean() >= 0.995),
        "eager_one_pass": {"mean_kl": float(_kl(log_e, log_o).mean()),
                           "top1_agreement": float((log_e.argmax(-1) == log_o.argmax(-1)).float().mean())},
    }
    try:  # an extra: its failure leaves the row above as measured
        ref = reference_logits(precision, options, ids, tokens)[0, steps].to(forced.device)
    except Exception as err:
        return row | {"reference_error": f"{type(err).__name__}: {str(err)[:300]}"}
    log_r, top1_ref = torch.log_softmax(ref, -1), ref.argmax(-1)
    return row | {
        "reference_kl": {"eager": float(_kl(log_r, log_e).mean()), "fast": float(_kl(log_r, log_f).mean())},
        "reference_top1": {"eager": float((eager_logits[0, steps].argmax(-1) == top1_ref).float().mean()),
                           "fast": float((forced[0, steps].argmax(-1) == top1_ref).float().mean())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="equivalence-out")
    p.add_argument("--precisions", default="fp16,nf4,int8,int8-t0,nf4-dq")
    p.add_argument("--new-tokens", type=int, default=400,
                   help="decode steps; 400 lets the 99.5 %% top-1 bar tolerate two near ties")
    p.add_argument("--kernels", default="quantbench")
    args = p.parse_args()
    if unknown := set().union(*(unknown_flags(spec) for spec in args.precisions.split(","))):
        raise SystemExit(f"unknown flag(s): {', '.join(sorted(unknown))} (see one()'s docstring)")
    import torch

    from quantbench.kernels.config import modes
    from quantbench.results import library_versions, now_iso

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": "smollm2-135m", "device": torch.cuda.get_device_name(), "timestamp": now_iso(),
              "versions": library_versions(), "kernels": args.kernels, "rows": []}
    defaults = modes()
    for name in args.precisions.split(","):
        try:
            row = one(name, args.new_tokens, args.kernels, defaults)
        except Exception as err:  # one precision's failure is a result; the others still run
            row = {"precision": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        report["rows"].append(row)
        (out / "kernels_equivalence.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in row.items() if k != "engine"}), flush=True)
        torch.cuda.empty_cache()
    print("\n| precision | mean KL | max KL | top-1 same | free-run first divergence (gap) | pass "
          "| KL(eager, eager one pass) | KL(fp32 ref, eager) | KL(fp32 ref, fast) |")
    for r in report["rows"]:
        if "error" in r:
            print(f"| {r['precision']} | error: {r['error'][:100]} |")
            continue
        print(f"| {r['precision']} | {r['mean_kl']:.2e} | {r['max_kl']:.2e} | {r['top1_agreement']:.1%} "
              f"| {r['free_run_first_divergence']} ({r['free_run_gap_at_divergence']}) | {r['passes']} "
              f"| {r['eager_one_pass']['mean_kl']:.2e} "
              + (f"| {r['reference_kl']['eager']:.2e} | {r['reference_kl']['fast']:.2e} |" if "reference_kl" in r
                 else f"| {r['reference_error'][:60]} | |"))


if __name__ == "__main__":
    main()
