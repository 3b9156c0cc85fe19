"""The hand-off for op-level work: a msprobe `config.json` scoped to the culprit's modules and step.

msprobe (Ascend's PrecisionDebugger, `mindstudio-probe`) reads a config with `task` ("statistics" or
"tensor"), `dump_path`, `rank` ([] for one card), `step` (the `debugger.step()` counts to dump: in a
generation loop that steps once per token, the focus step), `level` ("L0" modules, "L1" torch APIs, "mix"
both) and, under the task's name, `scope` (two module or API names: dump what runs between the start of the
first and the end of the second), `list` and `data_mode`. Module names are
`Module.<path in the model>.<class>.forward.<call>`, the model being the one given to
`debugger.start(model=...)`. A culprit gets a `mix`-level tensor dump of its modules only (every API
inside them, for msprobe's compare); a refusal (a runtime localize cannot hook) gets an `L0` statistics
dump of every module at the cases' steps. Pure; no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def module_scope_name(path: str, cls: str, call: int = 0) -> str:
    """msprobe's name of a module's forward call."""
    return f"Module.{path}.{cls}.forward.{call}"


def culprit_config(modules: Sequence[tuple[str, str]], step: int, dump_path: str = "./msprobe_dump") -> dict[str, Any]:
    """A tensor dump of the culprit's modules (path, class), from the first one's start to the last one's end,
    at `step`, with every API they call (`mix`)."""
    if not modules:
        raise ValueError("a culprit config needs at least one module")
    first, last = modules[0], modules[-1]
    return {
        "task": "tensor",
        "dump_path": dump_path,
        "rank": [],
        "step": [int(step)],
        "level": "mix",
        "tensor": {
            "scope": [module_scope_name(*first), module_scope_name(*last)],
            "list": [],
            "data_mode": ["all"],
        },
    }


def whole_model_config(steps: Sequence[int], dump_path: str = "./msprobe_dump") -> dict[str, Any]:
    """A module-level statistics dump of the whole model at `steps` (nothing localised yet)."""
    return {
        "task": "statistics",
        "dump_path": dump_path,
        "rank": [],
        "step": sorted({int(s) for s in steps}),
        "level": "L0",
        "statistics": {"scope": [], "list": [], "data_mode": ["all"], "summary_mode": "statistics"},
    }
