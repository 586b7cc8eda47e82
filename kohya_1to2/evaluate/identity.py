"""Identity scores (optional extra `[eval]`): only with dghs-imgutils and its models in the local cache.

Each generated image's figures come from imgutils' person detector; each figure's CCIP difference to every
character's source images comes from imgutils' CCIP models. From those differences (pure): per character, the
identity similarity of the best-matching figure (1 - CCIP difference); per row, the both-present rate (every
character a pair prompt names is recognised in the image) and the clone rate (the image's two most confident
figures are closest to the same character). Nothing is ever downloaded or installed: availability is read from
the Hugging Face cache without network access (and onnxruntime must already be there, or imgutils would pip-install
it), the models run in a child process with HF_HUB_OFFLINE=1, and when any part is missing the metrics hold a
reason and no number.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.prompts import EvalPrompt, image_name
from kohya_1to2.evaluate.rows import Row
from kohya_1to2.hfcache import missing_part
from kohya_1to2.models import Character

# --- what this module relies on in dghs-imgutils 0.19 (the one place to change on an upgrade) ---------------
IMGUTILS_DISTRIBUTION = "dghs-imgutils"
IMGUTILS_MODULE = "imgutils"
ONNXRUNTIME_MODULE = "onnxruntime"  # not a declared dependency of imgutils: it installs it on first import
IMGUTILS_API = {
    "detect_person": "imgutils.detect",  # (image, level, version, ...) -> [((x0, y0, x1, y1), 'person', score)]
    "ccip_batch_extract_features": "imgutils.metrics",  # (images, size, model) -> ndarray (n, 768)
    "ccip_batch_differences": "imgutils.metrics",  # (features, size, model) -> ndarray (n, n)
    "ccip_default_threshold": "imgutils.metrics",  # (model) -> float: same character at or below it
}
CCIP_REPO = "deepghs/ccip_onnx"
CCIP_MODEL = "ccip-caformer-24-randaug-pruned"  # imgutils.metrics.ccip's default model
PERSON_REPO = "deepghs/anime_person_detection"
PERSON_LEVEL, PERSON_VERSION = "m", "v1.1"  # detect_person's defaults
PERSON_MODEL = f"person_detect_{PERSON_VERSION}_{PERSON_LEVEL}"
MODEL_FILES: tuple[tuple[str, str], ...] = (
    (CCIP_REPO, f"{CCIP_MODEL}/model_feat.onnx"),
    (CCIP_REPO, f"{CCIP_MODEL}/model_metrics.onnx"),
    (CCIP_REPO, f"{CCIP_MODEL}/metrics.json"),
    (PERSON_REPO, f"{PERSON_MODEL}/model.onnx"),
)
"""Hugging Face files the scoring reads (repo, path in repo); all must be in the local cache."""

SOURCES_PER_CHARACTER = 8
"""Source images compared with each figure, evenly spread over the character's folder."""


class Availability(BaseModel):
    model_config = ConfigDict(frozen=True)

    available: bool
    reason: str
    """One sentence for the report: why there are no numbers, or what produced them."""


def check_availability(cache_dir: Path | None = None) -> Availability:
    """Is imgutils importable and is every model file in the Hugging Face cache? Never touches the network."""
    missing = missing_part(IMGUTILS_DISTRIBUTION, IMGUTILS_MODULE, "eval", MODEL_FILES, cache_dir)
    if missing:
        return Availability(available=False, reason=(
            f"identity scores unavailable: {missing}, so no CCIP identity similarity, both-present or clone rate "
            "is shown"))
    return Availability(available=True, reason=(
        f"identity scores: figures found by {PERSON_MODEL}, compared with CCIP ({CCIP_MODEL}) to up to "
        f"{SOURCES_PER_CHARACTER} source images per character; similarity = 1 - mean CCIP difference to a "
        "character's sources; a figure is recognised as its closest character when that difference is at most "
        "CCIP's threshold"))


