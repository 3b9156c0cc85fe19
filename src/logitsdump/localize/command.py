"""The `logitsdump localize` subcommand: `record` (golden side), `replay` (test side), `judge`.

Only parsing and calling; `cli.build_parser` adds it. Heavy libraries are imported by the drivers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import UsageError, UserError


def add_localize_parser(subparsers) -> None:
    """Add `localize` and its three subcommands to the argparse tree."""
    from logitsdump.cli_flags import add_flag, add_log_level, add_output_dir

    parser = subparsers.add_parser(
        "localize",
        help="which layer and module of the device under test is wrong: each module fed golden's input "
        "(record on golden, replay on test, judge)",
        description="Localise precision-suspect cases to a layer and module by each module's own error: "
        "`record` on the golden device (golden's module inputs/outputs and the control arm's bands), "
        "`replay` on the device under test (each module fed golden's input), `judge` (verdicts, causal check, "
        "report). Only folders travel between the two machines (docs/localize.md).",
    )
    sub = parser.add_subparsers(dest="localize_command", metavar="STEP", required=True)

    rec = sub.add_parser("record", help="golden side: record the cases' module inputs/outputs and the control arm",
                         description="One prefill per case (prompt + golden's tokens before the focus step) on the "
                         "golden model, recording every candidate module's input and output, and the control arm "
                         "(this device in the test dtype, each module fed golden's input) that gives the bands.")
    source = rec.add_argument_group("which cases")
    source.add_argument("-c", "--compare-output", metavar="CMP", default=None,
                        help="compare's output folder or case JSON: its precision-suspect (or divergent) cases, at "
                        "the step it centres on (default source)")
    source.add_argument("--golden-dump", metavar="DIR", default=None,
                        help="the golden logits folder (its manifest has the tokens; default: the one compare used)")
    source.add_argument("--keys", default=None, help="comma-separated case keys instead of the suspect ones")
    source.add_argument("--step", type=_non_negative, default=None,
                        help="focus step for every case (default: compare's; without compare, the last dumped step)")
    add_flag(rec, "model_config_path", required=True, help="the golden model YAML (HF backend)")
    arms = rec.add_argument_group("the control arm (the bands)")
    arms.add_argument("--test-dtype", default=None,
                      help=f"comma-separated dtypes of the control arms, one per test dtype ({', '.join(DATA_TYPES)}; "
                      "default: the test dtype compare's manifests name, else bf16)")
    arms.add_argument("--control-attn", choices=("sdpa", "eager"), default=None,
                      help="the control arm's attention (default: golden's; the other one in golden's own dtype)")
    rec.add_argument("--keep", choices=("stats", "tensors"), default="stats",
                     help="stats (default): what feeding and judging every module needs; tensors: also the ops "
                     "(projections) of the layers in --layers")
    rec.add_argument("--layers", default=None, help="--keep tensors: comma-separated layer indices (the top sites)")
    _common(rec, add_flag)
    add_output_dir(rec, "./localize_record", "./localize_record")
    add_log_level(rec)
    rec.set_defaults(handler=_run_record)

    rep = sub.add_parser("replay", help="test side: each recorded module fed golden's input on the model under test",
                         description="Replay a record on the model under test: its plain prefill, every candidate "
                         "fed golden's recorded input (layers, then modules), the provisional culprit and its "
                         "necessity check (its own error taken out).")
    rep.add_argument("--record", required=True, metavar="DIR", help="the record folder from the golden side")
    add_flag(rep, "model_config_path", required=True, help="the model YAML under test (HF backend)")
    rep.add_argument("--attn", choices=("sdpa", "eager"), default=None,
                     help="attention implementation (default: transformers' choice)")
    rep.add_argument("--decoys", action="store_true",
                     help="also check two wrong candidates beside each culprit (the next layer's same module, the "
                     "next module of its layer): the judge's causal check should refute them")
    _common(rep, add_flag)
    add_output_dir(rep, "./localize_replay", "./localize_replay")
    add_log_level(rep)
    rep.set_defaults(handler=_run_replay)

    jud = sub.add_parser("judge", help="verdicts per case and run, causal check, JSON/CSV/HTML and msprobe hand-off",
                         description="Judge a record and its replay: culprit(layer, module[, head]), diffuse, none or "
                         "inconclusive per case and for the run. With the golden model YAML (on the golden side) "
                         "also the sufficiency check and the head of an attention culprit.")
    jud.add_argument("--record", required=True, metavar="DIR", help="the record folder")
    jud.add_argument("--replay", required=True, metavar="DIR", help="the replay folder from the test side")
    add_flag(jud, "model_config_path", default=None,
             help="the golden model YAML: run the sufficiency check and the head split (default: verdicts only)")
    jud.add_argument("--band", metavar="DIR", default=None,
                     help="a replay of the same record by a known-healthy test set-up: its errors are the bands "
                     "(instead of the control arm)")
    add_flag(jud, "device", default="auto", help="auto (CUDA, else NPU, else CPU), cpu, cuda[:N], npu[:N]")
    add_output_dir(jud, "./localize_output", "./localize_output")
    add_log_level(jud)
    jud.set_defaults(handler=_run_judge)


def _common(parser: argparse.ArgumentParser, add_flag) -> None:
    add_flag(parser, "device", default="auto", help="auto (CUDA, else NPU, else CPU), cpu, cuda[:N], npu[:N]")
    parser.add_argument("-e", "--exec", dest="exec_command", default=None,
                        help="refused: localize hooks the model in this process, so it cannot run a model inside "
                        "another program (modeltest, torchrun, vLLM); it writes the msprobe hand-off instead")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, found {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, found {value}")
    return value


def _ints(text: str | None, flag: str) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected comma-separated integers") from None


def _refuse_exec(args: argparse.Namespace, steps: list[int]) -> None:
    from logitsdump.localize.files import write_json
    from logitsdump.localize.models import HANDOFF_NAME, refusal
    from logitsdump.localize.msprobe import whole_model_config

    if args.exec_command is None:
        return
    out = Path(args.output_dir)
    from logitsdump.fsutil import ensure_writable_dir

    ensure_writable_dir(out)
    write_json(out / HANDOFF_NAME, whole_model_config(steps))
    raise UsageError(refusal(f"a model inside another program (-e {args.exec_command.split()[0]!r}: modeltest, "
                             "torchrun, vLLM)", str(out / HANDOFF_NAME)))


def _run_record(args: argparse.Namespace) -> int:
    from logitsdump.localize.run_record import RecordOptions, record

    dtypes = tuple(d.strip().lower() for d in (args.test_dtype or "").split(",") if d.strip())
    bad = [d for d in dtypes if d not in DATA_TYPES]
    if bad:
        raise UsageError(f"--test-dtype {bad[0]!r}: use {', '.join(DATA_TYPES)}")
    if args.exec_command is not None:
        from logitsdump.localize.cases import select_cases

        try:
            steps = [c.focus_step for c in select_cases(compare_output=args.compare_output,
                                                        golden_dump=args.golden_dump, step=args.step).cases]
        except UserError:  # the refusal comes whatever the cases are
            steps = []
        _refuse_exec(args, steps)
    keys = tuple(k.strip() for k in (args.keys or "").split(",") if k.strip())
    record(RecordOptions(
        model_config_path=args.model_config_path, output_dir=args.output_dir, compare_output=args.compare_output,
        golden_dump=args.golden_dump, keys=keys, step=args.step, test_dtypes=dtypes, control_attn=args.control_attn,
        keep=args.keep, ops_at=_ints(args.layers, "--layers"), device=args.device,
    ))
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    from logitsdump.localize.run_replay import ReplayOptions, replay

    if args.exec_command is not None:
        from logitsdump.localize.files import RecordFolder

        folder = RecordFolder(args.record)
        _refuse_exec(args, [folder.case(i).focus_step for i in folder.ids])
    replay(ReplayOptions(record=args.record, model_config_path=args.model_config_path, output_dir=args.output_dir,
                         device=args.device, attn=args.attn, decoys=args.decoys))
    return 0


def _run_judge(args: argparse.Namespace) -> int:
    from logitsdump.localize.run_judge import JudgeOptions, judge

    judge(JudgeOptions(record=args.record, replay=args.replay, output_dir=args.output_dir,
                       model_config_path=args.model_config_path, band=args.band, device=args.device))
    return 0
