"""The sampled reference's record and estimator on SmolLM2-135M's own next-token distributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quantbench.measure import quality
from quantbench.measure import reference as refs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rows(loaded_model):
    """fp32 and nf4 log-softmax of 128 positions of the held-out passage."""
    ids = torch.tensor(loaded_model("fp32").tokenizer(quality.load_text())["input_ids"][:129])
    with torch.inference_mode():
        p, q = (torch.log_softmax(loaded_model(name).model(ids[None, :128]).logits[0].float(), -1)
                for name in ("fp32", "nf4"))
    return p, q


def exact_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p.exp() * (p - q)).sum(-1)


def test_the_record_fills_a_kilobyte_at_any_vocabulary():
    small, large = refs.record_dtype(refs.KLMode(), 49152), refs.record_dtype(refs.KLMode(), 1 << 17)
    assert small.itemsize == 1024 and small["tail_ids"].base == np.uint16
    assert 1000 < large.itemsize <= 1024 and large["tail_ids"].base == np.int32  # fewer samples, same bytes
    assert refs.KLMode().samples(49152) > refs.KLMode().samples(1 << 17)
    assert refs.record_dtype(refs.parse_kl("sampled:8:32"), 49152)["tail_ids"].shape == (32,)


def test_a_tail_shorter_than_the_samples_is_kept_whole(rows):
    """Over a vocabulary of 200 ids every tail id fits in the record: the KL is the exact one."""
    p, q = rows
    keep = p[0].topk(200).indices
    p, q = (torch.log_softmax(x[:, keep], -1) for x in rows)
    records = refs.encode(p, p[:, 0], refs.KLMode(), torch.Generator().manual_seed(0))
    estimate, mc_var = refs.kl(records, q)
    torch.testing.assert_close(estimate, exact_kl(p, q), rtol=1e-3, atol=1e-5)  # fp16 tail log-probs
    assert mc_var.max() == 0


def test_estimates_are_unbiased_and_their_monte_carlo_variance_is_what_is_reported(rows):
    p, q = rows
    estimates, variances = [], []
    for seed in range(12):
        records = refs.encode(p, p[:, 0], refs.KLMode(), torch.Generator().manual_seed(seed))
        estimate, mc_var = refs.kl(records, q)
        estimates.append(estimate.double())
        variances.append(mc_var.double())
    estimates, variances = torch.stack(estimates), torch.stack(variances)
    exact = exact_kl(p, q).double()
    # summed over tokens: the seeds' spread of each token's estimate against the reported variance
    spread, reported = estimates.var(0).sum().item(), variances.mean(0).sum().item()
    assert 0.6 < spread / reported < 1.6
    mean_error = (estimates.mean(0) - exact).mean().item()
    assert abs(mean_error) < 4 * (reported / 12) ** 0.5 / len(exact)
    assert (variances > 0).any() and (estimates >= 0).all()


def test_a_tail_that_underflows_to_zero_weighs_nothing(rows):
    """A reference sure of its next token (its row sharpened 100x): no tail mass, no NaN."""
    p, q = rows
    p = torch.log_softmax(p * 100, -1)
    records = refs.encode(p, p[:, 0], refs.KLMode(), torch.Generator().manual_seed(0))
    assert np.isneginf(records["log_tail"]).any()
    estimate, mc_var = refs.kl(records, q)
    torch.testing.assert_close(estimate, exact_kl(p, q), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(mc_var).all()
