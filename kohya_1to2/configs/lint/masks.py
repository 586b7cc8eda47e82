"""Scene composites carry their loss mask as alpha: a subset with `alpha_mask = true` needs it in every image.

sd-scripts gives an image without alpha a mask of ones (train_util.load_image converts it to RGBA), so a
composite that lost its alpha (re-saved as JPEG, or as RGB by an editor) trains on the background silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from kohya_1to2 import kohya
from kohya_1to2.configs.lint.problems import ConfigProblem
from kohya_1to2.imagefiles import list_images
from kohya_1to2.kohya import options as opt

ALPHA_MODES = ("RGBA", "LA", "PA")
SHOWN = 3


def _without_alpha(folder: Path) -> list[Path]:
    missing = []
    for path in list_images(folder):
        try:
            with Image.open(path) as image:  # the header says the mode: no pixels decoded
                if image.mode not in ALPHA_MODES:
                    missing.append(path)
        except OSError:
            missing.append(path)
    return missing


def lint_alpha_masks(dataset_doc: Mapping[str, Any], file: str) -> list[ConfigProblem]:
    """Every image of an `alpha_mask` subset has an alpha channel (its mask, one to one)."""
    problems = []
    for i, j, values in kohya.subset_scopes(dataset_doc):
        folder = Path(str(values.get(opt.IMAGE_DIR, "")))
        if values.get(opt.ALPHA_MASK) is not True or not folder.is_dir():
            continue
        missing = _without_alpha(folder)
        if missing:
            names = ", ".join(p.name for p in missing[:SHOWN]) + (" ..." if len(missing) > SHOWN else "")
            problems.append(ConfigProblem(
                file=file, key=f"datasets[{i}].subsets[{j}].{opt.ALPHA_MASK}",
                problem=f"{len(missing)} image(s) in {folder} have no alpha channel, so no mask: {names} "
                        "(sd-scripts would train them everywhere, background included)",
                fix=f"re-run prepare to rebuild them, or set {opt.ALPHA_MASK} = false for this subset"))
    return problems
