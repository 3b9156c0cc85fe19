"""The distribution of a set of compared steps (a case, or a whole run), as llama.cpp's `--kl-divergence`.

`summarize` turns per-step values into a `StepStatistics`: the KL divergence's mean ± standard error and
upper percentiles, the signed Δp of golden's token (p_test − p_golden) with its percentiles and RMS, how
often both sides pick the same top token, and how often each side's pick is in the other's top 5.
Pure arithmetic (`stats`), no records: `records.CaseRecord.stats` calls it on a case's judged steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from logitsdump.compare.stats import mean_se, quantiles, rate_se, rms_se

#: "In the other side's top N" (llama.cpp's top-token statistics look at the first choice only).
TOP_N = 5
#: KLD percentiles (llama.cpp prints the same upper tail), as (field suffix, quantile).
KLD_PERCENTILES = (("median", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999))
#: Δp percentiles, low tail first: a negative tail means the test makes golden's token less likely.
DP_PERCENTILES = (
    ("p1", 0.01), ("p5", 0.05), ("p10", 0.1), ("p25", 0.25), ("median", 0.5),
    ("p75", 0.75), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99),
)


@dataclass(frozen=True)
class StepStatistics:
    """llama.cpp-style statistics of a set of steps. `_se`: standard error (None below 2 values).

    Rates are fractions in [0, 1]; Δp values are probabilities in [-1, 1] (not percent).
    """

    #: Steps with metrics (the n of every KLD and top-token figure).
    kld_steps: int
    kld_mean: float
    kld_mean_se: float | None
    kld_median: float
    kld_p90: float
    kld_p95: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    #: Steps with a Δp (files from before `signed_dp` have none): the n of every Δp figure.
    dp_steps: int
    dp_mean: float | None
    dp_mean_se: float | None
    dp_min: float | None
    dp_p1: float | None
    dp_p5: float | None
    dp_p10: float | None
    dp_p25: float | None
    dp_median: float | None
    dp_p75: float | None
    dp_p90: float | None
    dp_p95: float | None
    dp_p99: float | None
    dp_max: float | None
    dp_rms: float | None
    dp_rms_se: float | None
    #: Both sides' top-1 is the same token.
    same_top: float
    same_top_se: float | None
    #: The test's top-1 is among golden's top 5 (rank <= 5 in golden's logits).
    my_top1_in_golden_top5: float
    #: Golden's top-1 is among the test's top 5.
    golden_top1_in_my_top5: float

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in STATISTICS_FIELDS}

    @classmethod
    def empty_row(cls) -> Mapping[str, None]:
        """Every field as None: the cells of a case without measured steps."""
        return dict.fromkeys(STATISTICS_FIELDS)


STATISTICS_FIELDS = tuple(f.name for f in fields(StepStatistics))


def summarize(
    kl: Sequence[float],
    dp: Sequence[float],
    same_top: Sequence[bool],
    my_rank_in_golden: Sequence[int],
    golden_rank_in_mine: Sequence[int],
) -> StepStatistics | None:
    """The statistics of the steps whose KL, top-1 match and cross ranks are given (one entry per step,
    the same order) and whose Δp values are `dp` (those that have one); None without any step."""
    n = len(kl)
    if n == 0:
        return None
    if not (len(same_top) == len(my_rank_in_golden) == len(golden_rank_in_mine) == n) or len(dp) > n:
        raise ValueError("one entry per step expected in kl, same_top and the ranks (dp at most as many)")
    kld_mean = mean_se(kl)
    assert kld_mean is not None
    kld_quantiles = quantiles(kl, [q for _, q in KLD_PERCENTILES])
    dp_mean = mean_se(dp)
    dp_quantiles = quantiles(dp, [q for _, q in DP_PERCENTILES])
    dp_rms = rms_se(dp)
    same = rate_se(sum(1 for s in same_top if s), n)
    assert same is not None
    return StepStatistics(
        kld_steps=n,
        kld_mean=kld_mean[0],
        kld_mean_se=kld_mean[1],
        **{f"kld_{name}": value for (name, _), value in zip(KLD_PERCENTILES, kld_quantiles, strict=True)},
        kld_max=max(kl),
        dp_steps=len(dp),
        dp_mean=dp_mean[0] if dp_mean else None,
        dp_mean_se=dp_mean[1] if dp_mean else None,
        dp_min=min(dp, default=None),
        **{f"dp_{name}": value for (name, _), value in zip(DP_PERCENTILES, dp_quantiles, strict=True)},
        dp_max=max(dp, default=None),
        dp_rms=dp_rms[0] if dp_rms else None,
        dp_rms_se=dp_rms[1] if dp_rms else None,
        same_top=same[0],
        same_top_se=same[1],
        my_top1_in_golden_top5=sum(1 for r in my_rank_in_golden if r <= TOP_N) / n,
        golden_top1_in_my_top5=sum(1 for r in golden_rank_in_mine if r <= TOP_N) / n,
    )
