"""What a pair of steps supports when one side (or both) holds only top-k log probabilities: pure formulas.

A server reports, per step, the k most probable tokens and their log probabilities (`topkfile`). From two
such steps (or one and a full-vocabulary logits vector, reduced to log probabilities) these are exact:
- each side's argmax, the argmax agreement, and the overlap of the two top-k sets;
- each side's top-2 margin (a difference of log probabilities is a difference of logits);
- golden's top-1 token's log probability on both sides (Δlogprob) and probability (Δp), when the test
  side reports that token (always in a replay: it was fed that token);
- `kl_lower_bound`: KL(golden || test) of the two distributions coarsened to the tokens both sides report
  (S) plus one bucket for everything else. Merging outcomes never increases a KL (the log-sum inequality),
  so this is a lower bound of the true KL, exact when S holds all the mass; `golden_mass` says how much of
  golden's distribution S holds.
Where a token is outside a side's top-k, only bounds follow: its log probability is at most that side's
k-th value (`floor`), so a flip margin is at least golden's top-1 minus its k-th value (`*_bound` True:
the number is a lower bound), and Δlogprob, Δp of golden's token are at most what that floor allows
(`dlogprob_bound` True: an upper bound). Nothing here can give cosine, L1 or ULP: they need every logit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from logitsdump.topkfile import TopkStep

#: The smallest mass kept apart in the "everything else" bucket (below it, rounding decides).
_TINY = 1e-15


@dataclass(frozen=True)
class Side:
    """One side of a pair: the log probabilities it reports, and its tokens, most probable first."""

    values: Mapping[int, float]  # token -> exact logprob (a top-k side: its entries and chosen token)
    top: tuple[int, ...]  # most probable first (a full side: its top k)
    full: np.ndarray | None = None  # a full-vocabulary side: the logprobs of every token (float64)

    @property
    def floor(self) -> float:
        """An upper bound of the logprob of any token it does not report (its lowest listed value)."""
        return -math.inf if self.full is not None else min(self.values[t] for t in self.top)

    def logprob(self, token: int) -> float | None:
        if self.full is not None:
            return float(self.full[token]) if 0 <= token < self.full.size else None
        return self.values.get(token)

    def rank(self, token: int) -> int | None:
        """1 + the number of tokens ahead of `token`; None when the side cannot tell (outside its top-k)."""
        if token in self.top:
            return self.top.index(token) + 1
        if self.full is not None and 0 <= token < self.full.size:
            value = self.full[token]
            return 1 + int(np.count_nonzero(self.full > value)) + int(np.count_nonzero(self.full[:token] == value))
        return None


def side_of_topk(step: TopkStep) -> Side:
    """A server's top-k step: its entries (and chosen token) as exact values, its entries as its top."""
    return Side(step.known(), step.ids)


def side_of_logits(logits: np.ndarray, k: int) -> Side:
    """A full-vocabulary vector (logits or logprobs) as log probabilities, with its top `k` listed."""
    from logitsdump.compare.kernels import top_k

    x = np.asarray(logits, dtype=np.float64)
    shift = float(x.max())
    logprobs = x - (shift + math.log(float(np.exp(x - shift).sum())))
    top = tuple(int(t) for t in top_k(logprobs, max(k, 2)))
    return Side({}, top, logprobs)


@dataclass(frozen=True)
class TopkMetrics:
    """What one pair of steps supports on top-k evidence (see the module docstring). `*_bound`: a bound."""

    k: int
    golden_top1: int
    my_top1: int
    top1_match: bool
    topk_overlap: float
    golden_margin: float | None  # golden top-1 minus top-2 logprob (None: k = 1)
    my_margin: float | None
    flip_margin: float  # golden's logprob of its top-1 minus of the test's top-1 (0 on a match)
    flip_margin_bound: bool  # True: a lower bound (the test's choice is outside golden's top-k)
    my_flip_margin: float
    my_flip_margin_bound: bool
    my_top1_rank_in_golden: int | None  # None: beyond golden's top-k
    golden_top1_rank_in_mine: int | None
    golden_logprob: float  # golden's logprob of its own top-1
    dlogprob: float  # test's minus golden's logprob of golden's top-1
    dp: float  # test's minus golden's probability of golden's top-1
    dlogprob_bound: bool  # True: dlogprob and dp are upper bounds (the test does not report the token)
    kl_lower_bound: float  # KL(golden || test) over the shared support plus one bucket: <= the true KL
    golden_mass: float  # golden's probability mass on the shared support
    my_mass: float
    shared: int  # tokens in the shared support

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> TopkMetrics | None:
        """The metrics in `data`; None when a field is missing or of another type (a hand-edited file)."""
        if not isinstance(data, Mapping):
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            value, kind = data.get(f.name), str(f.type)
            optional = kind.endswith("| None")
            if value is None and optional:
                values[f.name] = None
                continue
            if kind.startswith("bool"):
                ok = isinstance(value, bool)
            elif kind.startswith("int"):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                value = float(value) if ok else value
            if not ok:
                return None
            values[f.name] = value
        return cls(**values)


