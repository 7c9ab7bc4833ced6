"""Quality measurement at scale: the compact reference, batched on-device scoring, standard
errors, lm-eval's protocol and multi-document texts, on the real SmolLM2-135M."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from quantbench.errors import QuantbenchError
from quantbench.measure import quality, uncertainty
from quantbench.measure import reference as refs
from quantbench.results import Workload

torch.set_num_threads(1)
TOKENS = 240


@pytest.fixture(scope="module")
def ids(loaded_model):
    tokenizer = loaded_model("fp32").tokenizer
    return torch.tensor(tokenizer(quality.load_text())["input_ids"][:TOKENS])


@pytest.fixture(scope="module")
def nf4_vs_fp32(loaded_model, ids, tmp_path_factory):
    """nf4 scored against an exact and a sampled fp32 reference of the same windows."""
    folder = tmp_path_factory.mktemp("ref")
    fp32, nf4 = loaded_model("fp32").model, loaded_model("nf4").model
    out = {}
    for kl in ("exact", "sampled"):
        path = folder / f"{kl}.npy"
        out[f"ref-{kl}"] = quality.score(fp32, ids, 96, 48, save_reference=path, kl=kl)
        out[kl] = quality.score(nf4, ids, 96, 48, reference=path, kl=kl)
        out[f"{kl}-bytes"] = path.stat().st_size
        out[f"{kl}-record"] = np.load(path, mmap_mode="r").dtype.itemsize
    return out


def test_sampled_reference_is_small_and_close_to_exact(nf4_vs_fp32):
    exact, sampled = nf4_vs_fp32["exact"], nf4_vs_fp32["sampled"]
    assert nf4_vs_fp32["sampled-record"] <= 1024  # bytes per scored token
    assert nf4_vs_fp32["sampled-bytes"] < 1024 * exact.n_tokens + 1024  # and the .npy header
    assert nf4_vs_fp32["exact-bytes"] > 40 * nf4_vs_fp32["sampled-bytes"]
    # the tail's Monte-Carlo error is small and is reported; the top-1 figure stays exact
    metrics = quality.quality_metrics(sampled)
    assert abs(sampled.kl.mean() - exact.kl.mean()) < 4 * metrics["kl_mean_mc_se"] + 1e-3 * exact.kl.mean()
    assert abs(sampled.kl.mean() / exact.kl.mean() - 1) < 0.02
    np.testing.assert_array_equal(sampled.top1_match, exact.top1_match)
    assert sampled.perplexity == pytest.approx(exact.perplexity, rel=1e-9)


def test_one_tail_bucket_underestimates_what_sampling_recovers(loaded_model, ids):
    fp32, nf4 = loaded_model("fp32").model, loaded_model("nf4").model
    with torch.inference_mode():
        p = torch.log_softmax(fp32(ids[None, :128]).logits[0].float(), -1)
        q = torch.log_softmax(nf4(ids[None, :128]).logits[0].float(), -1)
    exact = (p.exp() * (p - q)).sum(-1).mean().item()
    records = refs.encode(p, p[:, 0], refs.KLMode(), torch.Generator().manual_seed(0))
    bucket = refs.kl(records, q, "bucket")[0].mean().item()
    sampled = refs.kl(records, q)[0].mean().item()
    assert bucket < 0.95 * exact  # the long tail carries much of the divergence
    assert abs(sampled / exact - 1) < 0.03


def test_reference_against_itself_is_zero_and_batching_changes_nothing(loaded_model, ids, tmp_path):
    fp32 = loaded_model("fp32").model
    path = tmp_path / "ref.npy"
    one = quality.score(fp32, ids, 96, 48, save_reference=path)
    again = quality.score(fp32, ids, 96, 48, reference=path)
    assert again.kl.mean() < 1e-3 and again.top1_match.mean() > 0.99  # only the reference's fp16 storage differs
    batched = quality.score(fp32, ids, 96, 48, reference=path, batch_size=4)
    assert batched.kl.mean() < 1e-4 and batched.top1_match.all()
    np.testing.assert_allclose(batched.target_lp, one.target_lp, atol=1e-4)
    metrics = quality.quality_metrics(batched)
    assert metrics["ppl_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert quality.reference_perplexity(path) == pytest.approx(one.perplexity, rel=1e-6)


def test_reference_made_with_other_settings_is_refused(loaded_model, ids, tmp_path):
    fp32 = loaded_model("fp32").model
    path = tmp_path / "ref.npy"
    quality.score(fp32, ids[:200], 96, 48, save_reference=path)
    with pytest.raises(QuantbenchError, match="other settings"):
        quality.score(fp32, ids[:200], 96, 48, reference=path, kl="exact")
    with pytest.raises(QuantbenchError, match="other settings"):
        quality.score(fp32, ids[:150], 96, 48, reference=path)


def test_standard_errors_match_a_bootstrap(nf4_vs_fp32):
    scores = nf4_vs_fp32["exact"]
    metrics = quality.quality_metrics(scores)
    nll, ref_nll = -scores.target_lp, -scores.ref_target_lp
    boot_ln = uncertainty.bootstrap_se(nll - ref_nll, seed=1)
    boot_ppl = uncertainty.bootstrap_se(nll, lambda x: np.exp(x.mean()), seed=2)
    boot_kl = uncertainty.bootstrap_se(scores.kl, seed=3)
    boot_top1 = uncertainty.bootstrap_se(scores.top1_match.astype(float), seed=4)
    boot_p99 = uncertainty.bootstrap_se(scores.kl, lambda x: np.quantile(x, 0.99), seed=5)
    assert metrics["ln_ppl_ratio_se"] == pytest.approx(boot_ln, rel=0.15)
    assert metrics["perplexity_se"] == pytest.approx(boot_ppl, rel=0.15)
    assert metrics["kl_mean_se"] == pytest.approx(boot_kl, rel=0.15)
    assert metrics["top1_agreement_se"] == pytest.approx(boot_top1, rel=0.15)
    # a quantile's error is itself a rough estimate (a few tokens set it): a looser bound
    assert metrics["kl_p99_se"] == pytest.approx(boot_p99, rel=0.35)
    assert metrics["kl_p99"] == pytest.approx(np.quantile(scores.kl, 0.99))
    # pairing per token removes the text's own difficulty: the ratio is far tighter
    assert metrics["ppl_ratio_se"] < 0.5 * metrics["perplexity_se"] / metrics["perplexity"]


def test_lm_eval_protocol_equals_lm_evals_own_loglikelihood_rolling(loaded_model, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results

    loaded = loaded_model("fp32")
    text = quality.load_text()[:1000]
    path = tmp_path / "text.txt"
    path.write_text(text)
    work = Workload(text_file=str(path), ppl_context=100, ppl_protocol="lm-eval", ppl_batch_size=3)
    ours = quality.measure(loaded.model, loaded.tokenizer, work)
    harness = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=1, max_length=100)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    (theirs,) = harness.loglikelihood_rolling([request], disable_tqdm=True)
    assert ours["loglikelihood"] == pytest.approx(theirs, rel=1e-4)
    # and the wikitext task's aggregates, from its own per-document results
    counted = process_results({"page": text}, [theirs])
    assert ours["word_perplexity"] == pytest.approx(weighted_perplexity([counted["word_perplexity"]]), rel=1e-4)
    assert ours["byte_perplexity"] == pytest.approx(weighted_perplexity([counted["byte_perplexity"]]), rel=1e-4)
    assert ours["bits_per_byte"] == pytest.approx(bits_per_byte([counted["bits_per_byte"]]), rel=1e-4)


def test_lm_eval_windows_are_lm_evals(ids):
    utils = pytest.importorskip("lm_eval.utils")
    tokens = list(range(10, 10 + 250))
    for length in (1, 7, 64, 250, 400):
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(tokens, 0, length, 1)]
        prefixed = [0] + tokens
        ours = [(prefixed[begin:first], prefixed[first:end])
                for begin, end, first in quality.lm_eval_windows(len(tokens), length)]
        # their context + continuation minus the last token is what the model reads
        assert [(c + t)[-(length + 1):][:-1] for c, t in theirs] == [prefixed[b : e - 1] for b, e, _ in
                                                                   quality.lm_eval_windows(len(tokens), length)]
        assert [t for _, t in theirs] == [t for _, t in ours]


def test_documents_from_jsonl_and_parquet_are_scored_separately(loaded_model, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    loaded = loaded_model("fp32")
    passage = quality.load_text()
    docs = [passage[:400], passage[400:700], passage[700:1200]]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n")
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": docs}), parquet)
    assert quality.load_documents(str(jsonl)) == docs == quality.load_documents(str(parquet))
    work = Workload(text_file=str(jsonl), ppl_context=64, ppl_stride=32)
    metrics = quality.measure(loaded.model, loaded.tokenizer, work)
    each = [quality.score(loaded.model, torch.tensor(loaded.tokenizer(d)["input_ids"]), 64, 32) for d in docs]
    assert metrics["scored_tokens"] == sum(s.n_tokens for s in each)
    weighted = np.exp(sum(s.nll_sum for s in each) / sum(s.n_tokens for s in each))
    assert metrics["perplexity"] == pytest.approx(weighted, rel=1e-4)


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "a"}\nnot json\n', "not a JSON line"),
    ('{"body": "a"}\n', "needs a string 'text' field"),
])
def test_bad_jsonl_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(QuantbenchError, match=message):
        quality.load_documents(str(path))


def test_bad_kl_setting_is_refused():
    assert refs.parse_kl("sampled:32:16") == refs.KLMode(k=32, m=16)
    assert refs.parse_kl("exact").exact
    for bad in ("topk", "sampled:0:4", "sampled:8", "exact:3"):
        with pytest.raises(QuantbenchError, match="bad --kl"):
            refs.parse_kl(bad)


def test_cli_refuses_an_unknown_protocol(cli):
    code, _, err = cli("run", "smollm2-135m", "--ppl-protocol", "nope", "--no-latency")
    assert code != 0 and "unknown --ppl-protocol 'nope'" in err and "Traceback" not in err


def test_bitsandbytes_repeated_warning_is_logged_once(loaded_model, caplog):
    from quantbench.logfilter import log_repeats_once

    model = loaded_model("int8").model
    log_repeats_once()
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        for _ in range(3):
            model(torch.tensor([[1, 2, 3, 4]]))
    lines = [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]
    assert len(lines) == 1


def _result(precision, peak, ratio, error):
    from quantbench.results import Result, RunSpec

    metrics = {"peak_generate_bytes_b1": peak, "perplexity": 30 * ratio, "perplexity_se": 0.4,
               "ppl_ratio": ratio, "ppl_ratio_se": error, "kl_mean": 0.02, "kl_mean_se": 0.001,
               "top1_agreement": 0.9, "top1_agreement_se": 0.01}
    return Result(spec=RunSpec(model="m", precision=precision), metrics=metrics, device="test")


def test_every_quality_figure_shows_its_error_in_table_markdown_and_html():
    from quantbench.report.export import to_markdown
    from quantbench.report.html import render_html
    from quantbench.report.table import summary

    table = summary([_result("fp16", 10, 1.0, 0.0), _result("nf4", 5, 1.031, 0.004)])
    row = dict(zip(table.headers, table.rows[1].cells, strict=True))
    assert row["ppl"] == "30.93 ± 0.4" and row["ppl ratio"] == "1.031 ± 0.004"
    assert row["KL mean"] == "0.02 ± 0.001" and row["top-1"] == "0.900 ± 0.01"
    results = [_result("fp16", 10, 1.0, 0.0), _result("nf4", 5, 1.031, 0.004)]
    assert "1.031 ± 0.004" in to_markdown(results) and "1.031 ± 0.004" in render_html(results)


def test_recommend_calls_a_difference_inside_the_error_a_tie(tmp_path):
    from quantbench.recommend import recommend
    from quantbench.results import append_result

    path = tmp_path / "r.jsonl"
    gib = 2**30
    append_result(path, _result("int8", 7 * gib, 1.010, 0.006))
    append_result(path, _result("nf4", 4 * gib, 1.018, 0.006))  # 0.8 % worse, inside 2 errors: a tie
    append_result(path, _result("fp4", 3 * gib, 1.045, 0.006))  # outside: worse
    rec = recommend("m", "8GiB", "5%", results=str(path))
    verdicts = {c.precision: c.verdict for c in rec.candidates}
    assert rec.winner == "nf4"
    assert "tied with the winner" in verdicts["int8"]
    assert verdicts["fp4"] == "fits but worse quality than the winner"
    tight = tmp_path / "tight.jsonl"  # the same ratios measured ten times more precisely
    for precision, peak, ratio in (("int8", 7, 1.010), ("nf4", 4, 1.018)):
        append_result(tight, _result(precision, peak * gib, ratio, 0.0006))
    assert recommend("m", "8GiB", "5%", results=str(tight)).winner == "int8"
