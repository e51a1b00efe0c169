"""The app's server under load, on loopback, through ``gradio_client``.

100 requests arrive at once (50 samples, 50 interpolations) and every one must be answered;
then the server must still answer normally. Also the server's safe defaults: it listens on
127.0.0.1 only and refuses uploads beyond ``limits.MAX_FILE_BYTES``. Tiny random-init models
with 16 x 16 images (4 x 4 tokens) keep the run short: about 20 s on 2 idle cores, and within
90 s on a busy machine. ``scripts/bench_server.py`` measures the shipped models the same way.
"""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
from PIL import Image

from somtok import limits

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:::gradio.queueing"),  # its pandas calls, every request
]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REQUESTS = 50  # of each kind, all in flight together
FRAMES = 3
CLIENT_TIMEOUT_S = 120  # per HTTP call; gradio_client's default (httpx's 5 s) is too short here


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture(scope="module")
def server():
    from somtok.prior.model import PriorConfig, SomPrior
    from somtok.serve.app import SomtokApp, launch
    from somtok.tokenizer.model import SomTokenizer, TokenizerConfig

    torch.manual_seed(0)
    tokenizer = SomTokenizer(TokenizerConfig.from_preset("tiny", image_size=16))
    config = PriorConfig.from_preset(
        "tiny",
        tokenizer_id=tokenizer.tokenizer_id,
        codebook_size=tokenizer.codebook_size,
        latent_shape=tokenizer.config.latent_shape,
    )
    demo = launch(
        SomtokApp(tokenizer, SomPrior(config), dataset=None), port=free_port(), block=False
    )
    yield demo
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(
        server.local_url,
        verbose=False,
        analytics_enabled=False,
        download_files=False,
        httpx_kwargs={"timeout": CLIENT_TIMEOUT_S},
    )


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("load") / "picture.png"
    Image.effect_noise((40, 32), 64).convert("RGB").save(path)
    return path


def test_server_listens_on_loopback_only(server):
    assert server.server_name == "127.0.0.1"
    address = outside_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    with pytest.raises(OSError):
        socket.create_connection((address, server.server_port), timeout=2).close()


def test_uploads_beyond_the_limit_are_refused(server, client, tmp_path, picture):
    from gradio_client import handle_file

    assert server.max_file_size == limits.MAX_FILE_BYTES
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(limits.MAX_FILE_BYTES + 1)
    with pytest.raises(Exception, match="(?i)size|large"):
        client.predict(handle_file(str(big)), api_name="/tokenize")
    *_, score = client.predict(handle_file(str(picture)), api_name="/tokenize")
    assert score.endswith(" dB")


def test_a_hundred_requests_at_once_are_all_answered(client, picture):
    from gradio_client import handle_file

    image = handle_file(str(picture))
    start = time.perf_counter()
    samples = [
        client.submit("none", 1.0, 0, 1.0, 1.0, seed, 1, api_name="/sample")
        for seed in range(REQUESTS)
    ]
    walks = [
        client.submit(image, image, FRAMES, "swap", seed, api_name="/interpolate")
        for seed in range(REQUESTS)
    ]
    for job in samples:
        assert len(job.result(timeout=300)) == 1
    for job in walks:
        frames, gif, scores = job.result(timeout=300)
        assert len(frames) == scores["frames"] == FRAMES and gif
    seconds = time.perf_counter() - start
    assert seconds < 300, f"100 requests took {seconds:.0f} s"

    # Afterwards, an ordinary request gets an ordinary answer.
    assert len(client.predict("none", 1.0, 0, 1.0, 1.0, 7, 2, api_name="/sample")) == 2
    *_, score = client.predict(image, api_name="/tokenize")
    assert score.endswith(" dB")
