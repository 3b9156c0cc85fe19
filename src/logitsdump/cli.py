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

from logitsdump import __version__, cli_compare, cli_dump
from logitsdump.cli_flags import add_flag, add_golden_and_test, add_log_level, add_output_dir, positive_int, print_lines
from logitsdump.errors import EXIT_FAILURE, UsageError, UserError
from logitsdump.logs import get_logger, setup_logging
from logitsdump.procguard import Terminated, terminate_like_interrupt
from logitsdump.protocol import CONTROL_KINDS

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
        print_lines(after_eval(result.layout.debug_file if options.save_debug else None))
    return 0


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

        print_lines(after_bcanalyze(result.output_path.parent))
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

    print_lines(after_report(path))
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
    cli_dump.add_parsers(subparsers)
    cli_compare.add_parsers(subparsers)
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
