"""Bucket arithmetic mirrors sd-scripts (figures checked against the pinned source, see KOHYA.md Q6)."""

from __future__ import annotations

from kohya_1to2.configs.buckets import BucketSettings, assign_buckets, make_bucket_resolutions, select_bucket


def test_sd1_512_two_to_one_lands_in_704x320_with_a_small_crop() -> None:
    resos = make_bucket_resolutions((512, 512), 256, 1024, 64)
    bucket, crop = select_bucket((1024, 512), resos)
    assert bucket == (704, 320)
    assert 0.05 < crop < 0.15


def test_sd1_768_gives_an_exact_two_to_one_bucket() -> None:
    bucket, crop = select_bucket((2048, 1024), make_bucket_resolutions((768, 768), 256, 1024, 64))
    assert bucket == (1024, 512) and crop == 0.0


def test_sdxl_needs_a_raised_max_bucket_for_composites() -> None:
    low = assign_buckets([(2048, 1024)], BucketSettings(resolution=(1024, 1024), max_bucket_reso=1024))
    high = assign_buckets([(2048, 1024)], BucketSettings(resolution=(1024, 1024), max_bucket_reso=1536))
    assert (high[0].width, high[0].height) == (1408, 704)
    assert low[0].width * low[0].height < high[0].width * high[0].height


def test_tie_goes_to_the_first_sorted_bucket_like_numpy_argmin() -> None:
    resos = make_bucket_resolutions((128, 128), 64, 1024, 64)
    bucket, _ = select_bucket((256, 128), resos)
    assert bucket == (128, 128)


def test_exact_bucket_size_is_kept_and_counts_group_by_bucket() -> None:
    settings = BucketSettings(resolution=(512, 512))
    counts = assign_buckets([(512, 512), (512, 512), (1024, 512), (384, 640)], settings)
    assert {(c.width, c.height): c.images for c in counts} == {(512, 512): 2, (704, 320): 1, (384, 640): 1}
    assert counts == sorted(counts, key=lambda c: (c.width, c.height))


def test_range_is_rounded_down_to_the_step_like_sd_scripts() -> None:
    counts = assign_buckets([(1000, 500)], BucketSettings(resolution=(512, 512), max_bucket_reso=1000))
    assert counts[0].width <= 960
