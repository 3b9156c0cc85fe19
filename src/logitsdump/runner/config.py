"""modeltest's model and task YAML files, read into frozen dataclasses.

All problems of one file are collected and reported together in one message.
Unknown keys are ignored (as modeltest does) but logged at debug level.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from logitsdump.dtypes import DATA_TYPES
from logitsdump.errors import ConfigError
from logitsdump.fsutil import CONFIG_MAX_BYTES, check_regular, read_input_text
from logitsdump.logs import get_logger

log = get_logger("config")

#: requested_gpu_framework values (backends.REGISTRY); Server: a deployed server over HTTP (backends/openai.py)
FRAMEWORKS = ("Huggingface", "Vllm", "Server")


@dataclass(frozen=True)
class ModelConfig:
    """A model YAML file (modeltest §2.1)."""

    model_name: str = ""
    model_path: str = ""
    model_type: str = ""
    data_type: str = "fp16"
    use_chat_template: bool = False
    max_position_embedding: int = -1
    block_size: int = 128
    requested_gpu_framework: str = "Huggingface"
    trust_remote_code: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    #: Our extension: how tokens are chosen (`sampling.GENERATION_KEYS`); empty: greedy, as modeltest.
    generation: Mapping[str, Any] = field(default_factory=dict)
    #: our extension: where the model is served, for `requested_gpu_framework: Server` (backends/openai.py)
    server: Mapping[str, Any] = field(default_factory=dict)
    #: Our extension (HF backend): transformers' attention implementation (`sdpa`, `eager`, ...); '' = its default.
    attn_implementation: str = ""
    source: str = ""


@dataclass(frozen=True)
class TaskConfig:
    """A task YAML file (modeltest §2.2)."""

    task_type: str = "precision"
    task_name: str = ""
    hf_dataset_path: str = ""
    om_dataset_path: str = ""
    local_dataset_path: str = ""
    prompt: str = ""
    choices: tuple[str, ...] = ()
    shots: int = 0
    requested_max_input_length: int = 256
    requested_max_output_length: int = 256
    need_logits: bool = False
    need_truncate_input: bool = False
    metric: Mapping[str, Any] = field(default_factory=lambda: {"metric_type": "acc"})
    metadata: Mapping[str, Any] = field(default_factory=dict)
    humaneval_x_datasets_selector: tuple[str, ...] = ()
    subject_mapping: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def subjects(self) -> list[str]:
        """Sub-dataset keys in file order (this order defines the global index)."""
        return list(self.subject_mapping)


def _load_yaml_mapping(path: str | Path, what: str) -> tuple[Path, dict[str, Any]]:
    import yaml

    file = Path(path)
    check_regular(file, f"{what} file", error=ConfigError)
    if not file.is_file():
        raise ConfigError(f"{what} file not found: {file}")
    text = read_input_text(file, f"{what} file", CONFIG_MAX_BYTES, error=ConfigError)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{what} file {file} is not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read {what} file {file}: {err}") from None
    except RecursionError:
        raise ConfigError(f"{what} file {file} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} file {file} must hold a mapping of keys, found {type(data).__name__}")
    if _expands_beyond(data, MAX_YAML_VALUES):
        raise ConfigError(
            f"{what} file {file} holds more than {MAX_YAML_VALUES} values once its aliases (*name) are "
            "expanded: refused (a 'billion laughs' file would exhaust memory)"
        )
    return file, data


#: Values a config file may hold with its YAML aliases expanded (printing or str() of a value expands them).
MAX_YAML_VALUES = 100_000


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether `data`, walked with shared (aliased) parts counted each time they appear, exceeds `limit`."""
    stack, count = [data], 0
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


