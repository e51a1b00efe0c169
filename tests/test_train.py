"""Training the tokenizer: the run folder, resume (exact, and after a real SIGKILL), NaN stops.

Runs use the tiny preset on a few dozen images of the bundled sample, on the CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from somtok import training
from somtok.cli import main as cli_main
from somtok.commands import train_tokenizer as command
from somtok.errors import SomtokError
from somtok.tokenizer.train import (
    BatchOrder,
    TrainConfig,
    Trainer,
    pixel_stats,
    shard,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parent.parent

# A few steps of the tiny preset on 64 images: seconds on one core.
TINY = dict(
    data="sample",
    preset="tiny",
    train_limit=64,
    eval_limit=32,
    batch_size=16,
    save_every=2,
    eval_every=2,
    log_every=1,
    plot_images=4,
    deterministic=True,
    keep_last=0,
)


def _env() -> dict[str, str]:
    """The environment of a training subprocess: one thread, offline, the session cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train(tmp_path: Path, name: str, **changes) -> Path:
    config = TrainConfig(**{**TINY, "run_dir": str(tmp_path / name), **changes})
    return train_tokenizer(config)


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    """Weights, codebook, statistics and counter of the exported model, plus Adam's state."""
    tensors = load_file(run / "model.safetensors")
    step, folder = training.latest_checkpoint(run / "state")
    optimizer = torch.load(folder / "optimizer.bin", weights_only=True)
    for key, state in optimizer["state"].items():
        for name, value in state.items():
            tensors[f"adam.{key}.{name}"] = torch.as_tensor(value)
    return tensors


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


# --- pieces -------------------------------------------------------------------------------


def test_command_choices_match_the_registries():
    from somtok.tokenizer.model import PRESETS
    from somtok.tokenizer.quantizer import INITS, QUANTIZERS

    assert set(command.PRESET_NAMES) == set(PRESETS)
    assert set(command.QUANTIZER_NAMES) == set(QUANTIZERS)
    assert set(command.INIT_NAMES) == set(INITS)
    assert command.MIXED_PRECISION == training.MIXED_PRECISION


def test_map_shape_argument():
    assert command.map_shape("32x16") == (32, 16)
    assert command.map_shape("512") == (512,)
    for bad in ("0x4", "axb", "2x2x2", ""):
        with pytest.raises(Exception, match="map shape"):
            command.map_shape(bad)


def test_batch_order_is_a_function_of_seed_and_batch_number():
    order = BatchOrder(num_images=10, batch_size=3, seed=7)
    epoch0 = np.concatenate([order(g) for g in range(3)])
    assert len(set(epoch0.tolist())) == 9  # 3 batches, no image twice, the 10th dropped
    later = [order(g).copy() for g in (4, 1)]  # jump about: same answers as in sequence
    again = BatchOrder(10, 3, seed=7)
    assert np.array_equal(later[1], again(1)) and np.array_equal(later[0], again(4))
    other_seed = np.concatenate([BatchOrder(10, 3, seed=8)(g) for g in range(3)])
    assert not np.array_equal(epoch0, other_seed)


def test_shard_splits_a_global_batch_in_rank_order():
    batch = np.arange(8)
    parts = [shard(batch, rank, 2) for rank in range(2)]
    assert np.array_equal(np.concatenate(parts), batch)
    with pytest.raises(SomtokError, match="batch-size 8"):
        shard(batch, 0, 3)


def test_pixel_stats_match_numpy_on_all_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    mean, std = pixel_stats(images, limit=1000)
    pixels = images.astype(np.float64) / 255
    assert np.allclose(mean, pixels.mean(axis=(0, 2, 3)))
    assert np.allclose(std, pixels.std(axis=(0, 2, 3)))


def test_incomplete_checkpoints_are_ignored(tmp_path):
    state = tmp_path / "state"
    for name, complete in [("step_4", True), ("step_8.tmp", True), ("step_12", False)]:
        (state / name).mkdir(parents=True)
        if complete:
            (state / name / training.PROGRESS_FILE).write_text("{}")
    assert training.latest_checkpoint(state) == (4, state / "step_4")


