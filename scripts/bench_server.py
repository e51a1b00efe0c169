"""Benchmark the app's server under load: request latency (p50, p95) and the server's memory.

Starts ``somtok serve`` in a process of its own on 127.0.0.1 with the shipped checkpoints
(checkpoints/tokenizer, checkpoints/prior) where present, else random-init models of the same
presets (the same work per request; the output says which). Then, through ``gradio_client``:
one sample and one interpolation alone (warm-up), ``--alone`` more of each one after another,
then ``--requests`` samples and ``--requests`` interpolations all at once. Prints p50 / p95
latency per kind, alone and under load, and the server's resident memory (RSS) after start,
before the burst and after it. Figures for the README, not a test (tests/test_server_load.py
is the test): the app runs one request at a time, so latency under load is mostly waiting.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_server.py
    .venv/bin/python scripts/bench_server.py --requests 20 --count 4 --json bench-server.json

The server inherits this environment (OMP_NUM_THREADS included).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from somtok import paths
from somtok.errors import run_script

READY_TIMEOUT_S = 900  # importing torch, transformers and gradio: minutes on a busy machine
CLIENT_TIMEOUT_S = 600  # per HTTP call: a request may wait behind a hundred others
MIB = 2**20
KINDS = ("sample", "interpolate")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the shipped one)")
    parser.add_argument("--prior", help="prior folder (default: the shipped one)")
    parser.add_argument("--requests", type=int, default=50, help="of each kind at once (50)")
    parser.add_argument("--alone", type=int, default=5, help="timed one at a time, each kind (5)")
    parser.add_argument("--count", type=int, default=8, help="images per sample request (8)")
    parser.add_argument("--steps", type=int, default=0, help="interpolation frames (0: walk)")
    parser.add_argument("--method", default="walk", help="interpolation method (walk)")
    parser.add_argument("--port", type=int, help="server port (default: a free one)")
    parser.add_argument("--json", help="also write the figures here")
    return parser.parse_args()


# ---- the models and the pictures ----


def models(args: argparse.Namespace, folder: Path) -> tuple[Path, Path, str]:
    """Checkpoint folders for the server, and words saying where they came from."""
    import torch

    from somtok.prior.model import PriorConfig, SomPrior, load_prior
    from somtok.tokenizer.model import SomTokenizer, TokenizerConfig, load_tokenizer

    tokenizer_dir = Path(args.tokenizer or paths.DEFAULT_TOKENIZER)
    prior_dir = Path(args.prior or paths.DEFAULT_PRIOR)
    said = []
    torch.manual_seed(0)
    if tokenizer_dir.is_dir():
        tokenizer = load_tokenizer(str(tokenizer_dir))
        said.append(f"tokenizer {tokenizer_dir}")
    else:
        tokenizer = SomTokenizer(TokenizerConfig.from_preset("cifar10"))
        tokenizer_dir = folder / "tokenizer"
        tokenizer.save_pretrained(tokenizer_dir)
        said.append("random-init 'cifar10' tokenizer (none shipped)")
    if prior_dir.is_dir() and load_prior(str(prior_dir)).tokenizer_id == tokenizer.tokenizer_id:
        said.append(f"prior {prior_dir}")
    else:
        config = PriorConfig.from_preset(
            "small",
            tokenizer_id=tokenizer.tokenizer_id,
            codebook_size=tokenizer.codebook_size,
            latent_shape=tokenizer.config.latent_shape,
        )
        prior_dir = folder / "prior"
        SomPrior(config).save_pretrained(prior_dir)
        said.append("random-init 'small' prior (none shipped for this tokenizer)")
    return tokenizer_dir, prior_dir, ", ".join(said)


def pictures(folder: Path, size: int = 32) -> tuple[Path, Path]:
    """Two test images of the bundled CIFAR-10 sample, written as PNGs."""
    import numpy as np
    from PIL import Image

    from somtok.tokenizer.data import load_images

    found = load_images("sample", "test", size, limit=2)
    files = []
    for i, pixels in enumerate(found.images[:2]):
        files.append(folder / f"picture-{i}.png")
        Image.fromarray(np.moveaxis(pixels, 0, -1)).save(files[-1])
    return files[0], files[1]


# ---- the server ----


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tokenizer: Path, prior: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "somtok", "serve", "--port", str(port)]
    command += ["--tokenizer", str(tokenizer), "--prior", str(prior)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def wait_until_ready(url: str, server: subprocess.Popen, log: Path) -> float:
    """Seconds until ``url`` answers; SystemExit with the server's log if it dies or hangs."""
    start = time.perf_counter()
    while time.perf_counter() - start < READY_TIMEOUT_S:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"the server did not answer within {READY_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def rss_mib(server: subprocess.Popen) -> float:
    return psutil.Process(server.pid).memory_info().rss / MIB


