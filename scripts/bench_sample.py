"""Benchmark prior sampling: the KV cache, and our wrapper against a bare ``generate``.

All ratios come from one process and one model, each setting timed ``--repeats`` times in
turn (interleaved, so a noisy neighbour hurts all settings alike); the median is reported. On
the CPU the default clock is this process's CPU time, which other jobs on a shared machine do
not inflate; pass ``--clock wall`` for elapsed time (and always on a GPU).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_sample.py            # random "small" prior
    .venv/bin/python scripts/bench_sample.py --prior checkpoints/prior --count 64 --repeats 5
    .venv/bin/python scripts/bench_sample.py --device cuda --clock wall --count 256 --batch-size 256

Settings timed (class-conditional, temperature 1, no top-k / top-p):

- ``wrapper``: ``sample_tokens`` with the KV cache (what ``somtok sample`` does);
- ``wrapper-no-cache``: the same with ``use_cache=False`` (every step recomputes the prefix);
- ``bare-generate``: ``prior.lm.generate(do_sample=True)`` on the same prompts, no processors;
- ``wrapper-guided``: ``sample_tokens`` with guidance 3 (a doubled batch), for reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from transformers import GenerationConfig

from somtok.errors import run_script
from somtok.prior.model import PriorConfig, SomPrior, load_prior
from somtok.prior.sample import sample_tokens

# CPU time counts only this process's work, so other jobs on a shared machine do not skew the
# ratios; wall time is what a user waits, and the only meaningful clock on a GPU.
CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prior", help="a prior folder (default: a random 'small' prior)")
    parser.add_argument("--preset", default="small", help="preset of the random prior")
    parser.add_argument("--count", type=int, default=64, help="images per timed call")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-no-cache", action="store_true", help="skip the slow setting")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: this process's CPU time (steady on a shared machine; right for --threads 1 "
        "on a CPU); wall: elapsed time (use it on a GPU)",
    )
    parser.add_argument("--json", help="also write the results here")
    return parser.parse_args()


def build_prior(args: argparse.Namespace) -> SomPrior:
    if args.prior:
        return load_prior(args.prior)
    torch.manual_seed(0)
    # CIFAR-10 shapes: K = 512 codes on an 8 x 8 grid, 10 classes.
    return SomPrior(PriorConfig.from_preset(args.preset, tokenizer_id="0" * 16)).eval()


def settings(prior: SomPrior, args: argparse.Namespace) -> dict:
    """name -> a function sampling ``args.count`` images."""
    count, batch = args.count, args.batch_size
    label = 0 if prior.config.num_classes else None

    def wrapper(use_cache: bool = True, guidance: float = 1.0):
        return lambda: sample_tokens(
            prior, count, label, batch_size=batch, guidance_scale=guidance, use_cache=use_cache
        )

    def bare():
        config = GenerationConfig(
            do_sample=True, max_new_tokens=prior.config.num_image_tokens, eos_token_id=None
        )
        labels = None if label is None else torch.full((batch,), label)
        prompt = prior.vocab.class_tokens(labels, batch, prior.device)[:, None]
        for start in range(0, count, batch):
            rows = prompt[: min(batch, count - start)]
            with torch.no_grad():
                prior.lm.generate(
                    rows, attention_mask=torch.ones_like(rows), generation_config=config
                )

    table = {"wrapper": wrapper(), "bare-generate": bare}
    if not args.skip_no_cache:
        table["wrapper-no-cache"] = wrapper(use_cache=False)
    if label is not None:
        table["wrapper-guided"] = wrapper(guidance=3.0)
    return table


def time_all(table: dict, repeats: int, clock) -> dict[str, float]:
    """Median seconds per call of each setting, after one untimed warm-up call each."""
    for run in table.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in table}
    for repeat in range(repeats):
        for name, run in table.items():
            start = clock()
            run()
            times[name].append(clock() - start)
            print(f"  repeat {repeat + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    prior = build_prior(args).to(args.device)
    clock = CLOCKS[args.clock]
    seconds = time_all(settings(prior, args), args.repeats, clock)
    rate = {name: args.count / s for name, s in seconds.items()}
    result = {
        "count": args.count,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "device": args.device,
        "clock": args.clock,
        "parameters": prior.num_parameters(),
        "images_per_s": rate,
        "wrapper_overhead_vs_bare_generate": seconds["wrapper"] / seconds["bare-generate"] - 1,
    }
    if "wrapper-no-cache" in seconds:
        result["cache_speedup"] = seconds["wrapper-no-cache"] / seconds["wrapper"]
    print(
        f"prior: {prior.num_parameters():,} parameters, {args.threads} thread(s), "
        f"{args.device}, {args.clock} clock, {args.count} images per call, batch {args.batch_size}"
    )
    for name, value in rate.items():
        print(f"  {name:18s} {value:8.1f} images/s")
    print(f"  wrapper vs bare generate: {100 * result['wrapper_overhead_vs_bare_generate']:+.1f} %")
    if "cache_speedup" in result:
        print(f"  KV cache speed-up: {result['cache_speedup']:.1f} x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    sys.exit(run_script(main))