def test_metrics_truncate_drops_later_rows_and_a_torn_line(tmp_path):
    log = training.MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.write(step, "train", {"loss": torch.tensor(0.5)})
    with open(log.path, "a") as f:
        f.write('{"step": 4, "spl')  # a process killed mid-line
    log.truncate_after(2)
    assert [row["step"] for row in training.read_metrics(log.path)] == [1, 2]


# --- training runs ------------------------------------------------------------------------


def test_train_then_resume_continues_exactly(tmp_path):
    """A 4-step run resumed to 6 steps equals a 6-step run; the folder has every output."""
    whole = _train(tmp_path, "whole", steps=6)
    part = _train(tmp_path, "part", steps=4)
    assert json.loads((part / "config.json").read_text())  # exported at step 4 too
    torn = part / "state" / "step_6.tmp"  # as a process killed while saving step 6 leaves it
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    resumed = _train(tmp_path, "part", steps=6, resume=True)
    assert resumed == part

    _assert_same(_final_state(whole), _final_state(resumed))
    assert not torn.exists()
    rows = training.read_metrics(resumed / "metrics.jsonl", "train")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(row["loss"]) for row in rows)
    _check_run_folder(resumed, steps=6)


def _check_run_folder(run: Path, steps: int) -> None:
    from somtok.tokenizer.model import SomTokenizer

    for name in ("config.json", "model.safetensors", "README.md", "train_config.json"):
        assert (run / name).is_file(), name
    for name in ("reconstructions.png", "codebook_atlas.png"):
        assert (run / "plots" / name).stat().st_size > 0
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    val = training.read_metrics(run / "metrics.jsonl", "val")[-1]
    assert val["step"] == steps
    for key in ("mse", "psnr", "perplexity", "codes_used", "topographic_error"):
        assert math.isfinite(val[key]), key
    assert f"{val['mse']:.6g}" in (run / "README.md").read_text()

    model = SomTokenizer.from_pretrained(run)
    assert model.quantizer.step == steps
    assert model.config.pixel_mean == tuple(
        json.loads((run / "train_config.json").read_text())["pixel_mean"]
    )


def test_bf16_mixed_precision_trains(tmp_path):
    run = _train(tmp_path, "bf16", steps=2, mixed_precision="bf16", eval_every=10, save_every=10)
    rows = training.read_metrics(run / "metrics.jsonl", "train")
    assert [row["step"] for row in rows] == [1, 2]
    assert all(math.isfinite(row["loss"]) for row in rows)
    assert "bf16" in (run / "README.md").read_text()


def test_run_folder_in_use_and_changed_settings_are_refused(tmp_path):
    run = tmp_path / "run"
    (run / "state").mkdir(parents=True)
    training.write_json(
        run / "train_config.json",
        {"train": TrainConfig(**TINY).to_dict(), "pixel_mean": [0.5] * 3, "pixel_std": [0.2] * 3},
    )
    with pytest.raises(SomtokError, match="--resume"):
        train_tokenizer(TrainConfig(**{**TINY, "run_dir": str(run)}))
    changed = TrainConfig(**{**TINY, "run_dir": str(run), "resume": True, "lr": 0.1})
    with pytest.raises(SomtokError, match="lr is 0.1"):
        train_tokenizer(changed)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = cli_main(["train-tokenizer", "--resume", "--run-dir", str(tmp_path / "none")])
    assert code == 2
    assert "no run at" in capsys.readouterr().err
    code = cli_main(["train-tokenizer", "--preset", "tiny", "--batch-size", "0"])
    assert code == 2


def test_non_finite_loss_stops_without_saving(tmp_path):
    """A NaN in the weights makes the next loss NaN: the step raises and nothing is saved."""
    config = TrainConfig(**{**TINY, "run_dir": str(tmp_path / "nan"), "steps": 3})
    run = training.RunDir(Path(config.run_dir))
    accelerator = training.make_accelerator(run, log=False)
    trainer = Trainer(config, run, accelerator)
    trainer.train_step()
    trainer.step = 1
    with torch.no_grad():
        next(trainer.tokenizer.parameters()).fill_(float("nan"))
    with pytest.raises(training.NonFiniteLossError, match="step 2: non-finite loss"):
        trainer.train_step()
    with pytest.raises(training.NonFiniteLossError, match="not saved"):
        trainer.save()
    assert training.list_checkpoints(run.state) == []


