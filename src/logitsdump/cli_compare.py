"""The `compare` and `calibrate` subcommands: parsing and calling only (`cli.build_parser` adds them).

compare pairs two devices' logits folders and judges each case; calibrate measures a noise floor from
healthy pairs for compare's replayed verdicts.
"""

from __future__ import annotations

import argparse
from typing import Any

from logitsdump.cli_flags import (
    add_golden_and_test,
    add_log_level,
    add_output_dir,
    number_between,
    positive_int,
    print_lines,
)
from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import UsageError


def add_parsers(subparsers: Any) -> None:
    """Add `compare` (alias `logitscmp`) and `calibrate` to the argparse tree."""
    _add_compare_parser(subparsers)
    _add_calibrate_parser(subparsers)


def _add_compare_parser(subparsers: Any) -> None:
    from logitsdump.compare import verdicts

    parser = subparsers.add_parser(
        "compare",
        aliases=["logitscmp"],
        help="compare two folders of logits files token by token (msit logitscmp) and judge each case",
        description="Pair the .pth/.safetensors files of two folders by name, write msit's per-token CSV "
        f"and a per-case verdict ({verdicts.help_text()}).",
    )
    add_golden_and_test(parser, "folder of logits files")
    add_output_dir(parser, "./output", "./output, as msit")
    checks = parser.add_argument_group("msit's pass thresholds, per token")
    checks.add_argument("-cs", "--cosine-similarity", type=number_between(-1.0, 1.0), default=0.999,
                        help="pass when cosine similarity > this, in [-1, 1] (default 0.999)")
    checks.add_argument("-kl", "--kl-divergence", type=number_between(0.0), default=0.0001,
                        help="pass when KL divergence < this, >= 0 (default 0.0001)")
    checks.add_argument("-l1", "--l1-norm", type=number_between(-1.0), default=0.01,
                        help="pass when |relative L1 difference| < this, >= -1 (default 0.01)")
    checks.add_argument("-d", "--dtype", choices=DATA_TYPES, default=None,
                        help="dtype whose ULP the max-logit test uses (default: the dumps' dtype from their "
                        "manifests; fp16, as msit, for folders without one)")
    checks.add_argument("--topk", type=positive_int, default=10,
                        help="our addition: k of the top-k overlap, at most the vocabulary (default 10)")
    reference = parser.add_argument_group("our additions: the noise reference of the per-case verdict")
    reference.add_argument("--control", metavar="DIR", default=None,
                           help="the control arm: the same cases dumped on the golden side in a second healthy "
                           "configuration (dump --control); each step of the test is judged against it. Default: "
                           "the one the golden manifest names, else control/ beside -gp (docs/compare.md)")
    reference.add_argument("--no-control", action="store_true",
                           help="judge without a control arm even where one is found")
    verdict = parser.add_argument_group("our additions: the tolerances of the per-case verdict (without a "
                                        "control arm, or for cases it lacks)")
    verdict.add_argument("--tie-tolerance", type=number_between(0.0), default=None,
                        help="a first argmax change is a tie-flip when golden's top-1 logit leads the "
                        "test's choice by at most this (logits; default: the noise floor's, see --tolerances)")
    verdict.add_argument("--tolerances", metavar="FILE", default=None,
                        help="the model's measured noise floor: a tolerances file written by `logitsdump calibrate` "
                        "(flags given here win). Without it, replayed cases are judged against the conservative "
                        "default of the dumps' dtype (docs/compare.md)")
    verdict.add_argument("--noise-margin", type=number_between(0.0), default=None,
                        help="replayed cases (dump --replay): an argmax change is noise when golden's top-1 logit "
                        "leads the test's choice by at most this (logits; default: 2 x sqrt(the KL bound), "
                        "bf16 0.0566)")
    verdict.add_argument("--noise-kl", type=number_between(0.0), default=None,
                        help="replayed cases: a step is close when its KL is at most this (default: the dtype's "
                        "bound, bf16 8e-4, fp16 1.25e-5, fp32 1.86e-13)")
    verdict.add_argument("--noise-cosine", type=number_between(-1.0, 1.0), default=None,
                        help="replayed cases: a step is close when its cosine is at least this (default -1: not "
                        "used; cosine of logits is not scale-free)")
    verdict.add_argument("--noise-mean-kl", type=number_between(0.0), default=None,
                        help="replayed cases: a case drifts when the mean KL of its steps is above this "
                        "(default: not used; `calibrate` measures it)")
    verdict.add_argument("--noise-mean-kl-steps", type=number_between(1.0), default=None,
                        help="the number of steps --noise-mean-kl holds for; a case of n steps gets it times "
                        "sqrt(this / n), at most --noise-kl (default 1; `calibrate` measures it)")
    calibration = parser.add_argument_group("our additions: calibration")
    calibration.add_argument("--calibrate", action="store_true",
                        help="the same as `logitsdump calibrate` with these folders: measure them as a "
                        "known-healthy pair and write the tolerances file (no verdict files)")
    calibration.add_argument("--safety-factor", type=number_between(1.0), default=None,
                        help="--calibrate: each tolerance is this times the 0.99 quantile of the spread (default 2)")
    add_log_level(parser)
    parser.set_defaults(handler=_run_compare)


