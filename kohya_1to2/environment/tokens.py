"""CLIP token counts of captions, offline and without torch: the `tokenizers` library with the CLIP BPE
vocabulary rebuilt from open-clip-torch's file (the one `openai/clip-vit-large-patch14` uses; SDXL's second
tokenizer shares it), set up like transformers' CLIPTokenizerFast.

sd-scripts tokenizes each caption to `max_token_length + 2` tokens with BOS/EOS and truncates the rest
(strategy_sd.SdTokenizeStrategy: `max_length = max_token_length + 2`; 75 + 2 when unset), so a caption of
more than `max_token_length` tokens loses its tail silently; with shuffle_caption that is random tags.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from rich.text import Text

from kohya_1to2.configs.presets import load_preset
from kohya_1to2.configs.render import preset_value
from kohya_1to2.dataset.captions import group_caption
from kohya_1to2.dataset.scan import Problem
from kohya_1to2.environment.tiny_model import clip_vocab_and_merges, find_open_clip_vocab
from kohya_1to2.errors import SetupError
from kohya_1to2.kohya import options as opt
from kohya_1to2.models import CaptionRules, Character, CompositePlan, Job

SHOWN = 5
"""Captions of each kind named one by one (longest first); the rest are counted in one line."""

if TYPE_CHECKING:
    from rich.console import Console

DEFAULT_MAX_TOKENS = 75
"""sd-scripts' limit without max_token_length (CLIP's 77 minus BOS/EOS)."""

TokenCounter = Callable[[str], int]


@lru_cache(maxsize=1)
def clip_token_counter() -> TokenCounter | None:
    """Tokens of a text without BOS/EOS, as sd-scripts' CLIP tokenizer splits it; None without the training
    stack (`tokenizers` and open-clip-torch's vocabulary come with it, not with the wrapper)."""
    try:
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers  # training stack
    except ImportError:
        return None
    try:
        vocab, merges = clip_vocab_and_merges(find_open_clip_vocab())
    except SetupError:
        return None
    tokenizer = Tokenizer(models.BPE(
        vocab=vocab, merges=[tuple(m.split()) for m in merges], continuing_subword_prefix="",
        end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>",
    ))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def stage1_caption(tags: Sequence[str]) -> str:
    """The stage-1 caption as sd-scripts tokenizes it: the trigger first (in the file or as caption_prefix),
    tags re-joined with ", " (CLIP drops the spaces, so the count equals the file's own)."""
    return ", ".join(tags)


def caption_length_problems(
    characters: Sequence[Character], plans: Iterable[CompositePlan], rules: CaptionRules,
    max_tokens: int | None, count: TokenCounter | None = None,
) -> list[Problem]:
    """One warning per stage-1 image or composite whose caption exceeds `max_tokens`, with its exact count."""
    count = count or clip_token_counter()
    if count is None:
        return []
    limit = max_tokens or DEFAULT_MAX_TOKENS
    longer = "" if limit >= 225 else f", or {opt.MAX_TOKEN_LENGTH} = 225 (now {limit})"
    singles: list[tuple[int, Path]] = []
    for character in characters:
        for image in character.images:
            tokens = count(stage1_caption(image.tags))
            if tokens > limit:
                singles.append((tokens, image.caption_path or image.path))
    by_name = {character.name: character for character in characters}
    composites: list[tuple[int, Path]] = []
    for plan in plans:
        text = group_caption([by_name[m.character] for m in plan.members], plan.members, rules)
        tokens = count(text)
        if tokens > limit:
            composites.append((tokens, Path(f"composite {plan.index:06d} "
                                            f"({' + '.join(m.rel_key for m in plan.members)})")))
    return [
        *_listed(singles, "stage-1 caption", limit, "drop tags from the caption" + longer),
        *_listed(composites, "composite caption", limit,
                 "--dedupe-shared, --drop-solo or --max-tags-per-side N, or fewer tags in the source captions"
                 + longer),
    ]


def _listed(over: list[tuple[int, Path]], what: str, limit: int, fix: str) -> list[Problem]:
    """The longest few one by one, the rest counted in one line."""
    over = sorted(over, key=lambda item: (-item[0], str(item[1])))
    problems = [_too_long(label, what, tokens, limit, fix) for tokens, label in over[:SHOWN]]
    if len(over) > SHOWN:
        rest = over[SHOWN:]
        problems.append(Problem(
            severity="warning", code="caption-too-long", fix=fix,
            message=f"{len(rest)} more {what}s are over {opt.MAX_TOKEN_LENGTH} {limit} "
                    f"({min(t for t, _ in rest)}-{max(t for t, _ in rest)} CLIP tokens)",
        ))
    return problems


def job_max_tokens(job: Job) -> int | None:
    """The preset's max_token_length (what both stages' training TOMLs get)."""
    value = preset_value(load_preset(job.training.preset), opt.MAX_TOKEN_LENGTH)
    return value if isinstance(value, int) else None


def _too_long(path: Path, what: str, tokens: int, limit: int, fix: str) -> Problem:
    return Problem(
        severity="warning", code="caption-too-long", path=path, fix=fix,
        message=f"{what} is {tokens} CLIP tokens, over {opt.MAX_TOKEN_LENGTH} {limit}: sd-scripts cuts the last "
                f"{tokens - limit} silently (random tags with {opt.SHUFFLE_CAPTION})",
    )


def print_caption_length_warnings(console: Console, characters: Sequence[Character],
                                  plans: Iterable[CompositePlan], job: Job) -> None:
    """prepare's shell: the warnings of `caption_length_problems` for this job, one line each."""
    if clip_token_counter() is None:
        console.print(Text("caption lengths not checked: the CLIP tokenizer comes with the training stack "
                           "(run ./bootstrap.sh)", style="dim"), soft_wrap=True)
        return
    for problem in caption_length_problems(characters, plans, job.composites.captions, job_max_tokens(job)):
        console.print(Text(problem.line, style="yellow"), soft_wrap=True)
