"""The triage subcommands: `preflight`, `probe` and `ablate` (parsing and calling only).

`cli.build_parser` adds them; their libraries are imported by the handlers (the model loads only in
`probe` and `ablate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from logitsdump.cli_flags import add_flag, add_golden_and_test, add_log_level, add_output_dir, positive_int
from logitsdump.errors import DataError

#: Where probe and ablate write their reports unless -o says otherwise.
DEFAULT_TRIAGE_DIR = "logitsdump_triage"


def add_parsers(subparsers: Any) -> None:
    _add_preflight(subparsers)
    _add_probe(subparsers)
    _add_ablate(subparsers)


# ---- preflight ---------------------------------------------------------------------------------


def _add_preflight(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="set-up or numerics? both sides' provenance side by side, each difference with its cause",
        description="Compare what the two sides fed the model (token ids, chat template, few-shot, limits, "
        "sampling, tokenizer and config files, versions, batch and parallel layout). Each side: a dump "
        "folder (manifest.jsonl), an evaluation's debug CSV, or its output folder (one debug CSV per task; "
        "tasks are paired by name). compare and bcanalyze run it too.",
    )
    add_golden_and_test(parser, "dump folder, debug CSV, or evaluation output folder")
    add_output_dir(parser, None, "none: print only; with -o, also preflight_<timestamp>.json")
    add_log_level(parser)
    parser.set_defaults(handler=_run_preflight)


def _run_preflight(args: argparse.Namespace) -> int:
    import json

    from logitsdump.fsutil import atomic_open, claim_stamped, ensure_writable_dir, timestamp
    from logitsdump.report.triage import format_preflight
    from logitsdump.triage.preflight import preflight

    pairs = side_pairs(args.golden_path, args.my_path)
    results = [preflight(golden, test) for golden, test in pairs]
    print("\n\n".join(format_preflight(r) for r in results))
    if args.output_dir is not None:
        folder = ensure_writable_dir(args.output_dir)
        with claim_stamped(folder, timestamp(), lambda tag: (f"preflight_{tag}.json",)) as (path,), \
                atomic_open(path, "w", encoding="utf-8", newline="") as handle:
            json.dump([r.to_dict() for r in results], handle, indent=1, default=str)
        print(f"preflight: {path}")
    return 0


def side_pairs(golden_path: str, test_path: str) -> list[tuple[Any, Any]]:
    """The sides to compare: one pair, or one per task two evaluation output folders share."""
    from logitsdump import store
    from logitsdump.triage.sides import find_debug_csvs, load_eval_csv, load_side

    golden, test = Path(golden_path), Path(test_path)
    for path, flag in ((golden, "-gp/--golden-path"), (test, "-mp/--my-path")):
        if not path.exists():
            raise DataError(f"{flag}: {path} does not exist")

    def many(path: Path) -> dict[str, Path]:
        if not path.is_dir() or (path / store.MANIFEST_NAME).is_file() or (path / store.PROVENANCE_NAME).is_file():
            return {}
        return find_debug_csvs(path)

    golden_tasks, test_tasks = many(golden), many(test)
    if len(golden_tasks) > 1 or len(test_tasks) > 1:
        shared = [task for task in golden_tasks if task in test_tasks]
        if not shared:
            raise DataError(f"-gp {golden} and -mp {test} share no task (golden: {', '.join(golden_tasks)}; test: "
                            f"{', '.join(test_tasks)})")
        return [(load_eval_csv(golden_tasks[t]), load_eval_csv(test_tasks[t])) for t in shared]
    return [(load_side(golden, "-gp/--golden-path"), load_side(test, "-mp/--my-path"))]


# ---- probe and ablate --------------------------------------------------------------------------


def _add_runner_flags(parser: argparse.ArgumentParser, batch_default: str) -> None:
    add_flag(parser, "model_config_path", required=True, help="the test side's model YAML file")
    add_flag(parser, "task_config_path", required=True, help="the task YAML file")
    parser.add_argument("-bcr", "--bad-case-result-csv", dest="bad_case_csv", required=True, metavar="CSV",
                        help="bcanalyze's bad-case CSV: the flipped cases")
    add_flag(parser, "batch_size", type=positive_int, default=None,
             help=f"the test evaluation's batch size (default: {batch_default})")
    add_flag(parser, "test_run", default=None, metavar="PATH",
             help="the test evaluation's debug CSV or output folder: its recorded provenance gives the batch "
             "size, parallel layout and engine settings")
    add_flag(parser, "device", default="auto", help="auto, cpu, cuda, cuda:N, npu, npu:N")
    add_flag(parser, "backend", type=str.lower, default=None,
             help="the framework, instead of the model YAML's requested_gpu_framework (huggingface, vllm)")
    add_output_dir(parser, DEFAULT_TRIAGE_DIR, f"./{DEFAULT_TRIAGE_DIR}")
    add_log_level(parser)


def _add_probe(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="repeat and batch probe of the flipped cases on the test side: run-to-run or batch nondeterminism?",
        description="Re-run each flipped case k times at batch size 1, then in the batch of N the evaluation "
        "put it in, and report which change across repeats or with their batch, with the spread of their "
        "logits (docs/triage.md names the switches that remove it).",
    )
    _add_runner_flags(parser, "the --test_run's, else 8")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs at batch size 1 (default 3)")
    parser.add_argument("--tokens", type=positive_int, default=8,
                        help="steps of logits compared per case (default 8)")
    parser.set_defaults(handler=_run_probe)


def _add_ablate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="configuration ablation of the flipped cases: which one changed feature makes the flip go away?",
        description="Re-run the flipped cases on the test side as recorded, then with one feature changed at a "
        "time where the backend has it (batch size 1, one process instead of torchrun, eager instead of graphs, "
        "prefix cache off, chunked prefill off, tensor parallel size 1), and report which change gives golden's "
        "verdict back.",
    )
    _add_runner_flags(parser, "the --test_run's, else 1")
    parser.set_defaults(handler=_run_ablate)


def _recorded_run(path: str | None) -> Any:
    if path is None:
        return None
    from logitsdump.triage.sides import load_side

    side = load_side(path, "--test_run")
    if side.run is None:
        raise DataError(f"--test_run {path}: no recorded provenance ({'; '.join(side.not_recorded)}); "
                        "give --batch_size instead")
    return side.run


def _write(report: Any, folder: str, prefix: str) -> Path:
    from logitsdump.fsutil import claim_stamped, ensure_writable_dir, timestamp
    from logitsdump.triage.probe import write_report

    out = ensure_writable_dir(folder)
    with claim_stamped(out, timestamp(), lambda tag: (f"{prefix}_{tag}.json",)) as (path,):
        write_report(report, path)
    return path


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


def _run_probe(args: argparse.Namespace) -> int:
    from logitsdump.fsutil import ensure_writable_dir
    from logitsdump.triage.ablation import RecordedSetup
    from logitsdump.triage.probe import run_probe
    from logitsdump.triage.rerun import Rerunner, read_flipped

    flipped = read_flipped(args.bad_case_csv)
    setup = RecordedSetup.from_run(_recorded_run(args.test_run), batch_size=args.batch_size)
    batch_size = args.batch_size or (setup.batch_size if args.test_run else 8)
    ensure_writable_dir(args.output_dir)  # before the model loads
    rerunner = Rerunner.from_files(args.model_config_path, args.task_config_path, args.device, args.backend)
    report = run_probe(rerunner, [c.key for c in flipped], repeats=args.repeats, batch_size=batch_size,
                       steps=args.tokens, progress=_say)
    print(f"probe: {report.summary()}")
    print(f"probe: {_write(report, args.output_dir, 'probe')}")
    return 0


def _run_ablate(args: argparse.Namespace) -> int:
    from logitsdump.fsutil import ensure_writable_dir
    from logitsdump.triage.ablation import RecordedSetup, run_ablation
    from logitsdump.triage.rerun import read_flipped

    flipped = read_flipped(args.bad_case_csv)
    setup = RecordedSetup.from_run(_recorded_run(args.test_run), batch_size=args.batch_size,
                               backend=args.backend)
    ensure_writable_dir(args.output_dir)
    report = run_ablation(args.model_config_path, args.task_config_path, flipped, setup, device=args.device,
                          progress=_say)
    print(f"ablation: {report.summary()}")
    print(f"ablation: {_write(report, args.output_dir, 'ablation')}")
    return 0
