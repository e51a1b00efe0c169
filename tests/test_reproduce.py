"""``somtok reproduce``: the plan, the measurements, the report, and a tiny sweep end to end.

The end-to-end test trains the tiny preset on the bundled sample for a few steps: it checks
that the sweep skips, resumes and reports as it should, not what the numbers say about KSOM.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from somtok import reproduce, reproduce_report
from somtok.cli import main as cli_main
from somtok.commands import reproduce as command
from somtok.errors import SomtokError
from somtok.reproduce import RunSpec, SweepConfig
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig
from somtok.tokenizer.quantizer import QuantizerConfig

REPO = Path(__file__).resolve().parent.parent
PAIR = ("ema-n0=1", "ksom-hard-n0=1")

# A sweep that takes seconds: the tiny preset, a few steps, validation every 4.
TINY = dict(data="sample", preset="tiny", steps=12, batch_size=16, eval_every=4, eval_limit=32)


def _setting(name: str) -> reproduce.Setting:
    return next(s for s in reproduce.SETTINGS if s.name == name)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- the plan and the settings --------------------------------------------------------------


def test_command_names_match_the_settings():
    assert command.SETTING_NAMES == reproduce.SETTING_NAMES


def test_plan_puts_the_most_informative_runs_first():
    runs = [spec.name for spec in reproduce.plan(reproduce.SETTINGS, seeds=3)]
    pairs = ["ema-n0=1", "ksom-hard-n0=1", "ema-n0=0", "ksom-hard-n0=0"]
    singles = ["ksom-gaussian", "ksom-hard-1d", "vq", "gd-som"]
    assert runs == (
        [f"{n}-seed0" for n in pairs]
        + [f"{n}-seed0" for n in singles]
        + [f"{n}-seed1" for n in pairs]
        + [f"{n}-seed2" for n in pairs]
    )
    assert len(reproduce.plan(reproduce.SETTINGS, seeds=1)) == 8


def test_train_configs_follow_the_settings(tmp_path):
    config = SweepConfig(out=tmp_path, **TINY)
    one_d = reproduce.train_config(RunSpec(_setting("ksom-hard-1d"), 0), config, tmp_path, False)
    assert one_d.map_shape == (64,)  # all of the tiny preset's 64 codes on a line
    zero = reproduce.train_config(RunSpec(_setting("ema-n0=0"), 2), config, tmp_path, True)
    assert (zero.quantizer, zero.init_cluster_size, zero.seed) == ("ema", 0.0, 2)
    assert (zero.steps, zero.batch_size, zero.eval_limit, zero.resume) == (12, 16, 32, True)
    assert zero.save_every == zero.eval_every == 4


@pytest.mark.parametrize(
    "changes, flag",
    [
        ({"only": ("ema-n0=1", "nope")}, "nope"),
        ({"steps": 0}, "--steps"),
        ({"seeds": 0}, "--seeds"),
        ({"eval_limit": -1}, "--eval-limit"),
    ],
)
def test_bad_settings_name_the_flag(changes, flag):
    with pytest.raises(SomtokError, match=flag):
        SweepConfig(**changes)


def test_cli_refuses_an_unknown_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reproduce", "--only", "ema-n0=1,ksom"])
    assert exit_info.value.code == 2
    assert "ksom" in capsys.readouterr().err


def test_a_sweep_folder_keeps_its_settings(tmp_path):
    reproduce.check_sweep_file(SweepConfig(out=tmp_path, **TINY))
    changed = SweepConfig(out=tmp_path, **{**TINY, "batch_size": 32})
    with pytest.raises(SomtokError, match="--batch-size is 32 .* was run with 16"):
        reproduce.run_sweep(changed)


def test_one_sweep_per_folder_at_a_time(tmp_path):
    with reproduce.sweep_lock(tmp_path), pytest.raises(SomtokError, match="another"):
        reproduce.run_sweep(SweepConfig(out=tmp_path, **TINY))
    with reproduce.sweep_lock(tmp_path):  # released
        pass


def test_runs_trained_by_hand_must_match_the_sweep(tmp_path):
    config = SweepConfig(out=tmp_path, **TINY)
    spec = RunSpec(_setting("ksom-hard-n0=1"), 0)
    expected = reproduce.train_config(spec, config, tmp_path, resume=True)

    def saved(**changes) -> None:
        train = {**expected.to_dict(), "resume": False, "keep_last": 3, **changes}
        stats = {"pixel_mean": [0.5] * 3, "pixel_std": [0.25] * 3}
        (tmp_path / "train_config.json").write_text(json.dumps({"train": train, **stats}))

    saved(init_cluster_size=None)  # N0 left at its default, 1
    reproduce.check_run_settings(tmp_path, expected)
    saved(init_cluster_size=0.0, batch_size=32)
    with pytest.raises(SomtokError, match="other batch_size, quantizer settings"):
        reproduce.check_run_settings(tmp_path, expected)


def test_script_help_runs():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--report-only" in done.stdout


# --- measurements ---------------------------------------------------------------------------


def test_summaries_of_curves():
    assert reproduce_report.steps_within([250, 500, 750], [2.0, 1.15, 1.0], 0.10) == 750
    assert reproduce_report.steps_within([250, 500, 750], [2.0, 1.15, 1.0], 0.20) == 500
    curve = reproduce_report.Curve(np.array([1, 2, 3]), np.array([3.0, 1.0, 2.0]), None, 1)
    assert reproduce_report.first_step_at(curve, 1.5) == 2
    assert reproduce_report.first_step_at(curve, 0.5) is None
    assert reproduce_report.mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert reproduce_report.mean_std([5.0]) == (5.0, 0.0)
    assert reproduce_report.mean_std([]) is None


def _curve(means, stds, seeds):
    steps = np.arange(1, len(means) + 1)
    return reproduce_report.Curve(steps, np.array(means), np.array(stds), seeds)


def test_clearly_below_needs_apart_bands_and_a_real_gap():
    clearly = reproduce_report._clearly_below
    # Three seeds: 1.0 ± 0.1 against 2.0 ± 0.1 is clear; against 1.15 ± 0.1 the bands overlap.
    assert clearly(_curve([1.0], [0.1], 3), _curve([2.0], [0.1], 3), 0)
    assert not clearly(_curve([1.0], [0.1], 3), _curve([1.15], [0.1], 3), 0)
    # One seed: no bands, so a hair's difference is not 'clearly' below, 10 % is.
    assert not clearly(_curve([0.999], [0.0], 1), _curve([1.0], [0.0], 1), 0)
    assert clearly(_curve([0.9], [0.0], 1), _curve([1.0], [0.0], 1), 0)


def test_ordering_verdict_rests_on_the_shift_change():
    verdict = reproduce_report.ordering_verdict
    assert verdict(0.07, 0.20, 0.57, 0.99)[0] == reproduce_report.HOLDS
    # A collapsed EMA codebook can have a topographic error of 0: the shift still decides.
    held, reason = verdict(0.02, 0.15, 0.64, 0.0)
    assert held == reproduce_report.PARTLY and "few of its codes" in reason
    assert verdict(0.20, 0.07, 0.57, 0.99)[0] == reproduce_report.FAILS


def test_seconds_per_step_is_the_median_rate():
    rows = [{"steps_per_s": r} for r in (2.0, 4.0, 100.0)] + [{"loss": 1.0}]
    assert reproduce.seconds_per_step(rows) == pytest.approx(0.25)
    assert reproduce.seconds_per_step([]) is None


def test_metrics_rows_survive_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 4, "split": "val", "mse": 2.0}, {"step": 4, "split": "val", "mse": 1.0}]
    rows += [{"step": 2, "split": "train", "loss": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "spl')
    assert reproduce.read_rows(path, "val") == [rows[1]]


@pytest.mark.parametrize("map_shape", [(8, 8), (64,)])
def test_shift_change_measures_the_decoded_change(map_shape):
    torch.manual_seed(0)
    quantizer = QuantizerConfig(codebook_size=64, dim=16, map_shape=map_shape)
    tokenizer = SomTokenizer(TokenizerConfig.from_preset("tiny", quantizer=quantizer)).eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert reproduce.shift_change(tokenizer, images, 0) == 0.0

    indices = tokenizer.encode(images)
    moved = tokenizer.quantizer.grid.shift(indices, (1,) * len(map_shape))
    expected = (tokenizer.decode_indices(moved) - tokenizer.decode_indices(indices)).abs().mean()
    assert reproduce.shift_change(tokenizer, images, 1) == pytest.approx(float(expected))
    assert reproduce.shift_change(tokenizer, images, 1) > 0

    strip = reproduce.shift_strip(tokenizer, images, 4)  # rows: image, shifts 0..4
    assert strip.size == (6 * 34 + 2, 3 * 34 + 2)


# --- the report -----------------------------------------------------------------------------


def test_report_of_an_empty_sweep_says_what_is_missing(tmp_path):
    failed = tmp_path / "ema-n0=0-seed0"
    failed.mkdir()
    (failed / reproduce.FAILED_FILE).write_text(json.dumps({"error": "non-finite loss"}))

    doc = reproduce.reproduce(SweepConfig(out=tmp_path), report_only=True)

    text = doc.read_text()
    assert doc == tmp_path / "RESULTS.md"
    assert "**0 of 16 planned runs finished.**" in text
    assert "`ema-n0=0-seed0`: failed, non-finite loss" in text
    assert "`gd-som-seed0`: new, not started" in text
    assert text.count("Verdict: *not judged*") == 4
    assert "No finished runs yet" in text
    assert not list((tmp_path / "results").glob("*.png"))
    assert [row["runs_finished"] for row in _read_csv(tmp_path / "results" / "results.csv")] == [
        "0"
    ] * 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RESULTS.md", failed.name, "results"]
    # The failure is recorded beside the report, so another machine need not train it again.
    record = tmp_path / "results" / "runs" / failed.name / reproduce.FAILED_FILE
    assert json.loads(record.read_text()) == {"error": "non-finite loss"}


def _record(folder: Path, mse: float) -> None:
    """A finished run's record: its measurements and one validation row."""
    folder.mkdir(parents=True)
    (folder / reproduce.RECORD_FILE).write_text(json.dumps({"test": {"mse": mse}}))
    (folder / "metrics.jsonl").write_text(json.dumps({"split": "val", "step": 12}) + "\n")


