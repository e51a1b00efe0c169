"""Sampling token grids from a prior, with checked parameters and classifier-free guidance.

Every image token is drawn by ``transformers``' ``generate`` with its KV cache. Three logits
processors shape each step:

1. ``ClassifierFreeGuidance`` (only when guiding) mixes the two halves of a doubled batch, the
   class-conditional rows and the null-class rows: logits = uncond + s * (cond - uncond).
2. ``ImageCodeMask`` gives every id that is not an image code (class tokens, the null token) a
   logit of -inf, so an image position can only receive a code.
3. temperature, top-k and top-p (``transformers``' own warpers), then ``SharedDraw`` draws one
   code per sample with our seeded generator and hands ``generate`` a score that is 0 for that
   code and -inf elsewhere, repeated for both halves; ``generate`` runs greedy, so it appends
   exactly the drawn code to the conditional row and to its null-class twin.

Why the draw happens inside a processor: with a doubled batch, letting ``generate`` sample would
draw the two halves independently, so after the first step the null-class rows would describe
another image and their cached keys and values would guide the wrong sequence. Forcing the same
code onto both halves keeps the two caches in step. ``transformers`` also ships a guidance
processor (``guidance_scale=`` in ``generate``, ``UnbatchedClassifierFreeGuidanceLogitsProcessor``);
it is correct with the cache in the version we use, but runs the unconditional branch as a
second model call per step, draws from the global random generator, and reaches into the model's
cache keyword, whose name changed between ``transformers`` releases. See the README.

Shapes: B batch, h w latent size, K codes, V vocabulary.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from somtok.errors import SomtokError
from somtok.prior.model import PriorConfig, SomPrior

# Default number of samples per generate call: 64 sequences of 65 tokens keep a CPU busy.
DEFAULT_BATCH_SIZE = 64
MAX_SEED = 2**63 - 1


class SampleResult(NamedTuple):
    """indices: int64 (N, h, w) codes in [0, K); labels: int64 (N,) class, or None if unguided."""

    indices: Tensor
    labels: Tensor | None


def resolve_class(config: PriorConfig, value: int | str | None) -> int | None:
    """A class index from an index, a digit string or a name (any case); None stays None."""
    if value is None:
        return None
    if config.num_classes == 0:
        raise SomtokError(f"class {value!r} given, but this prior has no classes")
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        names = [n.lower() for n in config.class_names]
        if value.strip().lower() not in names:
            raise SomtokError(
                f"class {value!r} is unknown; expected one of {list(config.class_names)} "
                f"or an index in [0, {config.num_classes})"
            )
        return names.index(value.strip().lower())
    index = int(value)
    if not 0 <= index < config.num_classes:
        raise SomtokError(
            f"class {value!r} is out of range; expected an index in [0, {config.num_classes}) "
            f"or one of {list(config.class_names)}"
        )
    return index


def check_sampling(
    config: PriorConfig,
    *,
    class_index: int | None,
    num_samples: int,
    temperature: float,
    top_k: int | None,
    top_p: float,
    guidance_scale: float,
    seed: int,
    batch_size: int,
) -> None:
    """Raise SomtokError naming the first bad sampling parameter."""
    K = config.codebook_size
    _require(_is_int(num_samples) and num_samples >= 1, "count", num_samples, "an integer >= 1")
    _require(_is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    _require(_is_int(seed) and 0 <= seed <= MAX_SEED, "seed", seed, "an integer in [0, 2**63)")
    _require(
        _is_real(temperature) and temperature >= 0,
        "temperature",
        temperature,
        "a number >= 0 (0 means greedy)",
    )
    _require(
        top_k is None or (_is_int(top_k) and 1 <= top_k <= K),
        "top_k",
        top_k,
        f"an integer in [1, {K}] (the codebook size) or none",
    )
    _require(_is_real(top_p) and 0 < top_p <= 1, "top_p", top_p, "a number in (0, 1]")
    _require(
        _is_real(guidance_scale) and guidance_scale >= 0,
        "guidance_scale",
        guidance_scale,
        "a number >= 0 (1 is plain conditional sampling, 0 unconditional)",
    )
    if class_index is None and guidance_scale not in (0, 1):
        raise SomtokError(
            f"guidance_scale={guidance_scale} needs a class to guide towards; pass a class or "
            "leave the guidance scale at 1"
        )


def _require(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise SomtokError(f"{name}={value!r} is invalid; expected {expected}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class ClassifierFreeGuidance(LogitsProcessor):
    """(2B, V) scores, conditional rows first, to (B, V): uncond + s * (cond - uncond)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        cond, uncond = scores.float().chunk(2)
        return uncond + self.scale * (cond - uncond)


class ImageCodeMask(LogitsProcessor):
    """-inf for every id >= K (class and special tokens): image positions get only codes."""

    def __init__(self, codebook_size: int):
        self.codebook_size = codebook_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scores = scores.clone()
        scores[:, self.codebook_size :] = -math.inf
        return scores