# --- scoring (pure): CCIP differences in, similarities and rates out ----------------------------------------

class Figure(BaseModel):
    """One detected figure: detector confidence and its CCIP differences to each character's sources."""

    model_config = ConfigDict(frozen=True)

    confidence: float
    differences: dict[str, tuple[float, ...]]

    def difference(self, character: str) -> float:
        return statistics.fmean(self.differences[character])

    def closest(self) -> str:
        """The character whose sources this figure differs least from (ties: the first name)."""
        return min(sorted(self.differences), key=self.difference)


class ScoredImage(BaseModel):
    """One generated image of a row: the characters its prompt names and the figures found in it."""

    model_config = ConfigDict(frozen=True)

    row: str
    kind: str
    characters: tuple[str, ...]
    figures: tuple[Figure, ...]


class RowIdentity(BaseModel):
    model_config = ConfigDict(frozen=True)

    row: str
    images: int
    figures: int
    similarity: dict[str, float | None]
    pair_images: int
    both_present_rate: float | None
    clone_rate: float | None


def recognised(figure: Figure, threshold: float) -> str | None:
    """The figure's closest character when CCIP calls them the same (difference <= threshold), else None."""
    closest = figure.closest()
    return closest if figure.difference(closest) <= threshold else None


def is_clone(image: ScoredImage) -> bool:
    """The two most confident figures are closest to the same character."""
    if len(image.figures) < 2:
        return False
    first, second = sorted(image.figures, key=lambda f: -f.confidence)[:2]
    return first.closest() == second.closest()


def both_present(image: ScoredImage, threshold: float) -> bool:
    """Every character the prompt names is recognised in some figure."""
    found = {recognised(f, threshold) for f in image.figures}
    return bool(image.characters) and all(c in found for c in image.characters)


def row_identity(row: str, images: Sequence[ScoredImage], characters: Sequence[str], threshold: float) -> RowIdentity:
    """Similarity per character (mean over the images naming it of its best figure's 1 - difference) and the
    both-present and clone rates over the row's pair images (an image without figures counts as neither)."""
    mine = [i for i in images if i.row == row]
    similarity: dict[str, float | None] = {}
    for character in characters:
        best = [max(1.0 - f.difference(character) for f in i.figures)
                for i in mine if character in i.characters and i.figures]
        similarity[character] = round(statistics.fmean(best), 4) if best else None
    pairs = [i for i in mine if i.kind == "pair"]
    return RowIdentity(
        row=row, images=len(mine), figures=sum(len(i.figures) for i in mine), similarity=similarity,
        pair_images=len(pairs),
        both_present_rate=round(sum(both_present(i, threshold) for i in pairs) / len(pairs), 4) if pairs else None,
        clone_rate=round(sum(is_clone(i) for i in pairs) / len(pairs), 4) if pairs else None,
    )


def figures_from_measurement(found: Sequence[Mapping[str, Any]]) -> tuple[Figure, ...]:
    return tuple(Figure(confidence=float(f["confidence"]),
                        differences={c: tuple(float(d) for d in ds) for c, ds in f["differences"].items()})
                 for f in found)


# --- shell: which images, the child process that runs the models, the records --------------------------------

