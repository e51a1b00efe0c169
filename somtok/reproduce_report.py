"""The report of a ``somtok reproduce`` sweep: table, claims, plots, written from the runs alone.

``write_report(config)`` reads whatever runs of the sweep have finished (their
``reproduce.json`` and ``metrics.jsonl``) and writes, beside each other::

    DOC                      Markdown: settings, command, table, the paper's claims judged,
                             plots, and the runs still missing
    DOC_STEM/results.csv     the table, one row per setting (mean and std over seeds)
    DOC_STEM/runs.csv        one row per finished run
    DOC_STEM/*.png           validation MSE and perplexity curves, codebook atlases, shift strips

(DOC_STEM is DOC's name without ".md", lower-cased: ``docs/RESULTS.md`` -> ``docs/results/``.)
A partial sweep gives a partial report that names the missing runs and leaves the claims that
need them unjudged. Nothing here trains or loads a model.
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from somtok import training
from somtok.reproduce import (
    ATLAS_FILE,
    EMA,
    EMA_N0_ZERO,
    KSOM,
    KSOM_N0_ZERO,
    PAPER_BATCH_SIZE,
    PAPER_EVAL_EVERY,
    PAPER_STEPS,
    PICTURED,
    RECORD_FILE,
    SHIFT_IMAGES,
    SHIFT_STRIP_MAX,
    STRIP_FILE,
    RunSpec,
    RunState,
    Setting,
    SweepConfig,
    assets_folder,
    plan,
    read_rows,
    run_folder,
    run_state,
    write_text,
)
from somtok.tokenizer import plots

# "Within x % of its best": the two thresholds of the issue.
NEAR_BEST = (0.10, 0.20)
# The target every setting's seed-mean curve is timed against: 1.1x EMA-VQ's best MSE.
TARGET_FACTOR = 1.1
# Final MSEs within 5 % of each other count as comparable: our tolerance, not the paper's.
COMPARABLE = 0.05
# N0 = 0 "hurts" a quantiser when it raises the final MSE by more than 10 %.
HURT = 0.10

# Pictures side by side: the settings shown, titles, and the layout in pixels.
ATLAS_SETTINGS = PICTURED  # their seed-0 records keep the pictures
ATLAS_TITLE = "Codebook atlases: every code decoded as a uniform token grid, at its map position"
# Atlases at half size: full-size decodes are textured and barely compress (about 0.5 MB each
# as PNG); the full ones stay in each run's plots/final_atlas.png.
ATLAS_ZOOM = 0.5
STRIP_TITLE = f"Columns: image, reconstruction (shift 0), shifts 1..{SHIFT_STRIP_MAX}"
FONT_SIZE = 14
LINE_HEIGHT = 22
GAP = 12

HOLDS, FAILS, PARTLY, UNJUDGED = "holds here", "does not hold here", "partly", "not judged"
CLEAR_GAP = 0.05  # 'clearly below' also needs the seed means this far apart (relative)


# --- reading the runs -----------------------------------------------------------------------


@dataclass
class RunView:
    """One planned run as the report sees it; ``record`` and ``curve`` only when finished."""

    spec: RunSpec
    folder: Path
    state: RunState
    record: dict[str, Any] | None = None
    curve: list[dict[str, Any]] | None = None  # validation rows, by step


def collect(config: SweepConfig) -> list[RunView]:
    """Every planned run of ``config``, in plan order, with the files of the finished ones."""
    views = []
    for spec in plan(config.settings(), config.seeds):
        folder = run_folder(config, spec)
        view = RunView(spec, folder, run_state(folder, config.steps))
        if view.state.status == "finished":
            view.record = training.read_json(folder / RECORD_FILE)
            view.curve = read_rows(folder / "metrics.jsonl", "val")
        views.append(view)
    return views


class Curve(NamedTuple):
    """A metric over validation steps, mean and (sample) std over seeds: float64 (S,) each."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seeds: int