# ---- the requests ----


@dataclass
class Timings:
    """Seconds from submission to answer, per request kind; failures by message."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.seconds.setdefault(kind, []).append(seconds)

    def summary(self) -> dict[str, dict[str, float]]:
        return {kind: percentiles(self.seconds[kind]) for kind in KINDS if kind in self.seconds}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=20, method="inclusive") if len(ordered) > 1 else ordered
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p95": cut[-1] if len(ordered) > 1 else ordered[0],
        "max": ordered[-1],
    }


class Requests:
    """The two request kinds, as the app's page sends them."""

    def __init__(self, client, args: argparse.Namespace, a: Path, b: Path):
        from gradio_client import handle_file

        self.client, self.args = client, args
        self.a, self.b = handle_file(str(a)), handle_file(str(b))

    def submit(self, kind: str, seed: int):
        if kind == "sample":
            settings = ("none", 1.0, 0, 1.0, 1.0, seed, self.args.count)
            return self.client.submit(*settings, api_name="/sample")
        settings = (self.a, self.b, self.args.steps, self.args.method, seed)
        return self.client.submit(*settings, api_name="/interpolate")

    def alone(self, kind: str, times: int, timings: Timings) -> None:
        for seed in range(times):
            start = time.perf_counter()
            self.submit(kind, seed).result()
            timings.add(kind, time.perf_counter() - start)

    def burst(self, count: int) -> Timings:
        """``count`` of each kind submitted at once; waits for all of them."""
        timings, jobs = Timings(), []
        for seed in range(count):
            for kind in KINDS:
                start = time.perf_counter()
                job = self.submit(kind, seed)
                job.add_done_callback(
                    lambda _, kind=kind, start=start: timings.add(kind, time.perf_counter() - start)
                )
                jobs.append(job)
        for job in jobs:
            try:
                job.result()
            except Exception as err:  # every failure counts; the figures say how many
                timings.errors.append(f"{type(err).__name__}: {err}")
        return timings


# ---- the run ----


def measure(args: argparse.Namespace, folder: Path) -> dict:
    from gradio_client import Client

    tokenizer, prior, said = models(args, folder)
    a, b = pictures(folder)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    log = folder / "server.log"
    server = start_server(tokenizer, prior, port, log)
    try:
        startup = wait_until_ready(url, server, log)
        memory = {"started": rss_mib(server)}
        client = Client(
            url, verbose=False, download_files=False, httpx_kwargs={"timeout": CLIENT_TIMEOUT_S}
        )
        requests = Requests(client, args, a, b)
        alone = Timings()
        for kind in KINDS:
            requests.alone(kind, 1, Timings())  # warm-up
            requests.alone(kind, args.alone, alone)
        memory["before_load"] = rss_mib(server)
        start = time.perf_counter()
        loaded = requests.burst(args.requests)
        burst_seconds = time.perf_counter() - start
        memory["after_load"] = rss_mib(server)
        requests.alone("sample", 1, Timings())  # still answers
    finally:
        stop(server)
    return {
        "models": said,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "port")},
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "startup_s": startup,
        "alone_s": alone.summary(),
        "load_s": loaded.summary(),
        "load_total_s": burst_seconds,
        "errors": loaded.errors,
        "rss_mib": memory,
    }


def report(result: dict) -> str:
    settings = result["settings"]
    lines = [
        f"models: {result['models']}",
        f"sample: {settings['count']} images; interpolate: {settings['method']}, "
        f"steps {settings['steps'] or 'whole walk'}; OMP_NUM_THREADS={result['threads']}",
        f"server ready in {result['startup_s']:.1f} s",
        "",
        "| requests | kind | n | p50 s | p95 s | max s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for when, key in (("one at a time", "alone_s"), ("all at once", "load_s")):
        for kind, p in result[key].items():
            lines.append(
                f"| {when} | {kind} | {p['n']} | {p['p50']:.2f} | {p['p95']:.2f} | {p['max']:.2f} |"
            )
    rss = result["rss_mib"]
    lines += [
        "",
        f"{2 * settings['requests']} requests at once: answered in "
        f"{result['load_total_s']:.1f} s, {len(result['errors'])} errors",
        f"server RSS: {rss['started']:.0f} MiB after start, {rss['before_load']:.0f} MiB before "
        f"the burst, {rss['after_load']:.0f} MiB after it",
    ]
    lines += [f"  error: {e}" for e in result["errors"][:5]]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="somtok-bench-server-") as tmp:
        result = measure(args, Path(tmp))
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(run_script(main))
