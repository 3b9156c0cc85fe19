"""One example per command, shown at the end of its `--help` (the paths are those of docs/workflow.md:
`logitsdump examples ex` writes ex/, the runs write out/)."""

from __future__ import annotations

import argparse

_TEST_LOGITS = "out/data/CPU/precision_test/boolq/bf16/tiny_llama/logits"

#: command -> its example (one command line).
EXAMPLES = {
    "eval": "logitsdump eval --model_config_path ex/configs/model/tiny_llama_fp32.yaml "
            "--task_config_path ex/configs/task/boolq.yaml --batch_size 16 --tp 1 --output_dir out "
            "--save_debug_enable --device cpu",
    "bcanalyze": "logitsdump bcanalyze -gp golden_debug_info.csv "
                 "-mp out/debug/CPU/precision_test/boolq/bf16/tiny_llama/boolq_pa_batch16_tp1_debug_info.csv "
                 "-o bad_cases",
    "dump": 'logitsdump dump -e "logitsdump eval --model_config_path ex/configs/model/tiny_llama_bf16.yaml '
            '--task_config_path ex/configs/task/boolq.yaml --batch_size 1 --tp 1 --device cpu" -bcr bad_cases '
            "-tr 10 -o out --replay golden_logits",
    "compare": f"logitsdump compare -gp golden_logits -mp {_TEST_LOGITS} -o compare "
               "--tolerances ex/configs/tolerances/tiny_llama_bf16.json",
    "calibrate": "logitsdump calibrate -gp healthy/golden_logits -mp healthy/test_logits "
                 "--tolerances-file my_model_bf16.json",
    "report": "logitsdump report compare -o report.html",
    "demo": "logitsdump demo -o demo-run",
    "examples": "logitsdump examples ex",
}


class ExampleFormatter(argparse.HelpFormatter):
    """argparse's formatter, but the epilog (the example) is printed as written, not re-wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("example"):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def add_examples(subparsers: argparse._SubParsersAction) -> None:
    """Set each subcommand's epilog to its example."""
    for name, parser in subparsers.choices.items():
        if name in EXAMPLES:
            parser.epilog = f"example (docs/workflow.md walks through the workflow):\n  {EXAMPLES[name]}"
            parser.formatter_class = ExampleFormatter