def test_a_run_recorded_beside_the_report_counts_where_out_lacks_it(tmp_path):
    config = SweepConfig(out=tmp_path / "sweep", doc=tmp_path / "docs" / "RESULTS.md", **TINY)
    assert config.records == tmp_path / "docs" / "results" / "runs"
    spec = RunSpec(_setting("ema-n0=1"), 0)
    assert reproduce.run_folder(config, spec) == config.out / spec.name  # nothing anywhere

    _record(config.records / spec.name, 0.01)
    assert reproduce.run_folder(config, spec) == config.records / spec.name

    # A run OUT holds is that run, even unfinished: it resumes there.
    (config.out / spec.name).mkdir(parents=True)
    (config.out / spec.name / "train_config.json").write_text("{}")
    assert reproduce.run_folder(config, spec) == config.out / spec.name


def test_records_of_another_sweep_are_refused(tmp_path):
    config = SweepConfig(out=tmp_path / "sweep", doc=tmp_path / "RESULTS.md", **TINY)
    config.records.mkdir(parents=True)
    (config.records / reproduce.SWEEP_FILE).write_text(json.dumps({**config.shared(), "steps": 24}))
    with pytest.raises(SomtokError, match=r"recorded in .* other steps; expected the same"):
        reproduce.run_sweep(config)


