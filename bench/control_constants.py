"""Derive the constants of `compare/control.py` from healthy pairs, each judged against its control arm.

    python bench/control_constants.py GOLDEN TEST [GOLDEN TEST ...]

Each GOLDEN is a golden logits folder with its control arm (`dump --control`, found through its manifest), each
TEST a healthy test side replaying it. For every pair, from the per-step log power ratios r = log(rms_T^2 /
rms_C^2) that compare computes (every step of every case):
  sigma_w   the pooled within-case standard deviation of r (STEP_SPREAD);
  rho       the variance of a case's mean r beyond what its steps explain, over sigma_w^2 (CASE_SHARE);
  tail      the 0.999 quantile of |r - case mean| / sigma_w over the normal one, 3.29 (TAIL);
  flip z    the 0.999 quantile, over every top-10 gap of every step, of |test's gap perturbation| /
            (sqrt(2 f) rms_C): how far past the control-scaled noise a healthy test moves golden's gaps (FLIP_Z);
and the mean r minus log f, which a healthy pair keeps at or below 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist

import numpy as np

from logitsdump.compare import CompareOptions, run_compare
from logitsdump.tensorio import load_logits


def _pair(golden: Path, test: Path, scratch: Path) -> dict[str, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_compare(CompareOptions(golden, test, scratch, workers=1))
    reference = summary.reference
    if reference is None or reference.control is None:
        raise SystemExit(f"{golden}: no control arm found (dump it with dump --control)")
    factor = reference.factor or 1.0
    cases, gaps = [], []
    for case in summary.cases:
        if case.paired is None:
            continue
        rows = [row for row in case.paired.control_steps if row.log_ratio is not None]
        cases.append([row.log_ratio for row in rows])
        by_token = {s.token_id: s for s in case.judged_steps}
        for row in rows:
            step = by_token.get(row.token)
            if step is None or not row.control_rms:
                continue
            g = load_logits(golden / step.file_name).astype(np.float64).ravel()
            m = load_logits(test / step.file_name).astype(np.float64).ravel()
            order = np.argsort(-g)[:10]
            top = order[0]
            moved = (m[order[1:]] - m[top]) - (g[order[1:]] - g[top])
            gaps.extend(np.abs(moved) / (math.sqrt(2 * factor) * row.control_rms))
    spread = _spread(cases)
    excess = spread.pop("mean") - math.log(factor)
    return {**spread, "factor": factor, "flip_z": float(np.quantile(gaps, 0.999)), "excess": excess,
            "raw": (cases, gaps, factor)}


def _pooled(raws: list) -> dict[str, float]:
    """The same over every pair at once (each pair's r centred on its own mean first)."""
    cases = [[v - m for v in c] for c_list, _g, f in raws
             for m in [np.mean([np.mean(c) for c in c_list])] for c in c_list]
    gaps = [g for _c, g_list, _f in raws for g in g_list]
    spread = _spread(cases)
    spread.pop("mean")
    return {**spread, "flip_z": float(np.quantile(gaps, 0.999))}


def _spread(cases: list[list[float]]) -> dict[str, float]:
    """The within-case spread of r (sigma_w), the case share of its variance (rho) and the tail factor of the
    within-case deviations against a normal's (their 99.9th percentile over the normal's), with the mean of the
    case means."""
    within = [v - sum(c) / len(c) for c in cases if len(c) >= 2 for v in c]
    dof = sum(len(c) - 1 for c in cases if len(c) >= 2)
    sigma = math.sqrt(sum(w * w for w in within) / dof)
    means = np.array([sum(c) / len(c) for c in cases])
    counts = np.array([len(c) for c in cases])
    rho = (means.var(ddof=1) - np.mean(sigma**2 / counts)) / sigma**2
    tail = float(np.quantile(np.abs(within), 0.999)) / sigma / NormalDist().inv_cdf(0.9995)
    return {"cases": len(cases), "steps": int(counts.sum()), "sigma_w": sigma, "rho": float(rho), "tail": tail,
            "mean": float(means.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="GOLDEN TEST pairs")
    args = parser.parse_args()
    if len(args.folders) % 2:
        raise SystemExit("give GOLDEN TEST pairs")
    print("| golden | test | cases | steps | f | sigma_w | rho | tail | flip z | mean r - log f |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    raws = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(0, len(args.folders), 2):
            golden, test = Path(args.folders[i]), Path(args.folders[i + 1])
            row = _pair(golden, test, Path(tmp) / str(i))
            raws.append(row["raw"])
            print(f"| {golden} | {test} | {row['cases']} | {row['steps']} | {row['factor']:.3g} | {row['sigma_w']:.3f} "
                  f"| {row['rho']:.3f} | {row['tail']:.2f} | {row['flip_z']:.2f} | {row['excess']:.3f} |", flush=True)
    if len(raws) > 1:
        row = _pooled(raws)
        print(f"| pooled | | {row['cases']} | {row['steps']} | | {row['sigma_w']:.3f} | {row['rho']:.3f} "
              f"| {row['tail']:.2f} | {row['flip_z']:.2f} | |")


if __name__ == "__main__":
    sys.exit(main())