def _add_calibrate_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="measure a model's noise floor on a known-healthy pair of dumps and write the tolerances file "
        "compare --tolerances reads",
        description="Treat the two folders as a known-healthy pair of the same model: the same device twice, "
        "or a higher precision (golden, e.g. fp32) against the dtype under test (e.g. bf16), the test side "
        "replayed (dump --replay). Print the spread of the per-step metrics and write the tolerances "
        "(each the safety factor times the 0.99 quantile) to <-o>/logits_cmp_tolerances_<ts>.json, or to "
        "--tolerances-file. Calibrate on other cases than those you will judge.",
    )
    group = parser.add_argument_group("inputs")
    group.add_argument("-gp", "--golden-path", required=True, metavar="PATH", action="append",
                       help="the golden (or higher-precision) side's folder of logits files; repeat -gp/-mp for "
                       "several pairs (e.g. one per task), measured together")
    group.add_argument("-mp", "--my-path", required=True, metavar="PATH", action="append",
                       help="the dtype under test's folder of logits files (replayed), paired with the -gp "
                       "in the same position")
    add_output_dir(parser, "./output", "./output")
    parser.add_argument("--tolerances-file", metavar="FILE", default=None,
                        help="write the tolerances here instead of <-o>/logits_cmp_tolerances_<ts>.json")
    parser.add_argument("--safety-factor", type=number_between(1.0), default=None,
                        help="each tolerance is this times the quantile of the spread (default 2)")
    parser.add_argument("--quantile", type=number_between(0.5, 1.0), default=None,
                        help="the quantile (nearest rank) of the spread each tolerance is based on (default 0.99)")
    parser.add_argument("--topk", type=positive_int, default=10, help="k of the top-k overlap (default 10)")
    add_log_level(parser)
    parser.set_defaults(handler=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from logitsdump.compare import CompareOptions
    from logitsdump.compare.calibrate import DEFAULT_QUANTILE, DEFAULT_SAFETY_FACTOR, calibrate, format_calibration

    if len(args.golden_path) != len(args.my_path):
        raise UsageError(f"give as many -mp as -gp (found {len(args.golden_path)} -gp, {len(args.my_path)} -mp)")
    pairs = [CompareOptions(golden_path=g, my_path=m, output_dir=args.output_dir, topk=args.topk)
             for g, m in zip(args.golden_path, args.my_path, strict=True)]
    result = calibrate(
        pairs,
        safety_factor=DEFAULT_SAFETY_FACTOR if args.safety_factor is None else args.safety_factor,
        quantile=DEFAULT_QUANTILE if args.quantile is None else args.quantile,
        output_path=args.tolerances_file,
    )
    print(format_calibration(result))
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    from logitsdump.compare import CompareOptions, run_compare
    from logitsdump.compare.calibrate import DEFAULT_SAFETY_FACTOR, calibrate, format_calibration
    from logitsdump.compare.floor import TOLERANCE_KEYS

    tolerances = {name: getattr(args, name) for name in TOLERANCE_KEYS if getattr(args, name) is not None}
    options = CompareOptions(
        golden_path=args.golden_path,
        my_path=args.my_path,
        output_dir=args.output_dir,
        cosine=args.cosine_similarity,
        kl=args.kl_divergence,
        l1=args.l1_norm,
        dtype=args.dtype,
        topk=args.topk,
        tolerances_file=args.tolerances,
        control_path=args.control,
        use_control=not args.no_control,
        **tolerances,
    )
    if args.calibrate:
        factor = DEFAULT_SAFETY_FACTOR if args.safety_factor is None else args.safety_factor
        print(format_calibration(calibrate(options, safety_factor=factor)))
        return 0
    summary = run_compare(options)
    from logitsdump.report.terminal import print_summary

    print_summary(summary)
    print(f"results: {summary.csv_path}")
    print(f"cases:   {summary.cases_csv_path}")
    print(f"         {summary.cases_json_path}")
    from logitsdump.next_steps import after_compare

    print_lines(after_compare(summary.cases_json_path.parent))
    return 0
