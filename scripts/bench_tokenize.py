"""Benchmark tokenizing: images/s of the model alone and of `somtok tokenize` end to end,
against a plain eager float32 encoding with the same weights, all in one run.

On real CIFAR-10 test images, batch 256, the cifar10 preset (random weights unless
--tokenizer; speed does not depend on the values):

  eager-encoder   the baseline: NCHW weights and input, torch.no_grad, the encoder then the
                  quantiser's nearest-code search, as a plain PyTorch module would run;
  eager-forward   SomTokenizer-style full forward (encoder, quantiser, decoder) in NCHW, for
                  reference only;
  encode          SomTokenizer.encode as shipped: channels-last, no_grad;
  compiled        encode after optimize_for_inference(): torch.compile with frozen weights;
  encode-bf16     encode after optimize_for_inference(precision="bf16", compile=False): the
                  encoder's convolutions in bfloat16, the nearest-code search in float32;
  compiled-bf16   the same, compiled;
  cli             `somtok tokenize FOLDER` in process on --images PNG files: loading the
                  checkpoint, reading and checking every PNG, encoding, writing the token file;
  cli-bf16        the same with --precision bf16.

The ceiling of float32: the encoder's floating-point operations (counted by
torch.utils.flop_counter) times the eager encoder's images/s, against this core's own float32
matrix-multiply rate (a square 1024 x 1024 matmul, timed in the same interleaved rounds). It says
how much faster exact float32 could still get: a speed-up over the eager encoder above that
matmul rate divided by the encoder's is out of reach without fewer operations or lower precision.

Rounds are interleaved so that drifts in machine load hit every method alike. The fastest
round of each method is reported (with the ratio to eager-encoder), medians beside it: on a
shared machine other jobs only ever add time, so the minimum is the steadiest estimate. On a
machine busy with other jobs, ``--threads 1 --clock cpu`` times CPU seconds instead of wall
seconds, which other processes barely disturb.
Indices of every path are compared with the baseline's (in process on the timed batch, for the
CLI on every file it wrote): the float32 paths should agree exactly (or up to rare ties broken by
float rounding); bfloat16 changes about 1 % of the tokens, so for it the reconstruction PSNR of
the --images images from bfloat16 tokens is printed beside the float32 one (PSNR of the mean
MSE, as ``somtok evaluate`` reports it).

    .venv/bin/python scripts/bench_tokenize.py [--rounds 12] [--images 2048] [--threads N]
        [--clock wall|cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from somtok import limits
from somtok.cli import main as somtok_main
from somtok.errors import run_script
from somtok.tokenizer.data import load_images
from somtok.tokenizer.model import SomTokenizer, TokenizerConfig, load_tokenizer
from somtok.tokenizer.tokens import load_tokens

BATCH = limits.ENCODE_BATCH_SIZE
MATMUL = 1024  # side of the square float32 matmul that measures the core's rate


def eager_baseline(model: SomTokenizer):
    """The same weights as a plain eager NCHW module: (encode fn, full forward fn)."""
    base = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    mean = torch.tensor(model.config.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.pixel_std).view(1, 3, 1, 1)

    @torch.no_grad()
    def encode(x: torch.Tensor) -> torch.Tensor:
        z = base.encoder((x.float() / 255 - mean) / std)  # (B, D, h, w)
        idx = base.quantizer.nearest(rearrange(z, "b d h w -> (b h w) d"))
        return rearrange(idx, "(b h w) -> b h w", b=x.shape[0], h=z.shape[2], w=z.shape[3])

    @torch.no_grad()
    def forward(x: torch.Tensor) -> torch.Tensor:
        z = base.encoder((x.float() / 255 - mean) / std)
        q = base.quantizer(rearrange(z, "b d h w -> (b h w) d"))
        codes = rearrange(q.quantized, "(b h w) d -> b d h w", b=x.shape[0], h=z.shape[2])
        return base.decoder(codes.contiguous())

    return encode, forward


def encoder_flops(model: SomTokenizer, batch: torch.Tensor) -> float:
    """Floating-point operations of the encoder per image (a multiply-add counts 2)."""
    x = torch.zeros(batch.shape, dtype=torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encoder(x)
    return counter.get_total_flops() / len(batch)


def write_pngs(pixels: np.ndarray, folder: Path) -> None:
    for i, image in enumerate(pixels):
        Image.fromarray(rearrange(image, "c h w -> h w c")).save(folder / f"{i:06d}.png")


def cli_run(folder: Path, checkpoint: Path, out: Path, *extra: str) -> None:
    args = ["tokenize", str(folder), "-o", str(out), "--tokenizer", str(checkpoint), "--force"]
    args += extra
    with contextlib.redirect_stdout(io.StringIO()):
        code = somtok_main(args)
    assert code == 0, f"somtok tokenize exited with {code}"


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


def psnr(model: SomTokenizer, pixels: np.ndarray) -> float:
    """Reconstruction PSNR (dB, [0, 1] pixels) of uint8 images through encode: that of the mean
    MSE over the images, as ``somtok evaluate`` reports it."""
    x = torch.from_numpy(pixels).float() / 255
    mse = (model.decode_indices(model.encode(pixels)) - x).square().mean()
    return float(-10 * torch.log10(mse))


def eager_all(eager_encode, pixels: np.ndarray) -> torch.Tensor:
    """The baseline's tokens of every image, batch by batch: int64 (N, h, w)."""
    parts = [
        eager_encode(torch.from_numpy(pixels[i : i + BATCH])) for i in range(0, len(pixels), BATCH)
    ]
    return torch.cat(parts)


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.tokenizer:
        model = load_tokenizer(args.tokenizer)
    else:
        model = SomTokenizer(TokenizerConfig.from_preset("cifar10")).eval()
    pixels = np.array(load_images("cifar10", "test", 32, limit=max(args.images, BATCH)).images)
    batch = torch.from_numpy(pixels[:BATCH])  # uint8 (256, 3, 32, 32)
    eager_encode, eager_forward = eager_baseline(model)
    reference = eager_encode(batch)

    print("compiling the encoder", file=sys.stderr, flush=True)
    compiled = copy.deepcopy(model).optimize_for_inference()
    start = time.perf_counter()
    compiled_indices = compiled.encode(batch)
    compile_s = time.perf_counter() - start
    bf16 = copy.deepcopy(model).optimize_for_inference(precision="bf16", compile=False)
    compiled_bf16 = copy.deepcopy(model).optimize_for_inference(precision="bf16")
    start = time.perf_counter()
    compiled_bf16_indices = compiled_bf16.encode(batch)
    compile_bf16_s = time.perf_counter() - start
    # Tokens equal to the baseline's: on the timed batch in process, on every file for the CLI.
    agree = {
        "encode": agreement(model.encode(batch), reference),
        "compiled": agreement(compiled_indices, reference),
        "encode-bf16": agreement(bf16.encode(batch), reference),
        "compiled-bf16": agreement(compiled_bf16_indices, reference),
    }
    checks = {
        "compiled_path_used": not compiled._compiled.failed,
        "compiled_bf16_path_used": not compiled_bf16._compiled.failed,
    }
    images = pixels[: args.images]
    left, right = torch.randn(MATMUL, MATMUL), torch.randn(MATMUL, MATMUL)
    quality = {"psnr_fp32": psnr(model, images), "psnr_bf16": psnr(bf16, images)}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        write_pngs(pixels[: args.images], tmp / "images")
        model.save_pretrained(tmp / "tokenizer")
        out, out_bf16 = tmp / "t.safetensors", tmp / "t-bf16.safetensors"
        methods = {
            "eager-encoder": (BATCH, lambda: eager_encode(batch)),
            "eager-forward": (BATCH, lambda: eager_forward(batch)),
            "encode": (BATCH, lambda: model.encode(batch)),
            "compiled": (BATCH, lambda: compiled.encode(batch)),
            "encode-bf16": (BATCH, lambda: bf16.encode(batch)),
            "compiled-bf16": (BATCH, lambda: compiled_bf16.encode(batch)),
            "cli": (args.images, lambda: cli_run(tmp / "images", tmp / "tokenizer", out)),
            "cli-bf16": (
                args.images,
                lambda: cli_run(tmp / "images", tmp / "tokenizer", out_bf16, "--precision", "bf16"),
            ),
            "matmul": (1, lambda: torch.mm(left, right)),
        }
        times = interleaved(methods, args.rounds, args.warmup, CLOCKS[args.clock])
        every = eager_all(eager_encode, images)
        agree["cli"] = agreement(load_tokens(out).indices, every)
        agree["cli-bf16"] = agreement(load_tokens(out_bf16).indices, every)
    matmul_s = times.pop("matmul")
    rates = {name: methods[name][0] / min(t) for name, t in times.items()}
    medians = {name: methods[name][0] / statistics.median(t) for name, t in times.items()}
    flops = encoder_flops(model, batch)
    matmul_gflops = 2 * MATMUL**3 / min(matmul_s) / 1e9
    encoder_gflops = flops * rates["eager-encoder"] / 1e9
    return {
        "images_per_s": rates,
        "float32_ceiling": {
            "encoder_mflop_per_image": flops / 1e6,
            "eager_encoder_gflop_per_s": encoder_gflops,
            "matmul_gflop_per_s": matmul_gflops,
            "eager_encoder_fraction_of_matmul": encoder_gflops / matmul_gflops,
            "largest_float32_speedup": matmul_gflops / encoder_gflops,
        },
        "ratio_to_eager_encoder": {n: r / rates["eager-encoder"] for n, r in rates.items()},
        "median_images_per_s": medians,
        "compile_seconds": compile_s,
        "compile_bf16_seconds": compile_bf16_s,
        "tokens_equal_to_eager_encoder": agree,
        "checks": checks,
        "quality": quality,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "batch": BATCH,
        "cli_images": args.images,
        "rounds": args.rounds,
        "torch": torch.__version__,
    }


