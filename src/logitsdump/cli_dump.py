"""The `dump` subcommand: parsing and calling only (`cli.build_parser` adds them).

`dump -e CMD -bcr BAD.csv` re-infers the bad cases through a runner (modeltest, torchrun or our eval);
`dump --from-samples` replays an lm-eval samples file in this process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from logitsdump.cli_flags import (
    add_flag,
    add_log_level,
    positive_int,
    print_lines,
)
from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import UsageError
from logitsdump.protocol import CONTROL_KINDS, REPLAY_MODES


def add_parsers(subparsers: Any) -> None:
    """Add `dump` to the argparse tree."""
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
    print_lines(result.summary_lines())
    from logitsdump.launch import split_command
    from logitsdump.next_steps import after_dump

    root = Path(output_dir_of(split_command(exec_command)) or ".")
    print_lines(after_dump([f.path for f in result.folders], args.replay, root))
    return 0


def _bad_case_csv(given: str) -> str:
    """`-bcr`: the file, or the newest bcanalyze result of a folder, said in one line."""
    from logitsdump.badcase import resolve_bad_case_csv

    path, found = resolve_bad_case_csv(given)
    if path != Path(given):
        print(f"-bcr {given}: the newest of its {found} bad-case file(s): {path}", flush=True)
    return str(path)


def _run_samples_dump(args: argparse.Namespace) -> int:
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
    print_lines(result.summary_lines())
    from logitsdump.next_steps import after_dump

    print_lines(after_dump([f.path for f in result.folders], args.replay, Path(args.output_dir or ".")))
    return 0
