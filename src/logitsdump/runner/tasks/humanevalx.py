"""HumanEval-X: function completion in C++, Go, Java, JavaScript and Python, scored pass@1 by
compiling and running each completion against the problem's tests with the real toolchain.

Files (modeltest's layout): `<root>/{lang}/data/data_{lang}_data_humaneval.jsonl` for each language
of `humaneval_x_datasets_selector` (all five when empty), rows with `task_id` (`CPP/N`, `Go/N`, ...),
`prompt`, `test` (and, for Go, `import` and `test_setup`). The index of a row is its position in its
language's file (the five-list BAD_CASE_LIST form); the key is its task id.

As modeltest does, the query is the language tag comment (`// language: C++`) on its own line, then
the prompt, right-stripped, then a newline; generation stops at EOS or when the completion closes the
function (one more `}` than `{`; for Python, a line that is not indented); the completion is cleaned
per language and joined to prompt and tests. Every program runs in a separate process in a fresh
temporary folder, with a timeout and resource limits (`runner.sandbox`). A language whose toolchain
is missing is reported once, and its cases are not judged (`passed=None`) rather than failed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logitsdump.errors import ConfigError, DataError
from logitsdump.logs import get_logger
from logitsdump.protocol import HUMANEVALX_PREFIXES
from logitsdump.runner import sandbox
from logitsdump.runner.config import TaskConfig
from logitsdump.runner.tasks.base import Case, Generation, Judgement, Tokenizer
from logitsdump.runner.tasks.common import read_jsonl

log = get_logger("humanevalx")

#: The language folders, in modeltest's order (= the order of BAD_CASE_LIST's five lists).
LANGUAGES = ("cpp", "go", "java", "js", "python")
#: folder -> task-id prefix (`CPP/3`, ...)
PREFIXES = dict(zip(LANGUAGES, HUMANEVALX_PREFIXES, strict=True))
#: The comment put before each prompt.
LANGUAGE_TAGS = {
    "cpp": "// language: C++",
    "go": "// language: Go",
    "java": "// language: Java",
    "js": "// language: JavaScript",
    "python": "# language: Python",
}
#: The executables each language needs.
TOOLCHAINS = {"cpp": ("g++",), "go": ("go",), "java": ("javac", "java"), "js": ("node",), "python": ()}
#: Seconds for each compile and each run (modeltest's value).
TIMEOUT_S = 30.0
FIELDS = ("task_id", "prompt", "test")

#: Lines put before a Python program, and the C++ headers added when the prompt lacks them (modeltest's).
PYTHON_IMPORTS = (
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import statistics", "import functools", "import hashlib",
    "import numpy", "import numpy as np", "import string", "from typing import *", "from collections import *",
)  # fmt: skip
CPP_INCLUDES = (
    "#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>", "#include<vector>",
    "#include<string>", "#include<climits>", "#include<cstring>", "#include<iostream>",
)  # fmt: skip
#: Go packages imported for the completion when it uses them and the test setup does not import them.
GO_PACKAGES = ("math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5")
PYTHON_END_WORDS = ("\ndef", "\nclass", "\nif", "\n#", "\nprint", "\nassert")


def dataset_path(lang: str) -> str:
    """The path of a language's file under the dataset root (also its subject_mapping key)."""
    return f"{lang}/data/data_{lang}_data_humaneval.jsonl"


def build_query(prompt: str, lang: str) -> str:
    """Language tag line, then the prompt right-stripped, then one newline."""
    return f"{LANGUAGE_TAGS[lang]}\n{prompt}".rstrip() + "\n"


def completion_finished(text: str, lang: str) -> bool:
    """modeltest's code-completion stopping rule on the text generated so far."""
    if lang == "python":
        if any(line.strip() and line[0] not in " \t" for line in text.split("\n")):
            return True
        return any(word in text for word in ("\ndef", "\nclass", "\nif", "\n#", "\nprint"))
    return text.count("{") + 1 == text.count("}")


