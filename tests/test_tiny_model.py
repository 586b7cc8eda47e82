"""The offline CLIP tokenizer of the tiny model, rebuilt from open_clip's BPE vocabulary."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kohya_1to2.environment.tiny_model import clip_vocab_and_merges, find_open_clip_vocab, is_complete


def require(module: str) -> None:
    """Skip at run time, not through `skipif`: conftest turns an integration test's skip into a CI failure."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (run ./bootstrap.sh)")


@pytest.mark.integration
def test_vocabulary_has_clip_size_and_special_tokens() -> None:
    require("open_clip")
    vocab, merges = clip_vocab_and_merges(find_open_clip_vocab())
    assert len(vocab) == 49408
    assert len(merges) == 49408 - 512 - 2
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    assert vocab["a</w>"] == 256 + ord("a") - ord("!")  # byte tokens, then their end-of-word forms


@pytest.mark.integration
def test_saved_tokenizer_encodes_like_clip(tmp_path: Path) -> None:
    require("open_clip")
    require("transformers")
    from transformers import CLIPTokenizer

    from kohya_1to2.environment.tiny_model import save_clip_tokenizer

    save_clip_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    ids = tokenizer("a photo of a cat")["input_ids"]
    # the well-known ids of openai/clip-vit-large-patch14 for this phrase
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.model_max_length == 77


def test_an_unfinished_build_is_not_reused(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    assert not is_complete(tmp_path)
    (tmp_path / ".complete").write_text("seed=1234\n")
    assert is_complete(tmp_path)
