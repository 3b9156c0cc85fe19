"""The `logitsdump` command line: argparse tree, one-line errors, exit codes.

Only parsing and calling live here. Each subcommand builds a config and calls a
library function; heavy libraries (torch, transformers) are imported inside
those functions, so `logitsdump --help` stays fast.
Exit codes: 0 success, 1 runtime failure, 2 usage error (as msit).
"""

from __future__ import annotations

import argparse
import errno
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from logitsdump import __version__
from logitsdump.cli_flags import add_flag, add_golden_and_test, add_log_level, add_output_dir, positive_int
from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import EXIT_FAILURE, UsageError, UserError
from logitsdump.logs import get_logger, setup_logging
from logitsdump.procguard import Terminated, terminate_like_interrupt
from logitsdump.protocol import CONTROL_KINDS, REPLAY_MODES

Handler = Callable[[argparse.Namespace], int]


# ---- eval -------------------------------------------------------------------------------------


def _add_eval_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="modeltest-compatible accuracy run (also re-infers bad cases for `dump`)",
        description="Evaluate a causal LM on a modeltest task; flags and files as MindIE-LLM's modeltest.",
    )
    add_flag(parser, "model_config_path", required=True, help="model YAML file")
    add_flag(parser, "task_config_path", required=True, help="task YAML file")
    add_flag(parser, "batch_size", type=positive_int, default=1, help="queries per batch (default 1)")
    add_flag(parser, "tp", type=positive_int, default=1, help="tensor-parallel degree, used in file names")
    parser.add_argument("-o", "--output_dir", "--output-dir", dest="output_dir", default="",
                        help="root of results/, debug/, data/ (default: .)")
    add_flag(parser, "lcoc_disable", action="store_true", help="NPU kernel switch: accepted, ignored elsewhere")
    add_flag(parser, "save_debug_enable", action="store_true", help="write the per-case debug CSV")
    add_flag(
        parser,
        "device",
        default="auto",
        help="our extension: auto (CUDA, else NPU, else CPU), cpu, cuda, cuda:N, npu, npu:N",
    )
    from logitsdump.runner.backends import REGISTRY

    add_flag(
        parser,
        "backend",
        type=str.lower,
        choices=[name.lower() for name in REGISTRY],
        default=None,
        help="our extension: the framework that runs the model, instead of the model YAML's "
        "requested_gpu_framework (vllm needs the logitsdump[vllm] extra)",
    )
    add_log_level(parser)
    parser.set_defaults(handler=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from logitsdump.runner.evaluate import EvalOptions, run_eval

    options = EvalOptions(
        model_config_path=args.model_config_path,
        task_config_path=args.task_config_path,
        batch_size=args.batch_size,
        tp=args.tp,
        output_dir=args.output_dir,
        save_debug=args.save_debug_enable,
        device=args.device,
        backend=args.backend,
    )
    result = run_eval(options)
    from logitsdump.next_steps import after_eval
    from logitsdump.protocol import dump_enabled

    if result.scores and not dump_enabled():  # a dump's runner: `dump` prints the next step
        _print_lines(after_eval(result.layout.debug_file if options.save_debug else None))
    return 0


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line, flush=True)


# ---- bcanalyze --------------------------------------------------------------------------------


def _add_bcanalyze_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bcanalyze",
        help="find the bad cases: cases whose pass/fail differs between golden and test debug CSVs",
        description="msit llm bcanalyze: compare two result CSVs (key + pass/passed columns) and write "
        "msit_bad_case_result_<timestamp>.csv with the cases whose verdict differs. Two lm-eval "
        "--log_samples files (samples_<task>_*.jsonl, recognised by content) work too: docs joined on "
        "doc_id and doc_hash, pass/fail from a per-doc metric (docs/lm-eval.md).",
    )
    add_golden_and_test(parser, "result CSV (modeltest's debug CSV, or any CSV with key and pass columns), "
                        "or lm-eval samples file")
    add_output_dir(parser, None, "./msit_bad_case/analyzer, as msit; -o is our addition")
    lm_eval = parser.add_argument_group("lm-eval samples files only")
    lm_eval.add_argument("--metric", default=None,
                         help="the per-doc metric that decides pass/fail, logged as 0/1 (default: the first such "
                         "metric of the task, e.g. acc or exact_match)")
    lm_eval.add_argument("--filter", dest="lm_eval_filter", default=None,
                         help="the filter whose lines are compared (default: the first one logged)")
    add_log_level(parser)
    parser.set_defaults(handler=_run_bcanalyze)