def clean_completion(code: str, lang: str) -> str:
    """The completion as modeltest cleans it before joining it to the tests."""
    if lang == "python":
        for word in PYTHON_END_WORDS:
            if word in code:
                code = code[: code.rfind(word)]
        kept = []
        for line in code.split("\n"):
            if line.strip() and line[0] not in " \t":
                break
            kept.append(line)
        return "\n".join(kept)
    if lang == "java":
        main = code.find("public static void main")
        if main != -1:
            code = code[:main] + "}"
        if "}" in code:
            code = code[: code.rfind("}")] + "}"
        if code.count("{") + 1 == code.count("}"):
            code += "\n}"
        return code
    if lang == "go":
        for word in ("\n//", "\nfunc main("):
            if word in code:
                code = code[: code.rfind(word)]
    if "}" in code:  # go, cpp, js
        code = code[: code.rfind("}")] + "}"
    return code


def build_program(problem: Mapping[str, Any], lang: str, code: str) -> str:
    """The source file that is compiled and run: prompt (with its tag line), completion and tests."""
    prompt, test = problem["query_prompt"], problem["test"]
    if lang == "python":
        return "\n".join(PYTHON_IMPORTS) + "\n" + prompt + code + "\n" + test + "\n"
    if lang == "cpp":
        setup = "".join(include + "\n" for include in CPP_INCLUDES if include not in prompt)
        return setup + "\n" + prompt + code + "\n" + test
    if lang == "go":
        prompt = prompt.replace(str(problem.get("import", "")), "")
        setup = str(problem.get("test_setup", ""))
        extra = [f'"{pkg}"' for pkg in GO_PACKAGES if pkg not in setup and pkg.split("/")[-1] + "." in code]
        imports = ("import (\n" + "    ".join(p + "\n" for p in extra) + ")\n") if extra else ""
        return setup + "\n" + imports + prompt + code + "\n" + test
    return prompt + code + "\n" + test  # java, js


@dataclass(frozen=True)
class RunOutcome:
    """How one program fared: passed (None: not run, its toolchain is missing) and why."""

    passed: bool | None
    status: str


def missing_tools(lang: str) -> list[str]:
    """The executables `lang` needs that are not on PATH."""
    return [tool for tool in TOOLCHAINS[lang] if shutil.which(tool) is None]