class _Checker:
    """Collects the type problems of one file, to report them all at once."""

    def __init__(self, file: Path, data: Mapping[str, Any]) -> None:
        self.file, self.data, self.problems = file, data, []

    def get(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = self.data.get(key, default)
        if value is None:
            return default
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        bad_bool = isinstance(value, bool) and kind is int
        if bad_bool or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.problems.append(f"'{key}' must be {names}, found {value!r}")
            return default
        return value

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def raise_if_any(self, what: str) -> None:
        if self.problems:
            raise ConfigError(f"{what} file {self.file}: " + "; ".join(self.problems))


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and check a model YAML file."""
    file, data = _load_yaml_mapping(path, "model config")
    if data.get("mm_model"):  # modeltest too treats an empty or null mm_model as a text model
        name = data.get("model_name") or file.stem
        raise ConfigError(
            f"model config {file}: not supported yet: multimodal model {name} (its 'mm_model' section; "
            "logitsdump eval runs text-only models)"
        )
    check = _Checker(file, data)
    data_type = str(check.get("data_type", str, "fp16")).lower()
    if data_type not in DATA_TYPES:
        check.fail(f"'data_type' must be one of {', '.join(DATA_TYPES)}, found {data.get('data_type')!r}")
    framework = check.get("requested_gpu_framework", str, "Huggingface")
    if framework not in FRAMEWORKS:
        check.fail(f"'requested_gpu_framework' must be one of {', '.join(FRAMEWORKS)}, found {framework!r}")
    env = check.get("env", dict, {})
    env = {str(k): str(v) for k, v in env.items()}
    from logitsdump.runner.sampling import check_generation

    generation = check_generation(check.get("generation", dict, {}), check.fail)
    config = ModelConfig(
        model_name=check.get("model_name", str, ""),
        model_path=check.get("model_path", str, ""),
        model_type=check.get("model_type", str, ""),
        data_type=data_type,
        use_chat_template=check.get("use_chat_template", bool, False),
        max_position_embedding=check.get("max_position_embedding", int, -1),
        block_size=check.get("block_size", int, 128),
        requested_gpu_framework=framework,
        trust_remote_code=check.get("trust_remote_code", bool, False),
        env=env,
        generation=generation,
        server=dict(check.get("server", dict, {})),
        attn_implementation=check.get("attn_implementation", str, ""),
        source=str(file),
    )
    if not config.model_path:
        check.fail("'model_path' is required (the folder of the model's weights)")
    check.raise_if_any("model config")
    _log_unknown(file, data, ModelConfig, {"mm_model"})
    return config


def load_task_config(path: str | Path) -> TaskConfig:
    """Read and check a task YAML file."""
    file, data = _load_yaml_mapping(path, "task config")
    check = _Checker(file, data)
    task_type = check.get("task_type", str, "precision")
    if task_type != "precision":
        check.fail(f"'task_type' must be precision, found {task_type!r}")
    task_name = check.get("task_name", str, "")
    if not task_name:
        check.fail("'task_name' is required")
    metric = check.get("metric", dict, {"metric_type": "acc"})
    subject_mapping = check.get("subject_mapping", dict, {})
    subject_mapping = {str(k): v for k, v in subject_mapping.items()}
    choices = check.get("choices", list, [])
    selector = check.get("humaneval_x_datasets_selector", list, [])
    config = TaskConfig(
        task_type=task_type,
        task_name=task_name,
        hf_dataset_path=check.get("hf_dataset_path", str, ""),
        om_dataset_path=check.get("om_dataset_path", str, ""),
        local_dataset_path=check.get("local_dataset_path", str, ""),
        prompt=check.get("prompt", str, ""),
        choices=tuple(str(c) for c in choices),
        shots=check.get("shots", int, 0),
        requested_max_input_length=check.get("requested_max_input_length", int, 256),
        requested_max_output_length=check.get("requested_max_output_length", int, 256),
        need_logits=check.get("need_logits", bool, False),
        need_truncate_input=check.get("need_truncate_input", bool, False),
        metric=metric,
        metadata=check.get("metadata", dict, {}),
        humaneval_x_datasets_selector=tuple(str(s) for s in selector),
        subject_mapping=subject_mapping,
        source=str(file),
    )
    if config.shots < 0:
        check.fail(f"'shots' must be >= 0, found {config.shots}")
    if config.requested_max_output_length <= 0:
        check.fail(f"'requested_max_output_length' must be > 0, found {config.requested_max_output_length}")
    if config.requested_max_input_length <= 0:
        check.fail(f"'requested_max_input_length' must be > 0, found {config.requested_max_input_length}")
    check.raise_if_any("task config")
    _log_unknown(file, data, TaskConfig, set())
    return config


def _log_unknown(file: Path, data: Mapping[str, Any], cls: type, also_known: set[str]) -> None:
    unknown = sorted(set(data) - set(cls.__dataclass_fields__) - also_known - {"source"})
    if unknown:
        log.debug("%s: ignoring unknown keys %s", file, ", ".join(unknown))


def resolve_dataset_root(task: TaskConfig) -> Path:
    """The dataset folder: `local_dataset_path`, relative to the task YAML's folder or the
    current directory, else `../<path>` (as modeltest tries)."""
    from logitsdump.errors import DataError

    raw = task.local_dataset_path
    if not raw:
        raise DataError(f"task config {task.source}: 'local_dataset_path' is required")
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path("..") / path]
    found, tried = _first_folder(candidates, path, task.source)
    if found is None:
        raise DataError(f"dataset folder {raw!r} of {task.source or 'the task config'} not found (tried {tried})")
    return found


def resolve_model_path(config: ModelConfig) -> Path:
    """`model_path` as given (relative to the current directory), else relative to the YAML file."""
    path = Path(config.model_path).expanduser()
    found, tried = _first_folder([path], path, config.source)
    if found is None:
        raise ConfigError(
            f"model_path {config.model_path!r} of {config.source or 'the model config'} is not a folder "
            f"(tried {tried})"
        )
    return found


def _first_folder(candidates: list[Path], path: Path, yaml_file: str) -> tuple[Path | None, str]:
    """The first existing folder of `candidates`, then of `path` relative to the YAML file's folder;
    and the list tried, for the error message."""
    if not path.is_absolute() and yaml_file:
        candidates = [*candidates, Path(yaml_file).parent / path]
    found = next((c for c in candidates if c.is_dir()), None)
    return found, ", ".join(str(c) for c in candidates)


#: A model folder holds this file (transformers and vLLM read it) ...
MODEL_CONFIG_FILE = "config.json"
#: ... and at least one of these tokenizer files.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_model_folder(config: ModelConfig) -> Path:
    """`model_path` resolved, refused in one line unless it holds a model's config and tokenizer files and
    weights that agree with the config (`model_files`; checked before anything loads: transformers' own
    message for a stray folder is cut off and unclear, and it allocates what config.json says first)."""
    folder = resolve_model_path(config)
    missing = []
    if not (folder / MODEL_CONFIG_FILE).is_file():
        missing.append(MODEL_CONFIG_FILE)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files (" + ", ".join(TOKENIZER_FILES) + ")")
    if missing:
        raise ConfigError(
            f"model_path {folder} of {config.source or 'the model config'} is not a model folder: no "
            + " and no ".join(missing)
        )
    from logitsdump.runner.model_files import check_model_files

    check_model_files(folder)  # a truncated file or a config.json of another model: one line, nothing allocated
    return folder