def _run_bcanalyze(args: argparse.Namespace) -> int:
    from logitsdump.badcase import DEFAULT_ANALYZER_DIR, BcanalyzeOptions, analyze

    options = BcanalyzeOptions(args.golden_path, args.my_path, args.output_dir or DEFAULT_ANALYZER_DIR,
                               metric=args.metric, lm_eval_filter=args.lm_eval_filter)
    result = analyze(options)
    if result.preflight is not None:  # set-up findings first
        from logitsdump.report.triage import format_preflight

        print(format_preflight(result.preflight))
    if result.output_path is None:
        print(f"no bad cases: the {result.compared} cases in both files have the same verdict")
    else:
        print(f"{result.bad_cases} bad case(s) of {result.compared} compared: {result.output_path}")
    print(result.flips.describe())
    if result.output_path is not None:
        from logitsdump.next_steps import after_bcanalyze

        _print_lines(after_bcanalyze(result.output_path.parent))
    return 0


# ---- dump -------------------------------------------------------------------------------------


def _add_dump_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "dump",
        aliases=["logitsdump"],
        help="re-run only the bad cases with a runner (modeltest or logitsdump eval) and dump their logits",
        description="msit llm logitsdump: run the command with BAD_CASE_LOGITS_DUMP=True, "
        "LOGITS_DUMP_TOKEN_MAX_LENGTH=N and BAD_CASE_LIST=<keys of the bad-case CSV>. The command is "
        "split into words as a shell would (quote a path with spaces) but run without a shell; it must "
        "start with modeltest, torchrun or logitsdump, and its --batch_size, if given, must be 1. "
        "Or, with --from-samples, replay the bad docs of an lm-eval run in-process (docs/lm-eval.md).",
    )
    parser.add_argument(
        "-e",
        "--exec",
        dest="exec_command",
        default=None,
        help='runner command, e.g. "modeltest --model_config_path ..." (required unless --from-samples)',
    )
    parser.add_argument("-bcr", "--bad-case-result", required=True,
                        help="bad-case CSV, or bcanalyze's output folder (its newest msit_bad_case_result_*.csv)")
    parser.add_argument(
        "-tr",
        "--token-range",
        type=positive_int,
        default=1,
        help="dump the logits of the first N generated tokens (default 1)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="our addition: keep cases already complete in the logits folder"
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="our addition: replace the previous dump in the logits folder (only the files it wrote are removed; "
        "without --resume or --overwrite a logits folder that holds files is refused)",
    )
    parser.add_argument(
        "--logits-fp32", action="store_true", help="our addition: save logits as float32 (our runner only)"
    )
    parser.add_argument(
        "--replay",
        metavar="GOLDEN_LOGITS_DIR",
        default=None,
        help="our addition: feed the golden dump's generated tokens instead of this device's own choices "
        "(teacher forcing), so every step compares the same prefix (our runner only)",
    )
    parser.add_argument(
        "--replay-mode",
        choices=REPLAY_MODES,
        default="step",
        help="our addition, how --replay (and a --control arm) feed the golden tokens: step = forced decoding "
        "through the KV-cache decode path (default); "
        "prefill = score the whole golden continuation in one forward pass",
    )
    parser.add_argument(
        "--control",
        choices=CONTROL_KINDS,
        default=None,
        help="our addition, on the golden side: then replay the same cases on the golden tokens in a second "
        "healthy configuration (dtype: the other dtype, fp32 <-> bf16; impl: the other attention "
        "implementation, in the dtype under test), written to control/ beside the golden dump; compare judges "
        "the test against it. With --replay GOLDEN_DIR: only the control of that dump (our runner only)",
    )
    parser.add_argument("--control-dtype", choices=DATA_TYPES, default=None,
                        help="our addition: the control's dtype (default: dtype control fp32 <-> bf16; impl "
                        "control golden's, bf16 for an fp32 golden)")
    lm_eval = parser.add_argument_group("our addition: replaying an lm-eval run (instead of -e)")
    lm_eval.add_argument("--from-samples", metavar="SAMPLES_JSONL", default=None,
                         help="lm-eval's samples_<task>_*.jsonl (--log_samples): replay the logged prompts of the "
                         "bad-case CSV's docs through the model of --model_config_path")
    add_flag(lm_eval, "model_config_path", default=None, help="--from-samples: the model YAML to replay on")
    parser.add_argument("-o", "--output_dir", "--output-dir", dest="output_dir", default="",
                        help="root of data/.../logits/ (default: the runner's --output_dir, else .); with -e it "
                        "is given to the runner as --output_dir")
    add_flag(lm_eval, "device", default="auto",
             help="--from-samples: auto (CUDA, else NPU, else CPU), cpu, cuda, cuda:N, npu, npu:N")
    add_log_level(parser)
    parser.set_defaults(handler=_run_dump)


