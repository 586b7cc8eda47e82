"""metrics.jsonl records: the identity status and per-row identity numbers, and the report's identity table."""

from __future__ import annotations

from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.identity import Figure, ScoredImage, row_identity
from kohya_1to2.evaluate.report import metrics_html
from kohya_1to2.evaluate.rows import Row

ROW = Row(id="s2e3", label="stage 2 epoch 3", stage=2, epoch=3)


def scores() -> dict[str, object]:
    a = Figure(confidence=0.9, differences={"alice": (0.1,), "bob": (0.6,)})
    b = Figure(confidence=0.8, differences={"alice": (0.5,), "bob": (0.2,)})
    images = [ScoredImage(row=ROW.id, kind="pair", characters=("alice", "bob"), figures=(a, b)),
              ScoredImage(row=ROW.id, kind="pair", characters=("alice", "bob"), figures=(a, a))]
    return row_identity(ROW.id, images, ["alice", "bob"], 0.25).model_dump()


def test_an_identity_status_alone_holds_no_number() -> None:
    record = metric.IdentityStatus(status="identity scores unavailable: x")
    assert metric.metrics_text([record]) == \
        '{"available": false, "metric": "identity", "status": "identity scores unavailable: x"}\n'
    assert metric.identity_table([record]) == (["row", "pair images", "both present", "clones"], [])


def test_identity_scores_record_carries_the_rows_numbers_and_threshold() -> None:
    record = metric.IdentityScores.of(ROW, scores(), 0.178123)
    assert (record.metric, record.row, record.label, record.stage, record.epoch) == (
        "identity_scores", "s2e3", "stage 2 epoch 3", 2, 3)
    assert (record.pair_images, record.both_present_rate, record.clone_rate) == (2, 0.5, 0.5)
    assert record.similarity == {"alice": 0.9, "bob": 0.6}  # bob: (1 - 0.2 + 1 - 0.6) / 2
    assert record.ccip_threshold == 0.1781
    assert metric.read_metrics(metric.metrics_text([record])) == [record]


def test_identity_table_shows_rates_as_percent_and_a_dash_where_nothing_was_measured() -> None:
    measured = metric.IdentityScores.of(ROW, scores(), 0.2)
    empty = metric.IdentityScores.of(
        Row(id="base", label="base model"),
        {"images": 0, "figures": 0, "similarity": {"alice": None, "bob": None}, "pair_images": 0,
         "both_present_rate": None, "clone_rate": None}, 0.2)
    headers, lines = metric.identity_table([metric.IdentityStatus(status="ok", available=True), measured, empty])
    assert headers == ["row", "pair images", "both present", "clones", "alice similarity", "bob similarity"]
    assert lines == [["stage 2 epoch 3", "2", "50%", "50%", "0.900", "0.600"],
                     ["base model", "0", "-", "-", "-", "-"]]


def test_the_report_shows_the_identity_table_only_with_numbers() -> None:
    status = metric.IdentityStatus(status="identity scores: measured", available=True)
    html = metrics_html([status, metric.IdentityScores.of(ROW, scores(), 0.2)])
    assert "identity scores: measured." in html and "<th>both present</th>" in html and "0.600" in html
    assert "<th>both present</th>" not in metrics_html([metric.IdentityStatus(status="identity scores unavailable: x")])


def test_every_record_kind_round_trips_and_a_foreign_line_is_skipped() -> None:
    from kohya_1to2.evaluate.seams import Calibration

    rate = metric.CompositeRate(row="s2e3", label="stage 2 epoch 3", stage=2, epoch=3, kind="pair", images=4,
                                composites=1, rate=0.25, detector_accuracy=1.0)
    records = [metric.CalibrationRecord.of(Calibration(0.5, 0.97, 1.0, 12, 12)), rate,
               metric.BestEpoch.of([rate]), metric.IdentityStatus(status="x"),
               metric.IdentityScores.of(ROW, scores(), 0.2), rate.for_run("joint", label="joint · stage 2 epoch 3")]
    text = metric.metrics_text(records)
    assert metric.read_metrics(text + '{"metric": "from_a_newer_version", "x": 1}\n') == records
    assert '"run"' not in text.splitlines()[1] and '"run": "joint"' in text.splitlines()[-1]
    assert metric.BestEpoch.of([rate]).epoch == 3 and metric.BestEpoch.of([rate], stage=1).epoch is None
    assert rate.cells() == ("stage 2 epoch 3", "pair", 4, 1, "25%", "100.0%")
