"""Optional model extras (dghs-imgutils' ONNX models) found offline: the package, onnxruntime, and every model
file in the local Hugging Face cache. Nothing here touches the network; a missing part is a sentence, not a
download."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path


def missing_part(distribution: str, module: str, extra: str, files: Sequence[tuple[str, str]],
                 cache_dir: Path | None = None) -> str | None:
    """Why the extra cannot run offline (a clause naming what is missing and how to get it), or None.

    `files` are (repo, path in repo); the cache is `cache_dir`, else $HF_HUB_CACHE, else huggingface_hub's
    default. onnxruntime is checked apart: imgutils pip-installs it on first import when it is missing."""
    install = f"pip install '.[{extra}]'"
    if importlib.util.find_spec(module) is None:
        return f"{distribution} is not installed ({install})"
    if importlib.util.find_spec("onnxruntime") is None:
        return f"{distribution} is installed but onnxruntime is not ({install})"
    try:
        from huggingface_hub import try_to_load_from_cache  # reason: a dependency of imgutils, only with it
    except ImportError:
        return f"{distribution} is installed but huggingface_hub is not"
    cache = cache_dir or (Path(os.environ["HF_HUB_CACHE"]) if os.environ.get("HF_HUB_CACHE") else None)
    missing = []
    for repo, filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache) if cache else None)
        if not isinstance(found, str) or not Path(found).is_file():
            missing.append(f"{repo}/{filename}")
    if missing:
        return (f"{distribution} is installed, but its models are not in the local Hugging Face cache "
                f"({', '.join(missing)}) and nothing is downloaded")
    return None