@dataclass
class Group:
    """One setting: its planned runs and the finished ones among them."""

    setting: Setting
    planned: list[RunView]

    @property
    def finished(self) -> list[RunView]:
        return [v for v in self.planned if v.state.status == "finished"]

    def values(self, key: str) -> list[float]:
        """Per finished run, the value of ``key`` (see ``run_values``), Nones dropped."""
        found = (run_values(v).get(key) for v in self.finished)
        return [float(x) for x in found if x is not None]

    def curve(self, metric: str) -> Curve | None:
        """``metric`` of the validation rows over the steps every finished seed reached."""
        if not self.finished:
            return None
        tables = [{row["step"]: row[metric] for row in v.curve} for v in self.finished]
        steps = sorted(set.intersection(*(set(t) for t in tables)))
        if not steps:
            return None
        values = np.array([[t[s] for s in steps] for t in tables], dtype=np.float64)  # (n, S)
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(steps))
        return Curve(np.array(steps), values.mean(axis=0), std, len(values))


def groups(views: Sequence[RunView]) -> dict[str, Group]:
    """The views gathered by setting, in plan order."""
    found: dict[str, Group] = {}
    for view in views:
        name = view.spec.setting.name
        found.setdefault(name, Group(view.spec.setting, [])).planned.append(view)
    return found


def steps_within(steps: Sequence[int], mse: Sequence[float], fraction: float) -> int:
    """The first step whose validation MSE is at most (1 + fraction) times the run's best."""
    best = min(mse)
    return next(s for s, m in zip(steps, mse, strict=True) if m <= (1 + fraction) * best)


def first_step_at(curve: Curve, target: float) -> int | None:
    """The first step at which ``curve``'s mean is at most ``target``; None if never."""
    reached = np.nonzero(curve.mean <= target)[0]
    return int(curve.steps[reached[0]]) if len(reached) else None


def run_values(view: RunView) -> dict[str, float | None]:
    """The table's per-run numbers of one finished run."""
    record, test = view.record, view.record["test"]
    steps = [row["step"] for row in view.curve]
    mse = [row["mse"] for row in view.curve]
    return {
        "mse": test["mse"],
        "psnr": test["psnr"],
        "steps_to_10": steps_within(steps, mse, NEAR_BEST[0]),
        "steps_to_20": steps_within(steps, mse, NEAR_BEST[1]),
        "perplexity": test["perplexity"],
        "codes_used": test["codes_used"],
        "topographic_error": test["topographic_error"],
        "shift_change": record["shift_change"],
        "seconds_per_step": record["seconds_per_step"],
    }


def mean_std(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value); None for no values."""
    if not values:
        return None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


# --- the table ------------------------------------------------------------------------------


class Column(NamedTuple):
    """A column of per-run values shown as mean ± std, multiplied by ``scale``."""

    key: str
    header: str
    scale: float
    digits: int


COLUMNS = (
    Column("mse", "test MSE (x1e-3)", 1e3, 2),
    Column("psnr", "test PSNR (dB)", 1.0, 2),
    Column("steps_to_10", "steps to within 10 % of own best", 1.0, 0),
    Column("steps_to_20", "steps to within 20 % of own best", 1.0, 0),
    Column("perplexity", "perplexity", 1.0, 1),
    Column("codes_used", "codes used", 1.0, 0),
    Column("topographic_error", "topographic error", 1.0, 3),
    Column("shift_change", "shift change (x1e-2)", 1e2, 2),
    Column("seconds_per_step", "s / step", 1.0, 3),
)
TARGET_HEADER = f"step at {TARGET_FACTOR}x EMA-VQ best"


def target_mse(table: dict[str, Group]) -> float | None:
    """TARGET_FACTOR times the best of EMA-VQ (N0 = 1)'s seed-mean validation curve."""
    curve = table[EMA].curve("mse") if EMA in table else None
    return TARGET_FACTOR * float(curve.mean.min()) if curve is not None else None


def format_stat(values: Sequence[float], scale: float, digits: int) -> str:
    stat = mean_std([v * scale for v in values])
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(table: dict[str, Group]) -> str:
    """One row per setting: ``runs`` finished / planned, then each column as mean ± std."""
    target = target_mse(table)
    headers = ["setting", "runs", *(c.header for c in COLUMNS[:4]), TARGET_HEADER]
    headers += [c.header for c in COLUMNS[4:]]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for group in table.values():
        cells = [group.setting.label, f"{len(group.finished)}/{len(group.planned)}"]
        stats = [format_stat(group.values(c.key), c.scale, c.digits) for c in COLUMNS]
        cells += stats[:4] + [_target_cell(group, target)] + stats[4:]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _target_cell(group: Group, target: float | None) -> str:
    curve = group.curve("mse")
    if target is None or curve is None:
        return "-"
    step = first_step_at(curve, target)
    return str(step) if step is not None else f"not by {int(curve.steps[-1])}"


