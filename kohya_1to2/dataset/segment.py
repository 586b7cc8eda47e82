"""Masks from a segmenter (`prepare --segment`, optional extra `[segment]`): dghs-imgutils' anime segmentation
(isnetis, skytnt/anime-seg), for the scene images that have neither an alpha channel nor a `--masks` file.

Offline only, like the identity scores: the package, onnxruntime and the model file must already be in the local
Hugging Face cache; the model runs in a child process with HF_HUB_OFFLINE=1, so prepare never loads its stack.
Each mask is written once into the run directory (`masks/N_name/<stem>.png`, white = character, thresholded at
half: a soft edge would widen the cut-out's box to the whole image) and reused while it is newer than its image.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageOps

from kohya_1to2.errors import DatasetError, SetupError
from kohya_1to2.hfcache import missing_part

# --- what this module relies on in dghs-imgutils (the one place to change on an upgrade) ------------------------
DISTRIBUTION = "dghs-imgutils"
MODULE = "imgutils"
API = ("imgutils.segment", "get_isnetis_mask")  # (image, scale=1024) -> float mask in [0, 1], (H, W) or (H, W, 1)
MODEL_FILES: tuple[tuple[str, str], ...] = (("skytnt/anime-seg", "isnetis.onnx"),)
EXTRA = "segment"
THRESHOLD = 0.5
NAME = "imgutils isnetis (skytnt/anime-seg)"


def unavailable() -> str | None:
    """Why the segmenter cannot run here (a clause), or None."""
    return missing_part(DISTRIBUTION, MODULE, EXTRA, MODEL_FILES)


def require_segmenter() -> None:
    """A SetupError (exit 5) naming what is missing, when --segment cannot run."""
    if why := unavailable():
        raise SetupError(f"--segment: the segmenter cannot run: {why}",
                         hint="or give those images a transparent background or a --masks file")


def is_current(mask: Path, image: Path) -> bool:
    """A mask segmented earlier, still newer than its image."""
    try:
        return mask.stat().st_mtime >= image.stat().st_mtime
    except FileNotFoundError:
        return False


def segment_images(jobs: Sequence[tuple[Path, Path]], progress: Callable[[int], None] = lambda n: None) -> None:
    """Write a mask for each (image, mask path) in a child process running the model offline; `progress(1)` per
    mask written. A failure is a DatasetError naming the image the child stopped at."""
    if not jobs:
        return
    with tempfile.TemporaryDirectory(prefix="1to2-segment-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps([[str(image), str(mask)] for image, mask in jobs]), encoding="utf-8")
        with subprocess.Popen([sys.executable, "-m", __name__, str(request)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            done = 0
            for line in proc.stdout:
                if line.startswith("segmented "):
                    done += 1
                    progress(1)
            error = proc.stderr.read()
        if proc.returncode != 0:
            last = (error.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            at = jobs[done][0] if done < len(jobs) else jobs[-1][0]
            raise DatasetError(f"--segment: the segmenter failed at {at}: {last}",
                               hint=f"check that {DISTRIBUTION} and its model run, or give the image a mask file")


def _mask_image(image_path: str) -> Image.Image:
    """The child's work for one image: the model's mask, thresholded, as an 8-bit L image of the image's size."""
    import numpy as np  # reason: the child's work only; the parent preparing never loads the model's stack

    with Image.open(image_path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    found = getattr(importlib.import_module(API[0]), API[1])(image)
    mask = np.asarray(found, dtype=np.float32).reshape(image.size[1], image.size[0])
    return Image.fromarray(np.where(mask >= THRESHOLD, 255, 0).astype(np.uint8), mode="L")


def _run(request: Path) -> None:
    for image_path, mask_path in json.loads(request.read_text(encoding="utf-8")):
        out = Path(mask_path)
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        _mask_image(image_path).save(part, format="PNG")
        os.replace(part, out)
        print(f"segmented {image_path}", flush=True)


if __name__ == "__main__":
    _run(Path(sys.argv[1]))
