"""Scene composites in the real sd-scripts: the composite subset is read with `alpha_mask`, and the mask its
loss is multiplied by (custom_train_functions.apply_masked_loss, at latent size) is the union of the
characters' masks that prepare wrote as the composites' alpha. The CPU training with the masked loss on is
the joint run of tests/integration/conftest.py (`killed_joint_run`, scene style)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sd_scripts_child import DATASET_GROUP, REPO, requires_sd_scripts, run_in_sd_scripts

from kohya_1to2.cli import main

pytestmark = requires_sd_scripts()

MASKS = DATASET_GROUP + r"""
import torch
from library import custom_train_functions
args, group = dataset_group(request)
out = []
for dataset in group.datasets:
    for info in dataset.image_data.values():
        if not dataset.subsets[0].alpha_mask:
            continue
        _, masks, _, _ = train_util.load_images_and_masks_for_caching([info], True, False)
        width, height = info.bucket_reso
        loss = torch.ones((1, 4, height // 8, width // 8))
        fed = custom_train_functions.apply_masked_loss(loss, {"alpha_masks": torch.stack(masks)})[0, 0]
        out.append({"path": info.absolute_path, "bucket": [width, height], "mask": fed.tolist()})
print("@@" + json.dumps(out))
"""


def test_the_mask_fed_to_the_loss_is_the_union_of_the_characters_masks_at_latent_size(tmp_path: Path) -> None:
    base = tmp_path / "base.safetensors"
    base.write_bytes(b"not loaded")
    run = tmp_path / "run"
    assert main(["prepare", str(REPO / "examples" / "dataset"), "--out", str(run), "--preset", "smoke",
                 "--base-model", str(base), "--composite-style", "scene", "--masks",
                 str(REPO / "examples" / "masks"), "--workers", "1"]) == 0
    fed = run_in_sd_scripts(MASKS, str(run / "stage2.train.toml"))
    assert len(fed) == len(list((run / "composites" / "1_composite").glob("*.png"))) > 0
    for record in fed:
        with Image.open(record["path"]) as composite:
            union = composite.getchannel("A")  # prepare's union of the placed masks
            assert composite.size[0] * record["bucket"][1] == pytest.approx(composite.size[1] * record["bucket"][0],
                                                                            rel=0.02), "no crop: its own aspect"
        width, height = record["bucket"]
        expected = np.asarray(union.resize((width, height), Image.Resampling.BOX).resize(
            (width // 8, height // 8), Image.Resampling.BOX), dtype=np.float32) / 255
        got = np.asarray(record["mask"], dtype=np.float32)
        assert got.shape == expected.shape
        assert np.abs(got - expected).mean() < 0.02 and np.abs(got - expected).max() < 0.35, record["path"]
        assert got.min() == 0.0 and got.max() > 0.99, "background masked out, the characters kept"