@pytest.mark.slow
def test_tiny_sweep_trains_resumes_skips_and_reports(tmp_path):
    from somtok.tokenizer.train import train_tokenizer

    out = tmp_path / "sweep"
    doc = tmp_path / "docs" / "RESULTS.md"
    results = tmp_path / "docs" / "results"
    config = SweepConfig(out=out, doc=doc, seeds=2, only=PAIR, **TINY)

    # A run interrupted after its step-8 checkpoint: state, metrics, no exported model.
    spec = RunSpec(_setting("ksom-hard-n0=1"), 1)
    partial = out / spec.name
    early = reproduce.train_config(spec, config, partial, resume=False)
    train_tokenizer(early.__class__(**{**early.to_dict(), "steps": 8}))
    for name in ("model.safetensors", "config.json", "README.md"):
        (partial / name).unlink()
    before = (partial / "metrics.jsonl").read_text().splitlines()

    reproduce.reproduce(config)

    # The interrupted run continued: its first 8 steps' rows are the ones logged before.
    after = (partial / "metrics.jsonl").read_text().splitlines()
    assert after[: len(before)] == before
    assert reproduce.last_val_step(partial) == 12
    records = {}
    for seed in (0, 1):
        for name in PAIR:
            record = json.loads((out / f"{name}-seed{seed}" / reproduce.RECORD_FILE).read_text())
            assert record["test"]["images"] == 500  # the whole test split of the sample
            records[f"{name}-seed{seed}"] = record

    # The table is the mean of the runs; PSNR is that of each run's MSE.
    runs = {row["run"]: row for row in _read_csv(results / "runs.csv")}
    assert set(runs) == set(records)
    for name, row in runs.items():
        assert float(row["mse"]) == pytest.approx(records[name]["test"]["mse"])
        assert float(row["psnr"]) == pytest.approx(10 * math.log10(1 / float(row["mse"])))
    for row in _read_csv(results / "results.csv"):
        mses = [float(r["mse"]) for r in runs.values() if r["setting"] == row["setting"]]
        assert (row["runs_finished"], row["runs_planned"]) == ("2", "2")
        assert float(row["mse_mean"]) == pytest.approx(np.mean(mses))
        assert float(row["mse_std"]) == pytest.approx(np.std(mses, ddof=1))
    for picture in ("val_mse", "val_perplexity", "atlases", "shift_strips"):
        assert Image.open(results / f"{picture}.png").format == "PNG"
    text = doc.read_text()
    assert "**4 of 4 planned runs finished.**" in text
    assert reproduce_report.command(config) in text
    assert "2. **Final reconstruction is comparable.** Verdict: *not judged*" in text
    assert "Needs finished runs of ema-n0=0, ksom-hard-n0=0." in text
    assert "this claim cannot be judged here" in text

    # Running again trains and measures nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/reproduce.json")}
    reproduce.run_sweep(config)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/reproduce.json")} == stamps

    # Each run is recorded beside the report without weights; pictures for the seed-0 runs.
    parts = ["metrics.jsonl", "reproduce.json"]
    pictures = ["plots/final_atlas.png", "plots/shift_strip.png"]
    expected = {"sweep.json"} | {
        f"{name}-seed{seed}/{part}"
        for name in PAIR
        for seed in (0, 1)
        for part in parts + (pictures if seed == 0 else [])
    }
    records = results / "runs"
    assert {p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file()} == (
        expected
    )
    for part in parts + pictures:
        assert (records / "ema-n0=1-seed0" / part).read_bytes() == (
            out / "ema-n0=1-seed0" / part
        ).read_bytes()

    # On a machine without OUT the records rebuild the same report, whatever the flags say, and
    # the sweep trains nothing again.
    shutil.rmtree(out)
    elsewhere = SweepConfig(out=out, doc=doc, seeds=2, only=PAIR)  # the default 1,500 steps
    reproduce.reproduce(elsewhere, report_only=True)
    assert doc.read_text() == text
    reproduce.run_sweep(config)
    assert not [p for p in out.iterdir() if p.is_dir()]

    # --report-only plans a third seed, reads the sweep's own settings and trains nothing.
    folders = sorted(out.iterdir())
    argv = ["reproduce", "--report-only", "--out", str(out), "--doc", str(doc), "--seeds", "3"]
    argv += ["--steps", "999"]
    assert cli_main([*argv, "--only", ",".join(PAIR)]) == 0
    assert sorted(out.iterdir()) == folders
    text = doc.read_text()
    assert "**4 of 6 planned runs finished.**" in text
    assert "`ema-n0=1-seed2`: new, not started" in text
    assert "--steps 12" in text


def test_percentages_never_read_minus_zero():
    assert reproduce_report._percent(-0.0004) == "0.0"
    assert reproduce_report._percent(-0.182) == "-18.2"
    assert reproduce_report._percent(0.032) == "+3.2"