def source_sample(character: Character) -> list[Path]:
    paths = sorted(image.path for image in character.images)
    if len(paths) <= SOURCES_PER_CHARACTER:
        return paths
    return [paths[i * len(paths) // SOURCES_PER_CHARACTER] for i in range(SOURCES_PER_CHARACTER)]


Measure = Callable[[Mapping[str, Sequence[Path]], Sequence[Path]], tuple[float, dict[str, list[dict[str, Any]]]]]


def measure_in_child(sources: Mapping[str, Sequence[Path]], images: Sequence[Path]
                     ) -> tuple[float, dict[str, list[dict[str, Any]]]]:
    """Run the models in a child process with HF_HUB_OFFLINE=1: CCIP threshold and each image's figures."""
    with tempfile.TemporaryDirectory(prefix="1to2-identity-") as tmp:
        request, result = Path(tmp) / "request.json", Path(tmp) / "result.json"
        request.write_text(json.dumps({"sources": {c: [str(p) for p in ps] for c, ps in sources.items()},
                                       "images": [str(p) for p in images]}), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", __name__, str(request), str(result)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            tail = " ".join(proc.stderr.strip().splitlines()[-1:]) or f"exit {proc.returncode}"
            raise RuntimeError(tail)
        data = json.loads(result.read_text(encoding="utf-8"))
    return float(data["threshold"]), data["images"]


def identity_records(rows: Sequence[Row], prompts: Sequence[EvalPrompt], seeds: Sequence[int],
                     characters: Sequence[Character], images_dir: Path, *,
                     availability: Availability | None = None,
                     measure: Measure = measure_in_child) -> list[metric.Record]:
    """The status record, then one record of numbers per row when the models could run; never a made-up number."""
    availability = availability or check_availability()
    if not availability.available:
        return [metric.IdentityStatus(status=availability.reason)]
    wanted = [(row.id, prompt, images_dir / row.id / image_name(prompt, seed))
              for row in rows for prompt in prompts if prompt.kind in ("single", "pair") for seed in seeds]
    wanted = [(row, prompt, path) for row, prompt, path in wanted if path.is_file()]
    sources = {c.name: source_sample(c) for c in characters if c.images}
    try:
        threshold, found = measure(sources, [p for _, _, p in wanted])
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        return [metric.IdentityStatus(status=f"identity scores unavailable: the {IMGUTILS_DISTRIBUTION} models did "
                                              f"not run ({exc}), so no number is shown")]
    scored = [ScoredImage(row=row, kind=prompt.kind, characters=prompt.characters,
                          figures=figures_from_measurement(found.get(str(path), [])))
              for row, prompt, path in wanted]
    return [metric.IdentityStatus(status=f"{availability.reason} ({threshold:.4g})", available=True),
            *(metric.IdentityScores.of(row, row_identity(row.id, scored, list(sources), threshold).model_dump(),
                                       threshold)
              for row in rows)]


def _api(name: str) -> Any:
    return getattr(importlib.import_module(IMGUTILS_API[name]), name)


def _run_models(request: Path, result: Path) -> None:
    """The child's work: detect figures, CCIP features of figures and sources, differences between them."""
    # the child's work only: the parent evaluating never loads the models' stack
    import numpy as np
    from PIL import Image

    data = json.loads(request.read_text(encoding="utf-8"))
    extract, differences = _api("ccip_batch_extract_features"), _api("ccip_batch_differences")
    names = list(data["sources"])
    source_features = {c: list(extract(data["sources"][c], model=CCIP_MODEL)) for c in names}
    out: dict[str, list[dict[str, Any]]] = {}
    for path in data["images"]:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        found = _api("detect_person")(image, level=PERSON_LEVEL, version=PERSON_VERSION)
        if not found:
            out[path] = []
            continue
        crops = [image.crop(tuple(box)) for box, _, _ in found]
        features = list(extract(crops, model=CCIP_MODEL))
        every = features + [f for c in names for f in source_features[c]]
        matrix = np.asarray(differences(every, model=CCIP_MODEL))
        figures = []
        for i, (_, _, confidence) in enumerate(found):
            column, by_character = len(features), {}
            for c in names:
                count = len(source_features[c])
                by_character[c] = [float(d) for d in matrix[i, column:column + count]]
                column += count
            figures.append({"confidence": float(confidence), "differences": by_character})
        out[path] = figures
    threshold = float(_api("ccip_default_threshold")(CCIP_MODEL))
    result.write_text(json.dumps({"threshold": threshold, "images": out}), encoding="utf-8")


if __name__ == "__main__":
    _run_models(Path(sys.argv[1]), Path(sys.argv[2]))
