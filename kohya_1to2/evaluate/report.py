"""report.html: one self-contained page about a run that opens from disk (no CDN, no JavaScript).

`collect_*` read the run directory (shell); `render_*` turn what they found into HTML (pure, escaped). Images
are linked relatively and shown as thumbnails written into `report_files/`, so the page moves with the run.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import quote

import tomlkit
from PIL import Image
from rich.console import Console

from kohya_1to2 import kohya
from kohya_1to2.configs.generate import plans_from_run_dir
from kohya_1to2.configs.presets import run_family, templates_dir
from kohya_1to2.configs.stage_plans import render_stage_plans
from kohya_1to2.dataset.captions import CaptionTemplate
from kohya_1to2.dataset.scan import scan_sources
from kohya_1to2.errors import OneToTwoError
from kohya_1to2.evaluate import metrics as metric
from kohya_1to2.evaluate.compare import COMPARE_FOLDER, COMPARISON_FILE
from kohya_1to2.evaluate.curves import Series, log_losses, tensorboard_scalars
from kohya_1to2.evaluate.rows import stage_title
from kohya_1to2.fsutil import atomic_path, atomic_write_text, file_fingerprint
from kohya_1to2.models import STAGES, CompositeSettings
from kohya_1to2.modes import DEFAULT_MODE
from kohya_1to2.rundir import RunDir, load_job, manifest_records, measured_steps

THUMB_SIDE = 256
GRID_THUMB_WIDTH = 1100
SECTIONS = ("sources", "pairing", "plan", "configs", "substitutions", "losses", "samples", "evaluation", "comparison")


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def href(run_dir: Path, path: Path) -> str:
    """A relative, URL-quoted link from report.html (spaces and unicode survive)."""
    return quote(Path(os.path.relpath(path, run_dir)).as_posix())


def thumbnail(run: RunDir, path: Path, max_width: int = THUMB_SIDE, max_height: int = THUMB_SIDE,
              channel: str | None = None) -> Path | None:
    """A small PNG copy of `path` in report_files/ (rebuilt when the source changes), or of one of its
    channels (`"A"`: a scene composite's loss mask); None if unreadable."""
    try:
        fingerprint = file_fingerprint(path)
    except OSError:
        return None
    key = hashlib.sha256(f"{path}:{fingerprint}:{max_width}x{max_height}:{channel}".encode()).hexdigest()
    out = run.thumbnails / f"{key[:20]}.png"
    if out.is_file():
        return out
    try:
        with Image.open(path) as image:
            small = image.getchannel(channel) if channel else image.convert("RGB")
            small.thumbnail((max_width, max_height))
            with atomic_path(out) as tmp:
                small.save(tmp, format="PNG")
    except (OSError, ValueError):  # ValueError: no such channel
        return None
    return out


VIEW_SIDE = 1024
"""A source outside the run directory is linked through a copy of this size in report_files/."""


def figure(run: RunDir, path: Path, caption: str, max_width: int = THUMB_SIDE, max_height: int = THUMB_SIDE) -> str:
    """A thumbnail linking to the full image; for an image outside the run directory (a source) the link goes to
    a copy in report_files/, so the page shows nothing from outside the run and survives a move or a copy."""
    thumb = thumbnail(run, path, max_width, max_height)
    inside = path.resolve().is_relative_to(run.root.resolve())
    target = path if inside else thumbnail(run, path, VIEW_SIDE, VIEW_SIDE)
    if thumb is None or target is None:
        return f'<p class="missing">{esc(path.name)}: not readable</p>'
    return (f'<figure><a href="{href(run.root, target)}"><img src="{href(run.root, thumb)}" alt="{esc(caption)}"></a>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{esc(c)}</td>' for i, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>\n{body}\n</section>'


# ---------------------------------------------------------------- pure renderers


def line_chart(series: Series, width: int = 560, height: int = 200) -> str:
    """An inline SVG of each series (x = step, y = value), axis ranges printed; empty string for no points."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    xs, ys = (x1 - x0) or 1, (y1 - y0) or 1
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    lines = []
    for n, (tag, values) in enumerate(series.items()):
        coords = " ".join(f"{40 + (x - x0) / xs * (width - 50):.1f},{height - 20 - (y - y0) / ys * (height - 40):.1f}"
                          for x, y in values)
        colour = colours[n % len(colours)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{coords}"/>'
                     + "".join(f'<circle r="2" fill="{colour}" cx="{c.split(",")[0]}" cy="{c.split(",")[1]}"/>'
                               for c in coords.split()[:1] + coords.split()[-1:]))
        lines.append(f'<text x="{width - 10}" y="{14 + 14 * n}" text-anchor="end" font-size="11" fill="{colour}">'
                     f"{esc(tag)}</text>")
    labels = (f'<text x="4" y="14" font-size="10">{y1:.4g}</text><text x="4" y="{height - 22}" font-size="10">'
              f'{y0:.4g}</text><text x="40" y="{height - 4}" font-size="10">step {x0}</text>'
              f'<text x="{width - 10}" y="{height - 4}" text-anchor="end" font-size="10">step {x1}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
            f'{labels}{"".join(lines)}</svg>')


def config_difference(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(key, stage 1, stage 2) of every flattened key whose value differs ('-' = not set)."""
    keys = sorted(set(first) | set(second))
    return [(k, str(first.get(k, "-")), str(second.get(k, "-"))) for k in keys if first.get(k) != second.get(k)]


def render_page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    template = Template((templates_dir() / "report.html").read_text(encoding="utf-8"))
    nav = "".join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in sections)
    return template.substitute(title=esc(title), subtitle=esc(subtitle), nav=nav,
                               sections="\n".join(section(k, n, b) for k, n, b in sections))


# ---------------------------------------------------------------- collectors (read the run directory)


def stages_and_mode(run: RunDir) -> tuple[tuple[int, ...], str]:
    """The stages the run trains and its mode, from job.json; a run without a readable job.json predates modes
    (or is broken), so it is read as the sequential two-stage layout."""
    try:
        job = load_job(run.root)
    except OneToTwoError:
        return STAGES, DEFAULT_MODE
    return job.stages, job.training.mode


def composite_settings(run: RunDir) -> CompositeSettings:
    """The run's composite settings (job.json: its caption template and group size); the defaults where job.json
    is unreadable."""
    try:
        return load_job(run.root).composites
    except OneToTwoError:
        return CompositeSettings()


def _flat(path: Path) -> dict[str, Any] | None:
    try:
        return kohya.flatten_training_config(tomlkit.parse(path.read_text(encoding="utf-8")).unwrap())
    except (OSError, ValueError):
        return None


def sources_section(run: RunDir) -> str:
    try:
        job = load_job(run.root)
        characters = scan_sources(job.sources).characters
    except OneToTwoError as exc:
        return f'<p class="missing">sources not readable: {esc(exc.message)}</p>'
    rows = [(c.name, c.trigger, c.repeats, len(c.images), str(c.folder)) for c in characters]
    strips = "".join(f"<h3>{esc(c.name)}</h3><div class=strip>"
                     + "".join(figure(run, i.path, i.path.name, 128, 128) for i in c.images[:6]) + "</div>"
                     for c in characters)
    return table(["character", "trigger", "repeats", "images", "folder"], rows, numeric=[2, 3]) + strips


def pairing_section(run: RunDir) -> str:
    lines = manifest_records(run)
    if not lines:
        return '<p class="missing">no composites yet (manifest.jsonl missing or empty)</p>'
    settings = composite_settings(run)
    template = CaptionTemplate(settings.captions, settings.group_size)
    named = [template.characters_in(str(item.get("caption", ""))) or ("?",) * settings.group_size for item in lines]
    body = group_table(named) if settings.group_size > 2 else pair_table(named)
    if run.preview.is_file():
        body += "<div class=strip>" + figure(run, run.preview, "preview.png", 1100, 700) + "</div>"
    return body + scene_masks(run, lines)


def pair_table(named: Sequence[tuple[str, ...]]) -> str:
    """Composites per ordered pair (left, right)."""
    pairs = Counter(named)
    body = f"<p>{len(named)} composites over {len(pairs)} ordered pairs.</p>"
    return body + table(["left", "right", "composites"], [(a, b, n) for (a, b), n in sorted(pairs.items())],
                        numeric=[2])


def group_table(named: Sequence[tuple[str, ...]]) -> str:
    """Composites per unordered group, and the seatings (left to right) each group was built in."""
    seatings: dict[tuple[str, ...], Counter[tuple[str, ...]]] = {}
    for order in named:
        seatings.setdefault(tuple(sorted(order)), Counter())[order] += 1
    rows = [(", ".join(group), sum(orders.values()),
             ", ".join(f"{'/'.join(order)} x{n}" for order, n in sorted(orders.items())))
            for group, orders in sorted(seatings.items())]
    body = f"<p>{len(named)} composites over {len(seatings)} groups of {len(named[0])}.</p>"
    return body + table(["group", "composites", "seatings (left to right)"], rows, numeric=[1])


SCENE_SHOWN = 4


def scene_masks(run: RunDir, lines: Sequence[Mapping[str, Any]]) -> str:
    """Scene composites: the first few beside their loss masks (the alpha channel sd-scripts weights the loss
    by), so what stage 2 trains on can be seen; nothing for side-by-side runs."""
    files = [run.root / str(item.get("file", "")) for item in lines[:SCENE_SHOWN]]
    shown = [path for path in files if _has_alpha(path)]
    if not shown:
        return ""
    cells = "".join(figure(run, path, path.name, 256, 256) + _mask_figure(run, path) for path in shown)
    return ("<h3>Scene composites and their loss masks</h3><p>White: the characters, where stage 2's loss "
            "counts; black: the background it ignores (--background-loss-weight).</p>"
            f"<div class=strip>{cells}</div>")


def _has_alpha(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            return image.mode == "RGBA"
    except OSError:
        return False


def _mask_figure(run: RunDir, path: Path) -> str:
    mask = thumbnail(run, path, 256, 256, channel="A")
    if mask is None:
        return f'<p class="missing">{esc(path.name)}: no mask</p>'
    return f'<figure><img src="{href(run.root, mask)}" alt="mask"><figcaption>mask</figcaption></figure>'


def plan_section(run: RunDir) -> str:
    try:
        plans = plans_from_run_dir(run.root)
        console = Console(record=True, width=120, file=io.StringIO(), color_system=None)
        console.print(render_stage_plans(plans, family=run_family(run.root), measured=measured_steps(run.root)))
        return f"<pre>{esc(console.export_text())}</pre>"
    except (OneToTwoError, OSError, ValueError) as exc:
        return f'<p class="missing">plan not available: {esc(getattr(exc, "message", exc))}</p>'


def configs_section(run: RunDir) -> str:
    """Stage 2's TOML against stage 1's (shown for runs with two stages only)."""
    first, second = _flat(run.train_toml(1)), _flat(run.train_toml(2))
    if first is None or second is None:
        return '<p class="missing">stage1.train.toml / stage2.train.toml missing or not valid TOML</p>'
    diff = config_difference(first, second)
    return "<p>Keys whose value differs between the stages (flattened as sd-scripts reads them).</p>" + table(
        ["key", "stage 1", "stage 2"], diff)


def substitutions_section(run: RunDir) -> str:
    rows = []
    stages, mode = stages_and_mode(run)
    for stage in stages:
        user, effective = _flat(run.train_toml(stage)), _flat(run.effective_toml(stage))
        if user is None or effective is None:
            continue
        rows += [(stage_title(stages, stage, mode), key, before, after)
                 for key, before, after in config_difference(user, effective)]
    if not rows:
        return "<p>None: launch trained from the TOMLs as written (or has not run yet).</p>"
    return table(["stage", "key", "your TOML", "launch used"], rows)


def losses_section(run: RunDir) -> str:
    parts = []
    stages, mode = stages_and_mode(run)
    for stage in stages:
        series = tensorboard_scalars(run.tensorboard(stage))
        source = "TensorBoard events"
        series = {tag: values for tag, values in series.items() if tag.startswith("loss")}
        if not series and run.log(stage).is_file():
            series = log_losses(run.log(stage).read_text(encoding="utf-8", errors="replace"))
            source = "log"
        chart = line_chart(series)
        parts.append(f"<h3>{esc(stage_title(stages, stage, mode))}</h3>"
                     + (f"<p class=note>from the {source}</p>{chart}" if chart else
                        '<p class="missing">no loss values yet</p>'))
    return "".join(parts)


def samples_section(run: RunDir) -> str:
    parts = []
    stages, mode = stages_and_mode(run)
    for stage in stages:
        title = esc(stage_title(stages, stage, mode))
        folder = run.output_dir(stage) / "sample"
        by_epoch: dict[int, list[Path]] = {}
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            if match := kohya.SAMPLE_IMAGE.match(path.name):
                by_epoch.setdefault(int(match.group("epoch")), []).append(path)
        if not by_epoch:
            parts.append(f'<h3>{title}</h3><p class="missing">no samples yet</p>')
            continue
        parts.append(f"<h3>{title}</h3>" + "".join(
            f"<p>epoch {epoch}</p><div class=strip>" + "".join(figure(run, p, p.name, 192, 192) for p in paths)
            + "</div>" for epoch, paths in sorted(by_epoch.items())))
    return "".join(parts)


def evaluation_section(run: RunDir) -> str:
    summary_file = run.eval_dir / "evaluation.json"
    if not summary_file.is_file():
        return "<p>No evaluation yet: run <code>python -m kohya_1to2 evaluate RUN</code>.</p>"
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    records = metric.read_metrics(run.eval_metrics.read_text(encoding="utf-8")) if run.eval_metrics.is_file() else []
    body = (f"<p>{len(summary['rows'])} rows x {len(summary['prompts'])} prompts x {len(summary['seeds'])} seeds "
            f"(seeds {', '.join(map(str, summary['seeds']))}; {summary['steps']} steps; network multiplier "
            f"{summary['multiplier']}). Same seeds in every row: rows differ only by weights.</p>")
    body += metrics_html(records, *stages_and_mode(run))
    return body + prompt_grids(run, summary, "weights", 900)


def prompt_grids(run: RunDir, summary: Mapping[str, Any], rows: str, max_height: int) -> str:
    """One grid per prompt of an evaluation or comparison summary, under its kind and text."""
    body = ""
    for prompt in summary["prompts"]:
        grid = summary["grids"].get(prompt["id"])
        if grid:
            body += f"<h3>{esc(prompt['kind'])}: {esc(prompt['text'])}</h3><div class=strip>" + figure(
                run, run.root / grid, f"{prompt['id']} (rows: {rows}, columns: seeds)", GRID_THUMB_WIDTH,
                max_height)
            body += "</div>"
    return body


def metrics_html(records: Sequence[metric.Record], stages: Sequence[int] = STAGES, mode: str = DEFAULT_MODE) -> str:
    """Composite rate per row and kind with the detector's accuracy, best epoch with its rule, identity status."""
    body = ""
    calibration = next(iter(metric.of_kind(records, metric.CalibrationRecord)), None)
    if calibration:
        body += f"<p>{calibration.sentence()}</p>"  # our words and numbers only
        body += composite_rate_table(metric.of_kind(records, metric.CompositeRate))
    else:
        body += '<p class="missing">No composite rate: the run has no composites or sources to calibrate on.</p>'
    for best in metric.of_kind(records, metric.BestEpoch):
        body += f"<p>{best_epoch_html(best, stages, mode)}</p>"
    for identity in metric.of_kind(records, metric.IdentityStatus):
        body += f"<p class=note>{esc(identity.status)}.</p>"
    headers, identity_rows = metric.identity_table(records)
    if identity_rows:
        body += table(headers, identity_rows, numeric=range(1, len(headers)))
    return body


def composite_rate_table(rates: Sequence[metric.CompositeRate]) -> str:
    """One row per (weights row, prompt kind): images, judged composites, rate, and the detector's accuracy."""
    return table(metric.CompositeRate.HEADERS, [r.cells() for r in rates], numeric=[2, 3, 4, 5])


def best_epoch_html(best: metric.BestEpoch, stages: Sequence[int], mode: str) -> str:
    """`Best stage-2 epoch for pair prompts: epoch 3 (10%). Rule: ...` (a joint run: `Best joint epoch ...`)."""
    title = stage_title(stages, best.stage, mode).replace(" ", "-")
    choice = f"none (no {title} row)" if best.epoch is None else f"epoch {best.epoch} ({best.rate or 0:.0%})"
    return f"Best {esc(title)} epoch for {esc(best.kind)} prompts: <b>{esc(choice)}</b>. Rule: {esc(best.rule)}."


def comparison_section(run: RunDir) -> str | None:
    """The last `evaluate THIS OTHER...`: one grid per prompt over every run's rows, one metrics table; None
    when this run was never evaluated first of several."""
    folder = run.eval_dir / COMPARE_FOLDER
    try:
        summary = json.loads((folder / COMPARISON_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    metrics_file = folder / "metrics.jsonl"
    records = metric.read_metrics(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else []
    runs = summary["runs"]
    links = ", ".join(f"{esc(r['title'])} (this run)" if r["path"] == "." else
                      f'<a href="{quote(r["path"])}/report.html">{esc(r["title"])}</a>' for r in runs)
    body = (f"<p>From <code>{esc(summary['command'])}</code> ({esc(summary['written'])}): {links}. Every run was "
            f"sampled with the same {len(summary['prompts'])} prompts, seeds {', '.join(map(str, summary['seeds']))}, "
            f"sizes and {summary['steps']} steps; a row whose images are the same for several runs (the base model "
            f"of runs with the same base model and settings) is shown once.</p>")
    rates = metric.of_kind(records, metric.CompositeRate)
    if rates:
        body += composite_rate_table(rates)
    else:
        body += '<p class="missing">No composite rate: the runs have no composites or sources to calibrate on.</p>'
    notes = []
    for record in records:
        if isinstance(record, metric.CalibrationRecord):
            notes.append(f"{esc(record.run)}: composite detector accuracy {record.accuracy:.1%} on "
                         f"{record.positives} composites vs {record.negatives} sources.")
        elif isinstance(record, metric.BestEpoch):
            stages = next((tuple(r.get("stages", ())) for r in runs if r["title"] == record.run), ()) or STAGES
            mode = next((r["mode"] for r in runs if r["title"] == record.run), DEFAULT_MODE)
            notes.append(f"{esc(record.run)}: {best_epoch_html(record, stages, mode)}")
    notes += list(dict.fromkeys(f"{esc(r.status)}." for r in metric.of_kind(records, metric.IdentityStatus)))
    body += "".join(f"<p class=note>{note}</p>" for note in notes)
    headers, identity_rows = metric.identity_table(records)
    if identity_rows:  # each row's identity numbers, relabelled with its run like the composite rates
        body += table(headers, identity_rows, numeric=range(1, len(headers)))
    return body + prompt_grids(run, summary, "runs' weights", 1400)


def build_report(run_dir: Path) -> str:
    run = RunDir(run_dir)
    builders = {"sources": ("Sources", sources_section), "pairing": ("Pairing", pairing_section),
                "plan": ("Plan", plan_section), "configs": ("Stage 2 vs stage 1", configs_section),
                "substitutions": ("Launch substitutions", substitutions_section),
                "losses": ("Loss curves", losses_section), "samples": ("Training samples", samples_section),
                "evaluation": ("Evaluation", evaluation_section)}
    stages, _ = stages_and_mode(run)
    if len(stages) < 2:
        del builders["configs"]  # one stage: nothing to compare it with
    sections = [(key, title, build(run)) for key, (title, build) in builders.items()]
    if (comparison := comparison_section(run)) is not None:
        sections.append(("comparison", "Comparison of runs", comparison))
    subtitle = f"{run_dir.name} - written {datetime.now().strftime('%Y-%m-%d %H:%M')}"
    return render_page(run_dir.name, subtitle, sections)


def write_report(run_dir: Path) -> Path:
    """Write <run>/report.html (atomically) and return its path."""
    run = RunDir(run_dir)
    atomic_write_text(run.report, build_report(run_dir))
    return run.report