class SharedDraw(LogitsProcessor):
    """Draw one id per sample; return scores that make greedy decoding pick it in every copy.

    Args:
        generator: the seeded source of randomness; None with ``greedy``.
        copies: how many rows of the batch carry each sample (2 with guidance, else 1).
        greedy: take the most likely id instead of drawing (temperature 0).
    """

    def __init__(self, generator: torch.Generator | None, copies: int, greedy: bool):
        self.generator = generator
        self.copies = copies
        self.greedy = greedy

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.greedy:
            chosen = scores.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            probs = scores.float().softmax(dim=-1)
            chosen = torch.multinomial(probs, 1, generator=self.generator)  # (B, 1)
        forced = torch.full_like(scores, -math.inf).scatter_(1, chosen, 0.0)  # (B, V)
        return forced.repeat(self.copies, 1)  # (copies * B, V)


def build_processors(
    config: PriorConfig,
    *,
    guided: bool,
    temperature: float,
    top_k: int | None,
    top_p: float,
    guidance_scale: float,
    generator: torch.Generator | None,
) -> LogitsProcessorList:
    """The processors of one sampling call, in the order described in the module docstring."""
    procs = [ClassifierFreeGuidance(guidance_scale)] if guided else []
    procs.append(ImageCodeMask(config.codebook_size))
    greedy = temperature == 0
    if not greedy:
        if temperature != 1:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k is not None and top_k < config.codebook_size:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1:
            procs.append(TopPLogitsWarper(top_p))
    procs.append(SharedDraw(generator, copies=2 if guided else 1, greedy=greedy))
    return LogitsProcessorList(procs)


def generation_config(config: PriorConfig, use_cache: bool) -> GenerationConfig:
    """Greedy decoding of exactly h * w tokens; the drawing happens in ``SharedDraw``."""
    return GenerationConfig(
        max_new_tokens=config.num_image_tokens,
        do_sample=False,
        use_cache=use_cache,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


@torch.no_grad()
def sample_tokens(
    prior: SomPrior,
    num_samples: int,
    class_label: int | str | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    use_cache: bool = True,
    progress: bool = False,
) -> SampleResult:
    """Sample ``num_samples`` token grids from ``prior``.

    Args:
        class_label: a class index, a class name, or None for unconditional samples.
        temperature: >= 0; 0 takes the most likely code at every step.
        top_k: keep the k most likely codes (1 <= k <= K); None keeps all.
        top_p: keep the smallest set of codes whose probability reaches top_p, in (0, 1].
        guidance_scale: s >= 0 in logits = uncond + s * (cond - uncond); 1 is plain conditional
            sampling, 0 unconditional. Needs a class unless it is 1.
        seed: the same seed, count and batch size give the same samples.
        batch_size: samples per ``generate`` call (guidance doubles the rows).
        use_cache: keep keys and values between steps (False only to measure what it saves).

    Returns: SampleResult with indices int64 (N, h, w) in [0, K) and labels int64 (N,) or None.
    """
    config = prior.config
    class_index = resolve_class(config, class_label)
    check_sampling(
        config,
        class_index=class_index,
        num_samples=num_samples,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        guidance_scale=guidance_scale,
        seed=seed,
        batch_size=batch_size,
    )
    prior.eval()
    generator = torch.Generator(device=prior.device).manual_seed(seed)
    sizes = [min(batch_size, num_samples - start) for start in range(0, num_samples, batch_size)]
    batches = []
    for size in tqdm(sizes, desc="sampling", unit="batch", disable=not progress):
        batches.append(
            _sample_batch(
                prior,
                size,
                class_index,
                generator=generator,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                guidance_scale=guidance_scale,
                use_cache=use_cache,
            )
        )
    indices = torch.cat(batches).cpu()
    labels = None
    if class_index is not None and guidance_scale != 0:
        labels = torch.full((num_samples,), class_index, dtype=torch.long)
    return SampleResult(indices=indices, labels=labels)


def _sample_batch(
    prior: SomPrior,
    size: int,
    class_index: int | None,
    *,
    generator: torch.Generator,
    temperature: float,
    top_k: int | None,
    top_p: float,
    guidance_scale: float,
    use_cache: bool,
) -> Tensor:
    """int64 (size, h, w): one generate call."""
    config, vocab = prior.config, prior.vocab
    # s = 1 is the conditional model alone and s = 0 the unconditional one: neither needs the
    # other half of the batch.
    guided = class_index is not None and guidance_scale not in (0, 1)
    labels = None
    if class_index is not None and guidance_scale != 0:
        labels = torch.full((size,), class_index, device=prior.device)
    prompt = vocab.class_tokens(labels, size, prior.device)[:, None]  # (B, 1)
    if guided:
        null = torch.full_like(prompt, vocab.null_token)
        prompt = torch.cat([prompt, null])  # (2B, 1): conditional rows first
    processors = build_processors(
        config,
        guided=guided,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        guidance_scale=guidance_scale,
        generator=generator,
    )
    out = prior.lm.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        generation_config=generation_config(config, use_cache),
        logits_processor=processors,
    )  # (rows, 1 + h*w)
    h, w = config.latent_shape
    return rearrange(out[:size, 1:], "b (h w) -> b h w", h=h, w=w)
