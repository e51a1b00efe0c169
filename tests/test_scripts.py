"""The scripts in scripts/: a user's mistake is one line and exit status 2, as in the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from somtok.errors import SomtokError, run_script

REPO = Path(__file__).resolve().parent.parent


def test_run_script_turns_a_user_error_into_one_line(capsys):
    def fails():
        raise SomtokError("image 'x.png' is 48 x 40; expected 32 x 32")

    assert run_script(fails) == 2
    assert capsys.readouterr().err == "somtok: error: image 'x.png' is 48 x 40; expected 32 x 32\n"
    assert run_script(lambda: None) == 0
    assert run_script(lambda: 3) == 3


def test_run_script_keeps_the_traceback_of_a_bug():
    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_script(bug)


@pytest.mark.parametrize(
    "script, args",
    [
        ("bench_data.py", []),
        ("bench_tokenize.py", ["--rounds", "1", "--images", "16"]),
    ],
)
def test_a_benchmark_without_cifar10_says_so_in_one_line(tmp_path, script, args):
    env = {**os.environ, "SOMTOK_CIFAR10_DIR": str(tmp_path / "missing"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("somtok: error: SOMTOK_CIFAR10_DIR="), lines