def topk_metrics(golden: Side, mine: Side, k: int) -> TopkMetrics:
    """Every top-k metric of one pair of steps, compared on `k` entries (the top-k side's count)."""
    g_top, m_top = golden.top[:k], mine.top[:k]
    g1, m1 = g_top[0], m_top[0]
    lg1 = golden.logprob(g1)
    lm1 = mine.logprob(m1)
    assert lg1 is not None and lm1 is not None
    overlap = len(set(g_top) & set(m_top)) / max(min(len(g_top), len(m_top)), 1)
    flip, flip_bound = _gap(golden, g1, m1)
    my_flip, my_flip_bound = _gap(mine, m1, g1)
    mine_of_g1 = mine.logprob(g1)
    bound = mine_of_g1 is None
    upper = mine.floor if bound else mine_of_g1
    kl, g_mass, m_mass, shared = kl_lower_bound(golden, mine)
    return TopkMetrics(
        k=k, golden_top1=g1, my_top1=m1, top1_match=g1 == m1, topk_overlap=overlap,
        golden_margin=_margin(golden), my_margin=_margin(mine),
        flip_margin=flip, flip_margin_bound=flip_bound, my_flip_margin=my_flip, my_flip_margin_bound=my_flip_bound,
        my_top1_rank_in_golden=golden.rank(m1), golden_top1_rank_in_mine=mine.rank(g1),
        golden_logprob=lg1, dlogprob=upper - lg1, dp=math.exp(upper) - math.exp(lg1), dlogprob_bound=bound,
        kl_lower_bound=kl, golden_mass=g_mass, my_mass=m_mass, shared=shared,
    )


def _margin(side: Side) -> float | None:
    if len(side.top) < 2:
        return None
    first, second = side.logprob(side.top[0]), side.logprob(side.top[1])
    assert first is not None and second is not None
    return first - second


def _gap(side: Side, own: int, other: int) -> tuple[float, bool]:
    """side's logprob of `own` minus of `other` (0 when equal); (value, True) when only a lower bound is known."""
    if own == other:
        return 0.0, False
    mine, theirs = side.logprob(own), side.logprob(other)
    assert mine is not None
    if theirs is None:
        return mine - side.floor, True
    return mine - theirs, False


def kl_lower_bound(golden: Side, mine: Side) -> tuple[float, float, float, int]:
    """(KL lower bound, golden's mass on the shared support, the test's mass there, its size).

    The shared support S: every token whose logprob both sides report. The bound is
    sum_S p (log p - log q) + P(rest) log(P(rest) / Q(rest)), clamped at 0.
    """
    if golden.full is not None and mine.full is not None:
        shared = list(range(min(golden.full.size, mine.full.size)))
    elif golden.full is not None:
        shared = [t for t in mine.values if golden.logprob(t) is not None]
    elif mine.full is not None:
        shared = [t for t in golden.values if mine.logprob(t) is not None]
    else:
        shared = [t for t in golden.values if t in mine.values]
    lp = np.array([golden.logprob(t) for t in shared], dtype=np.float64)
    lq = np.array([mine.logprob(t) for t in shared], dtype=np.float64)
    p = np.exp(lp)
    head = math.fsum((p * (lp - lq)).tolist())
    p_mass, q_mass = math.fsum(p.tolist()), math.fsum(np.exp(lq).tolist())
    rest_p, rest_q = max(1.0 - p_mass, 0.0), max(1.0 - q_mass, 0.0)
    tail = rest_p * math.log(rest_p / max(rest_q, _TINY)) if rest_p > _TINY else 0.0
    return max(0.0, head + tail), min(p_mass, 1.0), min(q_mass, 1.0), len(shared)
