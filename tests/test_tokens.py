"""CLIP token counts (offline, no torch) and the caption-length warnings with exact counts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from kohya_1to2.dataset.captions import composite_caption, group_caption
from kohya_1to2.environment.tokens import caption_length_problems, clip_token_counter, job_max_tokens
from kohya_1to2.models import CaptionRules, Character, CompositePlan, Job, SourceImage, SourceSettings


def require_open_clip() -> None:
    """Skip at run time, not through `skipif`: conftest turns an integration test's skip into a CI failure."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch (the CLIP vocabulary) is not installed (run ./bootstrap.sh)")


# A typical tagger caption of 35 tags.
LONG_TAGS = (
    "1girl", "solo", "long hair", "looking at viewer", "smile", "open mouth", "blue eyes", "blonde hair",
    "shirt", "long sleeves", "hair between eyes", "very long hair", "standing", "white shirt", "ponytail",
    "cowboy shot", "outdoors", "sky", "day", "collared shirt", "cloud", "blue sky", "hand up", "sidelocks",
    "blue skirt", "pleated skirt", "school uniform", "hair ribbon", "red ribbon", "neck ribbon", "blush",
    "sunlight", "tree", "building", "floating hair",
)


def character(name: str, tags: tuple[str, ...]) -> Character:
    folder = Path(f"/d/1_{name}")
    image = SourceImage(path=folder / "a.png", character=name, tags=(name, *tags), caption_path=folder / "a.txt")
    return Character(name=name, trigger=name, repeats=1, folder=folder, images=(image,))


@pytest.mark.integration
def test_counts_match_the_clip_tokenizer_sd_scripts_loads(tmp_path: Path) -> None:
    """transformers' CLIPTokenizer from the same vocabulary (as sd-scripts' tokenizer_cache_dir holds it)."""
    require_open_clip()
    texts = ["1girl, solo, long hair", "akari (genshin impact), café latte, crème brûlée", ", ".join(LONG_TAGS),
             "looking_at_viewer, :d, ^_^, 2girls, 東方, it's", "Hello   WORLD\tnew"]
    script = (
        "import json, sys\nfrom pathlib import Path\n"
        "from kohya_1to2.environment.tiny_model import save_clip_tokenizer\n"
        "from transformers import CLIPTokenizer\nout = Path(sys.argv[1])\nsave_clip_tokenizer(out)\n"
        "t = CLIPTokenizer.from_pretrained(str(out))\ntexts = json.loads(sys.stdin.read())\n"
        "print(json.dumps([[len(t(x, add_special_tokens=False).input_ids), len(t(x).input_ids)] for x in texts]))\n"
    )
    import json

    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tok")], input=json.dumps(texts),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = json.loads(proc.stdout.strip().splitlines()[-1])
    count = clip_token_counter()
    assert count is not None
    assert [count(t) for t in texts] == [plain for plain, _ in reference]
    assert all(full == plain + 2 for plain, full in reference), "sd-scripts' count adds BOS and EOS"


@pytest.mark.integration
def test_counter_imports_no_torch() -> None:
    require_open_clip()
    code = "import sys; from kohya_1to2.environment.tokens import clip_token_counter; clip_token_counter()('a'); " \
           "print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.integration
def test_long_captions_warn_with_exact_token_counts() -> None:
    require_open_clip()
    count = clip_token_counter()
    assert count is not None
    alice, bob = character("alice", LONG_TAGS), character("bob", LONG_TAGS[:20])
    plan = CompositePlan(index=3, left=alice.images[0], right=bob.images[0])
    rules = CaptionRules()
    text = composite_caption(alice, bob, alice.images[0], bob.images[0], rules)
    single = count(", ".join(alice.images[0].tags))
    assert single == 98, "trigger + a 35-tag caption: 98 CLIP tokens (+2 BOS/EOS in sd-scripts)"
    limit = count(text) - 1
    problems = caption_length_problems([alice, bob], [plan], rules, limit)
    [composite] = [p for p in problems if "composite" in p.message]
    assert f"composite caption is {count(text)} CLIP tokens, over max_token_length {limit}" in composite.message
    assert "--dedupe-shared" in composite.fix and "--drop-solo" in composite.fix
    assert "--max-tags-per-side" in composite.fix
    assert not [p for p in problems if "stage-1" in p.message], "singles fit"
    stage1 = caption_length_problems([alice, bob], [], rules, 97)
    assert [p.message.split(" CLIP")[0] for p in stage1] == ["stage-1 caption is 98"]
    assert stage1[0].path == Path("/d/1_alice/a.txt") and "max_token_length = 225 (now 97)" in stage1[0].fix
    capped = CaptionRules(max_tags_per_side=10)
    assert caption_length_problems([alice, bob], [plan], capped, limit) == []
    # a group of three counts its whole caption, the middle member's tags included
    carol = character("carol", LONG_TAGS[:5])
    trio = CompositePlan(index=4, members=(alice.images[0], carol.images[0], bob.images[0]))
    trio_text = group_caption([alice, carol, bob], trio.members, rules)
    assert count(trio_text) > count(text) > limit
    [three] = caption_length_problems([alice, bob, carol], [trio], rules, limit)
    assert three.path == Path("composite 000004 (1_alice/a.png + 1_carol/a.png + 1_bob/a.png)")
    assert f"composite caption is {count(trio_text)} CLIP tokens" in three.message


@pytest.mark.integration
def test_many_long_composites_are_summarised() -> None:
    require_open_clip()
    alice, bob = character("alice", LONG_TAGS), character("bob", LONG_TAGS)
    plans = [CompositePlan(index=i, left=alice.images[0], right=bob.images[0]) for i in range(8)]
    problems = caption_length_problems([alice, bob], plans, CaptionRules(), 150)
    assert len(problems) == 6 and problems[-1].message.startswith("3 more composite captions")
    at_225 = caption_length_problems([alice, bob], plans, CaptionRules(), 225, count=lambda text: 300)
    assert at_225 and all("max_token_length = 225" not in p.fix for p in at_225), "the limit is already 225"


def test_limit_comes_from_the_preset() -> None:
    assert job_max_tokens(Job(out=Path("/r"), sources=SourceSettings(roots=[Path("/s")]))) == 225


def test_without_the_tokenizer_prepare_says_caption_lengths_were_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from kohya_1to2.environment import tokens
    from kohya_1to2.models import Job, SourceSettings

    monkeypatch.setattr(tokens, "clip_token_counter", lambda: None)
    out = io.StringIO()
    job = Job(out=Path("run"), sources=SourceSettings(roots=[Path("src")]))
    tokens.print_caption_length_warnings(Console(file=out, width=200), [], [], job)
    assert "caption lengths not checked" in out.getvalue()