def _run_dump(args: argparse.Namespace) -> int:
    from logitsdump.dump import DumpOptions, run_dump
    from logitsdump.errors import UsageError
    from logitsdump.fsutil import check_path_fits

    paths = {"-bcr/--bad-case-result": args.bad_case_result, "--replay": args.replay,
             "--from-samples": args.from_samples, "--model_config_path": args.model_config_path}
    for flag, value in paths.items():  # a name too long names its flag, before any work
        if value:
            check_path_fits(value, flag)
    if args.control_dtype is not None and args.control is None:
        raise UsageError("--control-dtype goes with --control")
    args.bad_case_result = _bad_case_csv(args.bad_case_result)
    if args.from_samples is not None:
        if args.control is not None:
            raise UsageError("--control needs the runner command (-e \"logitsdump eval ...\"), not --from-samples")
        return _run_samples_dump(args)
    if args.exec_command is None:
        raise UsageError("give the runner command with -e, or an lm-eval samples file with --from-samples")
    if args.model_config_path is not None or args.device != "auto":
        raise UsageError("--model_config_path and --device go with --from-samples; with -e they belong in the "
                         "runner command")
    from logitsdump.dump import output_dir_of, with_output_dir

    exec_command = with_output_dir(args.exec_command, args.output_dir) if args.output_dir else args.exec_command
    options = DumpOptions(
        exec_command=exec_command,
        bad_case_csv=args.bad_case_result,
        token_range=args.token_range,
        resume=args.resume,
        logits_fp32=args.logits_fp32,
        overwrite=args.overwrite,
        replay=args.replay,
        replay_mode=args.replay_mode,
        control=args.control,
        control_dtype=args.control_dtype,
    )
    result = run_dump(options)
    _print_lines(result.summary_lines())
    from logitsdump.launch import split_command
    from logitsdump.next_steps import after_dump

    root = Path(output_dir_of(split_command(exec_command)) or ".")
    _print_lines(after_dump([f.path for f in result.folders], args.replay, root))
    return 0


def _bad_case_csv(given: str) -> str:
    """`-bcr`: the file, or the newest bcanalyze result of a folder, said in one line."""
    from logitsdump.badcase import resolve_bad_case_csv

    path, found = resolve_bad_case_csv(given)
    if path != Path(given):
        print(f"-bcr {given}: the newest of its {found} bad-case file(s): {path}", flush=True)
    return str(path)


def _run_samples_dump(args: argparse.Namespace) -> int:
    from logitsdump.errors import UsageError
    from logitsdump.lmeval.replay import SamplesDumpOptions, run_samples_dump

    if args.exec_command is not None:
        raise UsageError("--from-samples replays in this process: leave out -e")
    if args.model_config_path is None:
        raise UsageError("--from-samples needs --model_config_path, the model YAML to replay on")
    result = run_samples_dump(SamplesDumpOptions(
        samples_path=args.from_samples, bad_case_csv=args.bad_case_result, model_config_path=args.model_config_path,
        token_range=args.token_range, output_dir=args.output_dir, device=args.device, resume=args.resume,
        overwrite=args.overwrite, logits_fp32=args.logits_fp32, replay=args.replay, replay_mode=args.replay_mode,
    ))
    _print_lines(result.summary_lines())
    from logitsdump.next_steps import after_dump

    _print_lines(after_dump([f.path for f in result.folders], args.replay, Path(args.output_dir or ".")))
    return 0


# ---- compare ----------------------------------------------------------------------------------


