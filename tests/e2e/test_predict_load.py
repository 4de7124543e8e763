"""Batching under load: 64 concurrent clients on a model heavy enough that
inference, not HTTP, is the cost. With batching the mean batch is over 8 and
throughput at least 3x the same run with max_batch_size = 1."""

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import Gateway

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import make_models  # noqa: E402

CLIENTS = 64


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return make_models.write_wide(tmp_path_factory.mktemp("wide"), 2048, 8)


def hammer(g, seconds):
    """Requests answered per second by CLIENTS threads, each with its own
    connection, for `seconds`."""
    body = {"model": "wide", "data": [0.01 * i for i in range(64)]}
    done, failed = [0] * CLIENTS, []
    start = threading.Barrier(CLIENTS + 1)
    until = []

    def client(i):
        with httpx.Client(timeout=60) as c:
            c.post(f"{g.base_url}/predict", json=body)  # connect, warm
            start.wait()
            while time.monotonic() < until[0]:
                r = c.post(f"{g.base_url}/predict", json=body)
                if r.status_code != 200:
                    failed.append(r.text)
                    return
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    until.append(time.monotonic() + seconds)
    start.wait()
    for t in threads:
        t.join()
    assert not failed, failed[:3]
    return sum(done) / seconds


def run(wide, tmp_path, max_batch_size):
    g = Gateway(f"""
[[predictors]]
name = "wide"
path = "{wide}"
max_batch_size = {max_batch_size}
max_queue_delay_us = 2000
queue_depth = 256
""", tmp_path=tmp_path)
    try:
        hammer(g, 1)
        size = 'sluice_predict_batch_size_{}{{model="wide"}}'
        n0, s0 = g.metric(size.format("count")), g.metric(size.format("sum"))
        rps = hammer(g, 4)
        n1, s1 = g.metric(size.format("count")), g.metric(size.format("sum"))
        return rps, (s1 - s0) / max(1, n1 - n0)
    finally:
        g.stop()


def test_batching_under_64_clients(wide, tmp_path):
    batched, mean_batch = run(wide, tmp_path, 32)
    (tmp_path / "one").mkdir()
    alone, mean_one = run(wide, tmp_path / "one", 1)
    print(f"batched {batched:.0f}/s (mean batch {mean_batch:.1f}), max_batch_size=1 {alone:.0f}/s")
    assert mean_one == 1
    assert mean_batch > 8, mean_batch
    assert batched >= 3 * alone, (batched, alone)
