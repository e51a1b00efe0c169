"""Two processes (gloo on the CPU) keep one codebook: counts and sums are added before updates."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from somtok.tokenizer.quantizer import KohonenQuantizer, make_quantizer_config

WORLD_SIZE = 2
STEPS = 3


def make_quantizer(**overrides) -> KohonenQuantizer:
    torch.manual_seed(0)  # every process builds the same starting codebook
    config = make_quantizer_config(
        "ksom-gaussian", codebook_size=48, dim=8, map_shape=(6, 8), **overrides
    )
    return KohonenQuantizer(config).train()


def batches() -> torch.Tensor:
    """STEPS x WORLD_SIZE batches of different data: float32 (STEPS, WORLD_SIZE, 64, 8)."""
    return torch.randn(STEPS, WORLD_SIZE, 64, 8, generator=torch.Generator().manual_seed(1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_one_rank(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        q = make_quantizer()
        for step in batches():
            q(step[rank])  # each process sees only its own half of the step's data
            q.update_codebook()
        # "data" init: each process sees different vectors, yet all start from rank 0's.
        data_init = make_quantizer(init="data")
        data_init(batches()[0, rank])
        torch.save(
            {"codebook": q.codebook, "step": q.step, "data_init": data_init.codebook},
            f"{folder}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # about 5 s: two fresh Python processes import torch
def test_two_processes_keep_the_codebook_of_one_process_fed_both_batches(tmp_path):
    mp.spawn(train_one_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    single = make_quantizer()
    for step in batches():
        single(step.flatten(0, 1))  # both processes' data in one batch
        single.update_codebook()

    assert torch.equal(ranks[0]["codebook"], ranks[1]["codebook"])
    assert ranks[0]["step"] == ranks[1]["step"] == single.step == STEPS
    torch.testing.assert_close(ranks[0]["codebook"], single.codebook, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ranks[0]["codebook"], make_quantizer().codebook)  # it did learn
    assert torch.equal(ranks[0]["data_init"], ranks[1]["data_init"])
    first_batch = batches()[0, 0]
    assert (ranks[1]["data_init"][:, None, :] == first_batch[None]).all(-1).any(1).all()