def interleaved(methods: dict, rounds: int, warmup: int, clock) -> dict[str, list[float]]:
    """Seconds per call of each method, every method once per round, order rotating."""
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        print(f"round {r + 1} of {warmup + rounds}", file=sys.stderr, flush=True)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds = timed(methods[name][1], clock)
            if r >= warmup:
                times[name].append(seconds)
    return times


def report(result: dict) -> None:
    print(
        f"cifar10 preset, batch {result['batch']}, {result['threads']} thread(s), "
        f"{result['clock']} clock, best of {result['rounds']} interleaved rounds, "
        f"torch {result['torch']}"
    )
    print(
        f"in process: one batch of {result['batch']} real CIFAR-10 test images, encoded again "
        f"and again; cli: {result['cli_images']} PNG files of them, tokenized end to end"
    )
    head = f"{'method':<15}{'images/s':>10}{'x eager-encoder':>18}{'median images/s':>18}"
    print(f"{head}{'tokens = eager':>16}")
    agree = result["tokens_equal_to_eager_encoder"]
    for name, rate in result["images_per_s"].items():
        ratio = result["ratio_to_eager_encoder"][name]
        median = result["median_images_per_s"][name]
        equal = f"{100 * agree[name]:.2f} %" if name in agree else ""
        print(f"{name:<15}{rate:>10.0f}{ratio:>18.2f}{median:>18.0f}{equal:>16}")
    print(
        f"compile time: {result['compile_seconds']:.1f} s fp32, "
        f"{result['compile_bf16_seconds']:.1f} s bf16 (once per process)"
    )
    if not all(result["checks"].values()):
        print(f"the compiled path fell back to eager for some calls: {result['checks']}")
    ceiling = result["float32_ceiling"]
    print(
        f"float32 ceiling: the encoder is {ceiling['encoder_mflop_per_image']:.1f} MFLOP an image, "
        f"so the eager encoder runs at {ceiling['eager_encoder_gflop_per_s']:.1f} GFLOP/s, "
        f"{100 * ceiling['eager_encoder_fraction_of_matmul']:.0f} % of this core's float32 "
        f"{MATMUL} x {MATMUL} matmul ({ceiling['matmul_gflop_per_s']:.1f} GFLOP/s): float32 "
        f"could be at most {ceiling['largest_float32_speedup']:.2f}x the eager encoder "
        "with the same operations"
    )
    quality = result["quality"]
    print(
        f"reconstruction PSNR (of the mean MSE) of the {result['cli_images']} images: fp32 "
        f"tokens {quality['psnr_fp32']:.3f} dB, bf16 tokens {quality['psnr_bf16']:.3f} dB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--images", type=int, default=2048, help="PNG files for the CLI run")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--tokenizer", help="a checkpoint to time instead of random weights")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="'cpu' counts this process's CPU seconds: steady on a busy machine, but only "
        "comparable with --threads 1",
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(run_script(main))
