"""Two CPU processes under a real ``accelerate launch`` train the same tokenizer as one process.

With the same global batch the two runs take the same optimiser steps on the same images; only
the order of float additions differs (each process averages its half of the batch, then DDP
averages the halves; codebook statistics are summed over processes). Measured after 6 steps of
the tiny preset: validation MSE equal to 1e-10 relative, perplexity, codes used and topographic
error identical, weights within 3e-6. The tolerances below leave room for one latent vector
choosing another code after such rounding (1 of 2048 vectors).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from somtok import training

REPO = Path(__file__).resolve().parent.parent
STEPS = 6
MSE_TOLERANCE = 1e-5  # relative
PERPLEXITY_TOLERANCE = 1e-3  # relative
TOPOGRAPHIC_TOLERANCE = 2e-3  # absolute: 4 of the 2048 validation vectors

SETTINGS = [
    "--data", "sample", "--preset", "tiny", "--limit", "64", "--eval-limit", "32",
    "--batch-size", "16", "--steps", str(STEPS), "--save-every", "2", "--eval-every", "2",
    "--log-every", "1", "--keep-last", "0", "--seed", "3",
]  # fmt: skip


def _env() -> dict[str, str]:
    """One thread per process; offline and the session image cache come from conftest."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _free_port() -> int:
    """A TCP port nobody listens on now (others may run accelerate on the default 29500)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int) -> list[str]:
    # On the CPU accelerate starts several processes only through torchrun (--multi_gpu);
    # somtok's Accelerator then trains them on the CPU with gloo.
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", str(processes), "--num_machines", "1",
        "--main_process_port", str(_free_port()),
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "somtok", "train-tokenizer",
    ]  # fmt: skip


def _run(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_keep_one_codebook_and_match_one_process(tmp_path):
    env = _env()
    single, double = tmp_path / "single", tmp_path / "double"
    _run(
        [sys.executable, "-m", "somtok", "train-tokenizer", "--run-dir", str(single), *SETTINGS],
        env,
    )
    _run([*_launch(2), "--run-dir", str(double), *SETTINGS], env)

    saves = training.list_checkpoints(double / "state")
    assert [step for step, _ in saves] == [2, 4, 6]
    for _, folder in saves:
        progress = json.loads((folder / training.PROGRESS_FILE).read_text())
        prints = progress["quantizer_fingerprints"]
        assert len(prints) == 2 and prints[0] == prints[1], folder
        assert progress["quantizer_step"] == progress["step"]
        assert (folder / "random_states_1.pkl").is_file()  # both processes saved their RNG

    one = training.read_metrics(single / "metrics.jsonl", "val")[-1]
    two = training.read_metrics(double / "metrics.jsonl", "val")[-1]
    assert one["step"] == two["step"] == STEPS
    assert two["mse"] == pytest.approx(one["mse"], rel=MSE_TOLERANCE)
    assert two["perplexity"] == pytest.approx(one["perplexity"], rel=PERPLEXITY_TOLERANCE)
    assert abs(two["topographic_error"] - one["topographic_error"]) <= TOPOGRAPHIC_TOLERANCE
    assert abs(two["codes_used"] - one["codes_used"]) <= 1