def results_csv(table: dict[str, Group]) -> str:
    """The table as CSV: raw values (no scaling), mean and std columns, '' where unknown."""
    target = target_mse(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    stat_headers = [f"{c.key}_{part}" for c in COLUMNS for part in ("mean", "std")]
    fixed = ["setting", "label", "runs_finished", "runs_planned"]
    writer.writerow([*fixed, *stat_headers, "step_to_ema_target"])
    for name, group in table.items():
        row: list[Any] = [name, group.setting.label, len(group.finished), len(group.planned)]
        for column in COLUMNS:
            stat = mean_std(group.values(column.key))
            row += list(stat) if stat is not None else ["", ""]
        curve = group.curve("mse")
        reached = first_step_at(curve, target) if curve is not None and target else None
        row.append("" if reached is None else reached)
        writer.writerow(row)
    return out.getvalue()


def runs_csv(views: Sequence[RunView]) -> str:
    """One row per finished run: its setting, seed, device and every per-run value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    keys = [c.key for c in COLUMNS]
    writer.writerow(["run", "setting", "seed", "device", *keys])
    for view in views:
        if view.record is not None:
            values = run_values(view)
            row = [view.spec.name, view.spec.setting.name, view.spec.seed, view.record["device"]]
            writer.writerow(row + ["" if values[k] is None else values[k] for k in keys])
    return out.getvalue()


# --- the claims -----------------------------------------------------------------------------


class Claim(NamedTuple):
    """One of the paper's claims, the verdict on this sweep's numbers and the evidence."""

    title: str
    verdict: str
    evidence: str


def _need(table: dict[str, Group], names: Sequence[str]) -> str | None:
    """None when every setting in ``names`` has a finished run, else why not."""
    missing = [n for n in names if n not in table or not table[n].finished]
    return f"Needs finished runs of {', '.join(missing)}." if missing else None


def _mean(table: dict[str, Group], name: str, key: str) -> float:
    return mean_std(table[name].values(key))[0]


def _clearly_below(a: Curve, b: Curve, i: int) -> bool:
    """Curve ``a`` below ``b`` at index ``i``: their ±1 std bands apart and the means at least
    ``CLEAR_GAP`` apart (with one seed the bands are empty, so the gap alone decides)."""
    bands_apart = a.mean[i] + a.std[i] < b.mean[i] - b.std[i]
    return bool(bands_apart and a.mean[i] <= (1 - CLEAR_GAP) * b.mean[i])


def _percent(fraction: float) -> str:
    """A signed relative difference in per cent, one decimal: '+3.2', '-18.2', '0.0' (never
    '-0.0')."""
    text = f"{100 * fraction:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def claim_speed(table: dict[str, Group]) -> Claim:
    title = "KSOM is faster than a well-configured EMA-VQ only early in training."
    missing = _need(table, [EMA, KSOM])
    if missing:
        return Claim(title, UNJUDGED, missing)
    ema, ksom = table[EMA].curve("mse"), table[KSOM].curve("mse")
    steps = np.intersect1d(ema.steps, ksom.steps)
    ema, ksom = (_at(c, steps) for c in (ema, ksom))
    first, last = 0, len(steps) - 1
    gap = (ksom.mean - ema.mean) / ema.mean  # < 0: KSOM lower
    evidence = (
        f"Validation MSE of KSOM hard (N0 = 1) relative to EMA-VQ (N0 = 1), seed means "
        f"({ksom.seeds} and {ema.seeds} seeds): {_percent(gap[first])} % at step "
        f"{steps[first]}, {_percent(gap[last])} % at step {steps[last]} (negative: KSOM "
        "lower). 'Clearly' below means the ±1 std bands over seeds do not overlap and the "
        f"seed means are at least {100 * CLEAR_GAP:.0f} % apart."
    )
    if min(ema.seeds, ksom.seeds) < 2:
        evidence += " With a single seed the bands are empty: this compares single runs."
    early, late = _clearly_below(ksom, ema, first), _clearly_below(ksom, ema, last)
    if not early:
        return Claim(title, FAILS, evidence + " KSOM is not clearly ahead at the first check.")
    if late:
        note = f" KSOM is clearly ahead early and still at step {steps[last]}: faster early "
        return Claim(title, PARTLY, evidence + note + "holds, 'only early' is not shown.")
    return Claim(title, HOLDS, evidence + " KSOM is clearly ahead early, not at the end.")


def _at(curve: Curve, steps: np.ndarray) -> Curve:
    keep = np.isin(curve.steps, steps)
    return Curve(curve.steps[keep], curve.mean[keep], curve.std[keep], curve.seeds)


def claim_final(table: dict[str, Group], steps: int) -> Claim:
    title = "Final reconstruction is comparable."
    missing = _need(table, [EMA, KSOM])
    short = steps < PAPER_STEPS
    evidence = (
        f"Runs of {steps:,} steps stop long before the paper's {PAPER_STEPS:,}, so their last "
        "MSE is not a final one: this claim cannot be judged here. "
        if short
        else ""
    )
    if missing:
        return Claim(title, UNJUDGED, evidence + missing)
    ema, ksom = _mean(table, EMA, "mse"), _mean(table, KSOM, "mse")
    diff = (ksom - ema) / ema
    evidence += (
        f"Test MSE after {steps:,} steps: KSOM hard {ksom:.5f}, EMA-VQ {ema:.5f} "
        f"(KSOM {_percent(diff)} %)."
    )
    if short:
        return Claim(title, UNJUDGED, evidence)
    verdict = HOLDS if abs(diff) <= COMPARABLE else FAILS
    return Claim(title, verdict, evidence + f" Comparable means within {100 * COMPARABLE:.0f} %.")


def claim_robust(table: dict[str, Group]) -> Claim:
    title = "KSOM is far more robust to initialisation (N0 = 0) than EMA-VQ."
    missing = _need(table, [EMA, KSOM, EMA_N0_ZERO, KSOM_N0_ZERO])
    if missing:
        return Claim(title, UNJUDGED, missing)
    ema = _mean(table, EMA_N0_ZERO, "mse") / _mean(table, EMA, "mse")
    ksom = _mean(table, KSOM_N0_ZERO, "mse") / _mean(table, KSOM, "mse")
    used = {n: _mean(table, n, "codes_used") for n in (EMA, EMA_N0_ZERO, KSOM, KSOM_N0_ZERO)}
    evidence = (
        f"Test MSE with N0 = 0 over that with N0 = 1: EMA-VQ {ema:.2f}x, KSOM hard {ksom:.2f}x. "
        f"Codes used (N0 = 1 -> 0): EMA-VQ {used[EMA]:.0f} -> {used[EMA_N0_ZERO]:.0f}, KSOM "
        f"{used[KSOM]:.0f} -> {used[KSOM_N0_ZERO]:.0f}. N0 = 0 'hurts' when it raises the MSE "
        f"by more than {100 * HURT:.0f} %."
    )
    if ema <= 1 + HURT:
        return Claim(title, FAILS, evidence + " N0 = 0 did not hurt EMA-VQ here.")
    verdict = HOLDS if ksom <= 1 + HURT else PARTLY
    return Claim(title, verdict, evidence)


def claim_ordered(table: dict[str, Group]) -> Claim:
    title = "KSOM codebooks are ordered: shifting token indices changes images gradually."
    missing = _need(table, [EMA, KSOM])
    if missing:
        return Claim(title, UNJUDGED, missing)
    shift = {n: _mean(table, n, "shift_change") for n in (EMA, KSOM)}
    topo = {n: _mean(table, n, "topographic_error") for n in (EMA, KSOM)}
    used = {n: _mean(table, n, "codes_used") for n in (EMA, KSOM)}
    evidence = (
        f"Mean pixel change of a one-cell shift (+1, +1): KSOM hard {shift[KSOM]:.4f}, EMA-VQ "
        f"{shift[EMA]:.4f} ({shift[EMA] / max(shift[KSOM], 1e-12):.1f}x KSOM's). Topographic "
        f"error: KSOM {topo[KSOM]:.3f}, EMA-VQ {topo[EMA]:.3f} (codes used: KSOM "
        f"{used[KSOM]:.0f}, EMA-VQ {used[EMA]:.0f})."
    )
    verdict, reason = ordering_verdict(shift[KSOM], shift[EMA], topo[KSOM], topo[EMA])
    return Claim(title, verdict, evidence + reason)


def ordering_verdict(
    shift_ksom: float, shift_ema: float, topo_ksom: float, topo_ema: float
) -> tuple[str, str]:
    """The verdict on 'KSOM codebooks are ordered' and the sentence that explains it.

    The shift change is what the claim is about; the topographic error backs it up, but says
    little of a codebook that uses few of its codes (with all latents on one code it can be 0).
    """
    if shift_ksom >= shift_ema:
        return FAILS, " A shift changes KSOM's images no less than EMA-VQ's."
    if topo_ksom < topo_ema:
        return HOLDS, ""
    return PARTLY, (
        " A shift changes KSOM's images less, but its topographic error is not lower: that "
        "error says little of a codebook that uses few of its codes."
    )


def claims(table: dict[str, Group], steps: int) -> list[Claim]:
    return [
        claim_speed(table),
        claim_final(table, steps),
        claim_robust(table),
        claim_ordered(table),
    ]


# --- plots ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    from somtok.fileio import atomic_output

    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def curve_plot(table: dict[str, Group], metric: str, label: str, path: Path, log: bool) -> bool:
    """Seed-mean ``metric`` over steps per setting, a band of ±1 std; False if nothing to plot."""
    curves = [(g, g.curve(metric)) for g in table.values()]
    curves = [(g, c) for g, c in curves if c is not None]
    if not curves:
        return False
    fig, ax = _pyplot().subplots(figsize=(7, 4.5))
    for group, curve in curves:
        line = ax.plot(curve.steps, curve.mean, marker="o", ms=3, label=_legend(group, curve))
        if curve.seeds > 1:
            low, high = curve.mean - curve.std, curve.mean + curve.std
            ax.fill_between(curve.steps, low, high, color=line[0].get_color(), alpha=0.2)
    target = target_mse(table) if metric == "mse" else None
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"{TARGET_FACTOR}x EMA-VQ best")
    ax.set(xlabel="training step", ylabel=label, yscale="log" if log else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save_figure(fig, path)
    return True


def _legend(group: Group, curve: Curve) -> str:
    return f"{group.setting.label} ({curve.seeds} seed{'s' if curve.seeds > 1 else ''})"


def panels_plot(
    table: dict[str, Group], names: Sequence[str], file: str, title: str, path: Path, zoom: float
) -> bool:
    """Seed-0 pictures ``file`` of the runs of ``names`` side by side; False if none exist.

    A ``zoom`` above 1 repeats pixels (no smoothing); below 1 it averages boxes of them.
    """
    found = []
    for name in names:
        view = _seed_zero(table, name)
        if view is not None:
            picture = Image.open(view.folder / "plots" / file).convert("RGB")
            size = (round(picture.width * zoom), round(picture.height * zoom))
            how = Image.Resampling.NEAREST if zoom >= 1 else Image.Resampling.BOX
            found.append((f"{table[name].setting.label}, seed 0", picture.resize(size, how)))
    if not found:
        return False
    plots.save_png(side_by_side(found, title), path)
    return True


def side_by_side(pictures: Sequence[tuple[str, Image.Image]], title: str) -> Image.Image:
    """Labelled pictures in a row on white, under a title line."""
    font = ImageFont.load_default(size=FONT_SIZE)
    width = sum(p.width for _, p in pictures) + GAP * (len(pictures) + 1)
    width = max(width, round(font.getlength(title)) + 2 * GAP)
    top = 2 * LINE_HEIGHT
    canvas = Image.new("RGB", (width, top + max(p.height for _, p in pictures) + GAP), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((GAP, GAP // 2), title, fill="black", font=font)
    left = GAP
    for label, picture in pictures:
        draw.text((left, LINE_HEIGHT + GAP // 2), label, fill="black", font=font)
        canvas.paste(picture, (left, top))
        left += picture.width + GAP
    return canvas


def _seed_zero(table: dict[str, Group], name: str) -> RunView | None:
    if name not in table:
        return None
    return next((v for v in table[name].finished if v.spec.seed == 0), None)


# --- the document ---------------------------------------------------------------------------


def command(config: SweepConfig, **changes: Any) -> str:
    """The ``somtok reproduce`` command line that runs ``config`` (with ``changes``)."""
    values = {**vars(config), **changes}
    flags = ["data", "preset", "steps", "batch_size", "eval_every", "eval_limit", "seeds"]
    parts = ["somtok", "reproduce"]
    for name in flags:
        value = values[name] if not (name == "eval_limit" and values[name] is None) else 0
        parts += [f"--{name.replace('_', '-')}", str(value)]
    if values["only"]:
        parts += ["--only", ",".join(values["only"])]
    parts += ["--out", str(values["out"])]
    if values["doc"] is not None:
        parts += ["--doc", str(values["doc"])]
    return " ".join(shlex.quote(p) for p in parts)


def write_report(config: SweepConfig) -> Path:
    """Write the Markdown report, its CSV files and plots for ``config``'s sweep; return DOC."""
    views = collect(config)
    table = groups(views)
    doc = config.doc_path
    assets = assets_folder(doc)
    write_text(assets / "results.csv", results_csv(table))
    write_text(assets / "runs.csv", runs_csv(views))
    figures = _write_plots(table, assets)
    write_text(doc, document(config, views, table, figures))
    return doc


def _write_plots(table: dict[str, Group], assets: Path) -> list[tuple[str, str]]:
    """Every plot there is data for, as (caption, file name) pairs."""
    made = []
    plots: list[tuple[str, str, Callable[[Path], bool]]] = [
        (
            "Validation MSE (seed mean, band ±1 std), log scale",
            "val_mse.png",
            lambda p: curve_plot(table, "mse", "validation MSE", p, log=True),
        ),
        (
            "Validation perplexity (seed mean, band ±1 std)",
            "val_perplexity.png",
            lambda p: curve_plot(table, "perplexity", "perplexity", p, log=False),
        ),
        (
            "Codebook atlases at half size (full size: plots/final_atlas.png in each run)",
            "atlases.png",
            lambda p: panels_plot(
                table, ATLAS_SETTINGS, ATLAS_FILE, ATLAS_TITLE, p, zoom=ATLAS_ZOOM
            ),
        ),
        (
            "Shift strips: test image, its reconstruction, then every token shifted by "
            f"1..{SHIFT_STRIP_MAX} cells on both axes",
            "shift_strips.png",
            lambda p: panels_plot(table, [EMA, KSOM], STRIP_FILE, STRIP_TITLE, p, zoom=2),
        ),
    ]
    for caption, file, draw in plots:
        if draw(assets / file):
            made.append((caption, file))
    return made


def document(
    config: SweepConfig,
    views: Sequence[RunView],
    table: dict[str, Group],
    figures: Sequence[tuple[str, str]],
) -> str:
    """The Markdown report."""
    finished = [v for v in views if v.state.status == "finished"]
    assets = assets_folder(config.doc_path).name
    parts = [_header(config, views, finished), _setting_text(config, finished)]
    parts.append("## Table\n\n" + markdown_table(table))
    parts.append(
        f"As CSV: [`{assets}/results.csv`]({assets}/results.csv) (per setting), "
        f"[`{assets}/runs.csv`]({assets}/runs.csv) (per run).\n"
    )
    parts.append(_claims_text(table, config.steps))
    parts.append(_figures_text(figures, assets))
    parts.append(_missing_text(views))
    parts.append(_measures_text(config))
    return "\n".join(parts)


def _header(config: SweepConfig, views: Sequence[RunView], finished: Sequence[RunView]) -> str:
    records = _relative(config.records, config)
    text = (
        "# Reproducing the KSOM paper's findings\n\n"
        "Generated by `somtok reproduce` from the runs in "
        f"`{config.out}` and the records of finished runs in [`{records}`]({records})"
        " (measurements and curves, no weights), so that it can be rebuilt, and the sweep "
        "continued, on another machine: do not edit by hand, re-run the command below "
        "instead.\n\n"
        f"**{len(finished)} of {len(views)} planned runs finished.**"
    )
    if len(finished) < len(views):
        text += (
            " This is a partial report: the missing runs are listed at the end, and claims "
            "that need them are marked as not judged."
        )
    return text + "\n"


def _relative(path: Path, config: SweepConfig) -> str:
    """``path`` relative to the report's folder when it lies below it."""
    try:
        return str(path.relative_to(config.doc_path.parent))
    except ValueError:
        return str(path)


def _setting_text(config: SweepConfig, finished: Sequence[RunView]) -> str:
    devices = sorted({v.record["device"] for v in finished}) or ["-"]
    eval_limit = "all" if config.eval_limit is None else f"{config.eval_limit:,}"
    paper = command(
        SweepConfig(),
        steps=PAPER_STEPS,
        batch_size=PAPER_BATCH_SIZE,
        eval_every=PAPER_EVAL_EVERY,
        out=Path("runs/reproduce-paper"),
    )
    return (
        "## Setting and command\n\n"
        f"Data `{config.data}`, model preset `{config.preset}`, {config.steps:,} steps at batch "
        f"{config.batch_size}, validation every {config.eval_every} steps on {eval_limit} test "
        "images, final measurements on the whole test split. Seeds: "
        f"{config.seeds} for the EMA-VQ / KSOM hard pairs, 1 for the other settings. "
        f"Trained on: {', '.join(devices)}.\n\n"
        "This report was made by (it skips finished runs and resumes interrupted ones; add "
        "`--report-only` to rebuild the report alone):\n\n"
        f"```\n{command(config)}\n```\n\n"
        f"The paper's full setting ({PAPER_STEPS:,} steps at batch {PAPER_BATCH_SIZE}) is the "
        "same command with other flags; it needs a GPU:\n\n"
        f"```\n{paper}\n```\n"
    )


def _claims_text(table: dict[str, Group], steps: int) -> str:
    lines = ["## The paper's claims, on these runs\n"]
    for number, claim in enumerate(claims(table, steps), start=1):
        lines.append(f"{number}. **{claim.title}** Verdict: *{claim.verdict}*. {claim.evidence}")
    lines.append(
        "\nVerdicts follow fixed rules, written out in the evidence; with three seeds or "
        "fewer they are indications, not tests of significance."
    )
    return "\n".join(lines) + "\n"


def _figures_text(figures: Sequence[tuple[str, str]], assets: str) -> str:
    if not figures:
        return "## Plots\n\nNo finished runs yet, so no plots.\n"
    blocks = [f"**{caption}**\n\n![{caption}]({assets}/{file})\n" for caption, file in figures]
    return "## Plots\n\n" + "\n".join(blocks)


def _missing_text(views: Sequence[RunView]) -> str:
    missing = [v for v in views if v.state.status != "finished"]
    if not missing:
        return "## Missing runs\n\nNone: every planned run finished.\n"
    lines = [f"- `{v.spec.name}`: {v.state.status}, {v.state.detail}" for v in missing]
    return "## Missing runs\n\n" + "\n".join(lines) + "\n"


def _measures_text(config: SweepConfig) -> str:
    near = " and ".join(f"{100 * f:.0f} %" for f in NEAR_BEST)
    return (
        "## How each number is measured\n\n"
        "- Test MSE and PSNR: of `decode_indices(encode(x))` on [0, 1] pixels over the whole "
        "test split; PSNR is 10 log10(1 / MSE) of that MSE. Mean ± sample std over seeds.\n"
        f"- Steps to within {near} of own best: the first validation step at which a run's "
        "validation MSE is at most 1.1 (1.2) times the lowest it reached.\n"
        f"- {TARGET_HEADER}: the first validation step at which the setting's seed-mean curve "
        f"is at most {TARGET_FACTOR} times the lowest point of EMA-VQ (N0 = 1)'s seed-mean "
        "curve.\n"
        "- Perplexity (exp of the entropy of the code histogram), codes used and topographic "
        "error (share of latent vectors whose two nearest codes are not map neighbours): on "
        "the whole test split.\n"
        "- Shift change: every token of the first "
        f"{SHIFT_IMAGES} test images moved one cell on every map axis ((+1, +1), clamped at "
        "the border), decoded, and compared with the unshifted decode: mean absolute change "
        "of [0, 1] pixels.\n"
        "- s / step: the median over a run's logged training windows of the seconds per "
        "optimiser step (the median leaves out windows that held a validation or a save). "
        "It depends on the machine and on what else ran on it at the time.\n"
        "- FID and LPIPS are not reported: they need network weights that cannot be fetched "
        "here.\n"
    )