# --- a real kill ----------------------------------------------------------------------------


def _command(run: Path, steps: int, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "somtok", "train-tokenizer", "--run-dir", str(run)]
    args += ["--steps", str(steps), *extra]
    if "--resume" in extra:
        return args
    for key, value in TINY.items():
        flag = {"train_limit": "--limit"}.get(key, "--" + key.replace("_", "-"))
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill a training process with SIGKILL mid-run, resume it: same final tensors."""
    env = _env()
    steps = 8
    whole = tmp_path / "whole"
    _run(_command(whole, steps), env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _command(killed, steps),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_step(killed / "metrics.jsonl", 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    assert training.latest_checkpoint(killed / "state")[0] < steps

    _run(_command(killed, steps, "--resume"), env)
    _assert_same(_final_state(whole), _final_state(killed))
    steps_logged = [row["step"] for row in training.read_metrics(killed / "metrics.jsonl", "train")]
    assert steps_logged == list(range(1, steps + 1))


def _run(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training process ended before it could be killed"
        if metrics.exists() and any(
            json.loads(line).get("step", 0) >= step
            for line in metrics.read_text().splitlines()
            if line.endswith("}")
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} in {metrics} after {timeout} s")


def test_train_config_round_trips_through_json():
    config = TrainConfig(**{**TINY, "map_shape": (4, 4)})
    back = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert dataclasses.asdict(back)["map_shape"] == (4, 4)


# --- plots ----------------------------------------------------------------------------------


def test_reconstruction_grid_alternates_rows_and_scales():
    from somtok.tokenizer import plots

    originals = torch.zeros(5, 3, 4, 4, dtype=torch.uint8)
    recons = torch.ones(5, 3, 4, 4)  # float 1.0 -> white 255
    picture = plots.reconstruction_grid(originals, recons, columns=4, scale=2)
    cell = 4 + plots.PAD
    assert picture.size == (2 * (4 * cell + plots.PAD), 2 * (4 * cell + plots.PAD))
    pixels = np.asarray(picture)[::2, ::2]  # undo the scale
    top = plots.PAD
    assert (pixels[top : top + 4, top : top + 4] == 0).all()  # row 0: originals (black)
    assert (pixels[top + cell : top + cell + 4, top : top + 4] == 255).all()  # row 1: recons


def test_codebook_atlas_puts_each_code_at_its_map_position():
    from somtok.tokenizer import plots
    from somtok.tokenizer.model import PRESETS, SomTokenizer

    torch.manual_seed(0)
    model = SomTokenizer(PRESETS["tiny"]).eval()
    rows, cols = model.quantizer.grid.shape
    atlas = np.asarray(plots.codebook_atlas(model))
    side = model.config.image_size
    cell = side + plots.PAD
    assert atlas.shape == (rows * cell + plots.PAD, cols * cell + plots.PAD, 3)
    r, c = 2, 5
    tile = atlas[plots.PAD + r * cell :][:side, plots.PAD + c * cell :][:, :side]
    code = torch.full((1, *model.config.latent_shape), r * cols + c)
    expected = plots.to_uint8(model.decode_indices(code))[0]
    assert np.array_equal(tile, expected)


def test_u_matrix_is_low_for_an_ordered_codebook():
    from somtok.tokenizer import plots
    from somtok.tokenizer.grid import SOMGrid

    grid = SOMGrid((6, 6))
    ordered = grid.coords(torch.arange(36)).float()  # each code sits at its grid position
    shuffled = ordered[torch.randperm(36, generator=torch.Generator().manual_seed(0))]
    assert plots.u_matrix(ordered, grid).mean() < 0.6 * plots.u_matrix(shuffled, grid).mean()
    assert plots.map_layout(SOMGrid((10,))) == (3, 4)  # a 1-D map wraps into rows
    assert plots.u_matrix_map(ordered, grid).size[0] > 0
    assert plots.usage_map(torch.arange(36), grid).size[0] > 0