def _number_at_least(low: float, high: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] (high None: no upper bound)."""
    span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {span}, found {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")) or value < low or (
            high is not None and value > high
        ):
            raise argparse.ArgumentTypeError(f"expected a number {span}, found {text}")
        return value

    return parse


def _add_compare_parser(subparsers) -> None:
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
    checks.add_argument("-cs", "--cosine-similarity", type=_number_at_least(-1.0, 1.0), default=0.999,
                        help="pass when cosine similarity > this, in [-1, 1] (default 0.999)")
    checks.add_argument("-kl", "--kl-divergence", type=_number_at_least(0.0), default=0.0001,
                        help="pass when KL divergence < this, >= 0 (default 0.0001)")
    checks.add_argument("-l1", "--l1-norm", type=_number_at_least(-1.0), default=0.01,
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
    verdict.add_argument("--tie-tolerance", type=_number_at_least(0.0), default=None,
                        help="a first argmax change is a tie-flip when golden's top-1 logit leads the "
                        "test's choice by at most this (logits; default: the noise floor's, see --tolerances)")
    verdict.add_argument("--tolerances", metavar="FILE", default=None,
                        help="the model's measured noise floor: a tolerances file written by `logitsdump calibrate` "
                        "(flags given here win). Without it, replayed cases are judged against the conservative "
                        "default of the dumps' dtype (docs/compare.md)")
    verdict.add_argument("--noise-margin", type=_number_at_least(0.0), default=None,
                        help="replayed cases (dump --replay): an argmax change is noise when golden's top-1 logit "
                        "leads the test's choice by at most this (logits; default: 2 x sqrt(the KL bound), "
                        "bf16 0.0566)")
    verdict.add_argument("--noise-kl", type=_number_at_least(0.0), default=None,
                        help="replayed cases: a step is close when its KL is at most this (default: the dtype's "
                        "bound, bf16 8e-4, fp16 1.25e-5, fp32 1.86e-13)")
    verdict.add_argument("--noise-cosine", type=_number_at_least(-1.0, 1.0), default=None,
                        help="replayed cases: a step is close when its cosine is at least this (default -1: not "
                        "used; cosine of logits is not scale-free)")
    verdict.add_argument("--noise-mean-kl", type=_number_at_least(0.0), default=None,
                        help="replayed cases: a case drifts when the mean KL of its steps is above this "
                        "(default: not used; `calibrate` measures it)")
    verdict.add_argument("--noise-mean-kl-steps", type=_number_at_least(1.0), default=None,
                        help="the number of steps --noise-mean-kl holds for; a case of n steps gets it times "
                        "sqrt(this / n), at most --noise-kl (default 1; `calibrate` measures it)")
    calibration = parser.add_argument_group("our additions: calibration")
    calibration.add_argument("--calibrate", action="store_true",
                        help="the same as `logitsdump calibrate` with these folders: measure them as a "
                        "known-healthy pair and write the tolerances file (no verdict files)")
    calibration.add_argument("--safety-factor", type=_number_at_least(1.0), default=None,
                        help="--calibrate: each tolerance is this times the 0.99 quantile of the spread (default 2)")
    add_log_level(parser)
    parser.set_defaults(handler=_run_compare)


def _add_calibrate_parser(subparsers) -> None:
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
    parser.add_argument("--safety-factor", type=_number_at_least(1.0), default=None,
                        help="each tolerance is this times the quantile of the spread (default 2)")
    parser.add_argument("--quantile", type=_number_at_least(0.5, 1.0), default=None,
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

    _print_lines(after_compare(summary.cases_json_path.parent))
    return 0


# ---- demo -------------------------------------------------------------------------------------


def _add_demo_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the whole flow on the embedded tiny model (fp32 = golden, bf16 = under test), offline, on the CPU",
        description="Run eval, bcanalyze, dump (the device under test replaying golden), compare and report on "
        "the embedded tiny Llama, fp32 standing for the golden device and bf16 for the device under test, on "
        "four sample tasks; offline, on the CPU. The commands it ran are written to commands.sh in its folder: "
        "a template for your own two devices (docs/workflow.md).",
    )
    parser.add_argument(
        "-o", "--output-dir", "--workdir", dest="workdir", default=None,
        help="new or empty folder for everything (default: ./logitsdump-demo/<time>)",
    )
    parser.add_argument(
        "--no-replay",
        action="store_true",
        help="dump both devices free-running (msit's way) instead of replaying the golden tokens on the test side",
    )
    parser.add_argument("--control", choices=(*CONTROL_KINDS, "none"), default="impl",
                        help="the golden side's control arm, compare's noise reference (default impl: bf16 through "
                        "the other attention implementation; none: judge against the dtype's default alone)")
    add_log_level(parser)
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from logitsdump.demo.run import DemoOptions, run_demo

    control = None if args.control == "none" else args.control
    run_demo(DemoOptions(workdir=args.workdir, replay=not args.no_replay, control=control))
    return 0


# ---- report -----------------------------------------------------------------------------------


def _add_report_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML page (and a terminal summary) of a compare run",
        description="Read a compare output (its folder, whose newest run is taken, or its "
        "logits_cmp_res_<ts>.csv / logits_cmp_cases_<ts>.json) and write one HTML file with no "
        "network access: overview, sortable table of cases, and per case the aligned texts, plots "
        "and top-k candidates at the divergence.",
    )
    parser.add_argument("compare_output", metavar="COMPARE_OUTPUT", nargs="+",
                        help="compare output folder, or one of its result files; several (e.g. one per task) "
                        "make one page")
    add_output_dir(parser, None, "the compare output's folder; the page is DIR/report.html, or give a file "
                   "name ending in .html")
    parser.add_argument("--topk", type=positive_int, default=None,
                        help="candidates listed at the divergence step (default: compare's --topk, at most 20)")
    parser.add_argument("--triage", nargs="+", default=(), metavar="FILE",
                        help="probe_<ts>.json / ablation_<ts>.json of `logitsdump probe` / `ablate`, shown in the "
                        "set-up-or-numerics section")
    parser.add_argument("--localize", metavar="DIR", default=None,
                        help="a `logitsdump localize judge` output folder: add its section per localised case")
    add_log_level(parser)
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from logitsdump.fsutil import check_can_write, check_path_fits
    from logitsdump.report import load_compares, print_summary, write_report
    from logitsdump.report.html import names_a_page

    for source in args.compare_output:  # every path, before any work
        check_path_fits(source, "COMPARE_OUTPUT")
    if args.output_dir is not None:
        out = Path(args.output_dir)
        page = names_a_page(out)
        check_can_write(out.parent if page else out, "-o/--output-dir")
        if page:
            check_path_fits(out, "-o/--output-dir")
    localized = None
    if args.localize is not None:
        from logitsdump.localize.outputs import read_document

        localized = read_document(args.localize)
    result = load_compares(args.compare_output)
    from logitsdump.report.triage import load_evidence

    evidence = load_evidence(result, args.triage)
    path = write_report(result, args.output_dir, topk=args.topk, triage=evidence, localized=localized)
    print_summary(result, triage=evidence)
    print(f"report: {path}")
    from logitsdump.next_steps import after_report

    _print_lines(after_report(path))
    return 0


# ---- examples ---------------------------------------------------------------------------------


def _add_examples_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "examples",
        help="copy the embedded tiny model, sample datasets and YAML files into a folder",
        description="Copy the embedded tiny Llama (model/), the sample datasets (datasets/), and the model, task "
        "and tolerances files (configs/) into a new or empty folder; the YAML files use paths relative to "
        "themselves, so the copy runs where it is. docs/workflow.md uses it on both devices.",
    )
    parser.add_argument("directory", nargs="?", default=None,
                        help="destination folder (created; must be empty if it exists)")
    parser.add_argument("-o", "--output-dir", dest="output_dir", default=None, metavar="DIR",
                        help="the destination folder, as the positional argument")
    add_log_level(parser)
    parser.set_defaults(handler=_run_examples)


def _run_examples(args: argparse.Namespace) -> int:
    from logitsdump.demo.examples import copy_examples

    if (args.directory is None) == (args.output_dir is None):
        raise UsageError("give the destination folder once: `logitsdump examples DIR` or `-o DIR`")
    folder = copy_examples(args.directory or args.output_dir)
    print(f"examples written to {folder}")
    print("try: " + shlex.join([
        "logitsdump", "eval", "--model_config_path", f"{folder}/configs/model/tiny_llama_fp32.yaml",
        "--task_config_path", f"{folder}/configs/task/boolq.yaml", "--output_dir", f"{folder}/outputs",
        "--save_debug_enable",
    ]))
    return 0


# ---- the tree ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logitsdump",
        description="Tell a cross-device precision bug from numerical noise: eval, bcanalyze, dump, "
        "compare, report (msit/modeltest compatible).",
    )
    parser.add_argument("--version", action="version", version=f"logitsdump {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_eval_parser(subparsers)
    _add_bcanalyze_parser(subparsers)
    _add_dump_parser(subparsers)
    _add_compare_parser(subparsers)
    _add_calibrate_parser(subparsers)
    _add_report_parser(subparsers)
    _add_demo_parser(subparsers)
    _add_examples_parser(subparsers)
    from logitsdump.triage import commands as triage_commands  # preflight, probe, ablate

    triage_commands.add_parsers(subparsers)
    from logitsdump.cli_examples import add_examples

    add_examples(subparsers)
    from logitsdump.localize.command import add_localize_parser

    add_localize_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    level = getattr(args, "log_level", "info")
    setup_logging(level)
    try:
        with terminate_like_interrupt():  # SIGTERM: the same one line as Ctrl-C, exit 143
            return handler(args)
    except UserError as err:
        if level == "debug":
            get_logger().exception("error")
        print(f"logitsdump {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print(f"logitsdump {args.command}: interrupted by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"logitsdump {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno != errno.ENAMETOOLONG:  # a name no check caught: still one line, never a traceback
            raise
        from logitsdump.fsutil import shorten

        print(f"logitsdump {args.command}: error: {shorten(err.filename or '')}: {err.strerror}: choose a shorter "
              "path", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