def _tool_env(tools: list[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    folders = dict.fromkeys(str(Path(shutil.which(t) or t).resolve().parent) for t in tools)
    path = os.pathsep.join([*folders, os.defpath])
    return {"PATH": path, **(extra or {})}


def _failure(result: sandbox.SandboxResult, stage: str) -> RunOutcome:
    status = result.status
    return RunOutcome(False, f"{stage}: {status}" if stage else status)


def run_program(
    program: str, lang: str, task_id: str, timeout_s: float = TIMEOUT_S, go_module: Path | None = None
) -> RunOutcome:
    """Compile (where needed) and run `program` in a fresh temporary folder; never raises for what it does."""
    if lang == "python":
        marker = f"<<logitsdump-done-{secrets.token_hex(8)}>>"
        code = program + f"import sys as _sys\n_sys.__stdout__.write({marker!r})\n"
        result = sandbox.run_python(code, timeout_s, what="HumanEval-X")
        if result.passed and marker in result.stdout:
            return RunOutcome(True, "passed")
        return RunOutcome(False, result.status if not result.passed else "failed: exited before the tests ran")
    missing = missing_tools(lang)
    if missing:
        return RunOutcome(None, f"not run: {', '.join(missing)} not found")
    with tempfile.TemporaryDirectory(prefix=f"logitsdump-{lang}-") as folder:
        work = Path(folder)
        runner = _RUNNERS[lang]
        return runner(work, program, task_id, timeout_s, go_module)


def _run_cpp(work: Path, program: str, task_id: str, timeout_s: float, _: Path | None) -> RunOutcome:
    (work / "test.cpp").write_text(program, encoding="utf-8")
    gpp = shutil.which("g++") or "g++"
    argv = [gpp, "-std=c++11", "test.cpp", "-o", "a.out"]
    if task_id.split("/")[-1] == "162":  # the one problem that needs OpenSSL's md5 (as modeltest)
        argv += ["-lcrypto", "-lssl"]
    env = _tool_env(["g++"])
    built = sandbox.run_command(argv, work, timeout_s, env=env, memory_bytes=2 << 30)
    if not built.passed:
        return _failure(built, "compilation error")
    ran = sandbox.run_command([str(work / "a.out")], work, timeout_s, env=env)
    return RunOutcome(True, "passed") if ran.passed else _failure(ran, "")


def _run_go(work: Path, program: str, task_id: str, timeout_s: float, go_module: Path | None) -> RunOutcome:
    cache = Path(tempfile.gettempdir()) / "logitsdump-go-cache"  # shared by the runs: the sandbox may write it
    cache.mkdir(mode=0o700, exist_ok=True)
    extra = {"GOCACHE": str(cache), "GOPATH": str(work / "gopath"),
             "GOTOOLCHAIN": "local", "GO111MODULE": "auto", "GOFLAGS": "-mod=mod"}
    if go_module is not None:  # modeltest's go.mod + vendor/ (github.com/stretchr/testify for the real tests)
        shutil.copytree(go_module, work, dirs_exist_ok=True)
        extra["GOFLAGS"] = "-mod=vendor"
        extra["GO111MODULE"] = "on"
    (work / "main_test.go").write_text(program, encoding="utf-8")
    go = shutil.which("go") or "go"
    ran = sandbox.run_command([go, "test", f"-timeout={int(timeout_s)}s", "main_test.go"], work, timeout_s,
                              env=_tool_env(["go"], extra), memory_bytes=None, write=[cache])  # fmt: skip
    return RunOutcome(True, "passed") if ran.passed else _failure(ran, "")


def _run_java(work: Path, program: str, task_id: str, timeout_s: float, _: Path | None) -> RunOutcome:
    (work / "Main.java").write_text(program, encoding="utf-8")
    env = _tool_env(["javac", "java"])
    javac, java = shutil.which("javac") or "javac", shutil.which("java") or "java"
    built = sandbox.run_command([javac, "-J-Xmx512m", "Main.java"], work, timeout_s, env=env, memory_bytes=None)
    if not built.passed:
        return _failure(built, "compilation error")
    ran = sandbox.run_command([java, "-Xmx512m", "-ea", "-cp", str(work), "Main"], work, timeout_s,
                              env=env, memory_bytes=None)  # fmt: skip
    return RunOutcome(True, "passed") if ran.passed else _failure(ran, "")


def _run_js(work: Path, program: str, task_id: str, timeout_s: float, _: Path | None) -> RunOutcome:
    (work / "test.js").write_text(program, encoding="utf-8")
    node = shutil.which("node") or "node"
    ran = sandbox.run_command([node, "--max-old-space-size=512", "test.js"], work, timeout_s,
                              env=_tool_env(["node"]), memory_bytes=None)  # fmt: skip
    if not ran.passed:
        return _failure(ran, "")
    # as modeltest: any output means a failed assertion was reported
    if ran.stderr.strip() or ran.stdout.strip():
        return RunOutcome(False, "failed: " + (ran.stderr.strip() or ran.stdout.strip()).splitlines()[-1])
    return RunOutcome(True, "passed")


_RUNNERS: dict[str, Callable[[Path, str, str, float, Path | None], RunOutcome]] = {
    "cpp": _run_cpp, "go": _run_go, "java": _run_java, "js": _run_js,
}  # fmt: skip


_TASK_ID = re.compile(r"^([A-Za-z+]+)/(\d+)$")


class HumanEvalXTask:
    """Five languages, per-language indices and `CPP/N`-style keys; pass@1 by running the tests."""

    pass_labels: tuple[str, str] = ("True", "False")
    writes_bad_case_csv: bool = True

    def __init__(self) -> None:
        self._reported: set[str] = set()
        self._go_module: dict[str, Path | None] = {}

    def languages(self, config: TaskConfig) -> list[str]:
        """`humaneval_x_datasets_selector`, checked; all five languages when it is empty."""
        chosen = list(config.humaneval_x_datasets_selector) or list(LANGUAGES)
        unknown = [lang for lang in chosen if lang not in LANGUAGES]
        if unknown:
            raise ConfigError(
                f"task config {config.source or config.task_name}: humaneval_x_datasets_selector has "
                f"{', '.join(map(repr, unknown))}; expected some of {', '.join(LANGUAGES)}"
            )
        return [lang for lang in LANGUAGES if lang in chosen]  # modeltest's order, whatever the YAML's

    def subject(self, config: TaskConfig, lang: str) -> str:
        """The subject (file-name part) of a language: its subject_mapping key, else its file path."""
        path = dataset_path(lang)
        for key in config.subjects:
            if key == path or key.split("/")[0] == lang:
                return key
        return path

    def load_cases(self, config: TaskConfig, dataset_root: Path) -> list[Case]:
        """The rows of each selected language; index = position in that language's file.

        Refused in one line, before the model loads, where no sandbox can run the tests (`sandbox.require`)."""
        sandbox.require("HumanEval-X")
        cases: list[Case] = []
        go_module = dataset_root / "go" / "evaluation"
        self._go_module[str(dataset_root)] = go_module if (go_module / "go.mod").is_file() else None
        for lang in self.languages(config):
            path = dataset_root / dataset_path(lang)
            subject = self.subject(config, lang)
            what = f"HumanEval-X JSON lines ({lang}): " + ", ".join(FIELDS)
            for index, (line, row) in enumerate(read_jsonl(path, FIELDS, what)):
                for name in FIELDS:
                    if not isinstance(row[name], str):
                        raise DataError(f"{path}, line {line}: field {name!r} must be a string")
                match = _TASK_ID.match(row["task_id"])
                if match is None or match.group(1) != PREFIXES[lang]:
                    raise DataError(
                        f"{path}, line {line}: task_id must look like '{PREFIXES[lang]}/N', found {row['task_id']!r}"
                    )
                if lang == "go" and "test_setup" not in row:
                    raise DataError(f"{path}, line {line}: missing field 'test_setup' (Go rows need it)")
                query = build_query(row["prompt"], lang)
                problem = {
                    "lang": lang,
                    "query_prompt": f"{LANGUAGE_TAGS[lang]}\n{row['prompt']}",
                    "test": row["test"],
                    "import": row.get("import", ""),
                    "test_setup": row.get("test_setup", ""),
                    "go_module": str(self._go_module[str(dataset_root)] or ""),
                }
                reference = row.get("canonical_solution", "")
                cases.append(Case(index, subject, row["task_id"], query, reference, problem))
        return cases

    def finished(self, case: Case, text: str) -> bool:
        """Stop once the completion closes the function."""
        return completion_finished(text, str(case.data["lang"]))

    def judge(self, case: Case, generation: Generation, tokenizer: Tokenizer) -> Judgement:
        """Clean the completion, build the program and run it; test_result is the cleaned completion."""
        lang = str(case.data["lang"])
        code = clean_completion(generation.text, lang)
        missing = missing_tools(lang)
        if missing:
            if lang not in self._reported:
                self._reported.add(lang)
                log.warning("humanevalx: %s not found, so the %s cases are not judged (install the toolchain: "
                            "g++, golang, default-jdk-headless, nodejs)", " and ".join(missing), PREFIXES[lang])
            return Judgement(None, code, case.reference)
        go_module = Path(str(case.data["go_module"])) if case.data.get("go_module") else None
        outcome = run_program(build_program(case.data, lang, code), lang, case.key, go_module=go_module)
        if outcome.passed is False:
            log.debug("%s: %s", case.key, outcome.status)
        return Judgement(outcome.passed, code, case.reference)
