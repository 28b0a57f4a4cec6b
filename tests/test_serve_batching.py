"""Micro-batching: concurrent requests' photos embedded in shared model steps give each request
exactly what its own step would, a failing step fails only its requests, and a lone request is not
held back waiting for company."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from prodsearch.serve.batcher import DirectEmbedding, MicroBatcher


class RowSums:
    """A stand-in encoder: each row's vector depends on that row only, and every step is recorded."""

    def __init__(self, fail_on: float | None = None, delay: float = 0.01):
        self.steps: list[int] = []
        self.fail_on, self.delay = fail_on, delay

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.steps.append(len(batch))
        time.sleep(self.delay)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise ValueError("bad batch")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True) * np.ones((1, 4))


def inputs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 2, 2)).astype(np.float32)


def request(batcher, x: np.ndarray) -> np.ndarray:
    with batcher.expecting():
        return batcher.embed(x)


def test_concurrent_requests_share_steps_and_get_their_own_rows():
    encoder = RowSums()
    batcher = MicroBatcher(encoder, max_batch=8, wait_ms=20)
    requests = [inputs(i, 1 + i % 3) for i in range(24)]
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda x: request(batcher, x), requests))
    finally:
        batcher.close()
    direct = DirectEmbedding(RowSums())
    for x, got in zip(requests, answers):  # against a plain loop, one request per step
        np.testing.assert_allclose(got, direct.embed(x), rtol=1e-6)
    assert sum(encoder.steps) == sum(len(x) for x in requests)
    assert max(encoder.steps) <= 8 and len(encoder.steps) < len(requests)  # steps were shared


def test_a_lone_request_does_not_wait_for_company():
    batcher = MicroBatcher(RowSums(delay=0), max_batch=8, wait_ms=500)
    try:
        start = time.perf_counter()
        request(batcher, inputs(0, 1))
        assert time.perf_counter() - start < 0.25  # far below the 500 ms it would wait for announced requests
    finally:
        batcher.close()


def test_a_request_larger_than_a_step_runs_alone():
    encoder = RowSums()
    batcher = MicroBatcher(encoder, max_batch=4, wait_ms=5)
    try:
        assert request(batcher, inputs(1, 6)).shape == (6, 4)
    finally:
        batcher.close()
    assert encoder.steps == [6]


def test_a_failing_step_fails_its_requests_and_the_worker_carries_on():
    encoder = RowSums(fail_on=1000.0)
    batcher = MicroBatcher(encoder, max_batch=8, wait_ms=50)
    bad = np.full((1, 3, 2, 2), 1000.0, np.float32)
    barrier = threading.Barrier(2)

    def run(x):
        with batcher.expecting():
            barrier.wait()
            return batcher.embed(x)

    try:
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(run, bad), pool.submit(run, inputs(2, 1))]
            outcomes = []
            for f in futures:
                try:
                    outcomes.append(f.result())
                except ValueError:
                    outcomes.append("failed")
        assert outcomes[0] == "failed"  # the other may have shared its step, or not
        assert request(batcher, inputs(3, 2)).shape == (2, 4)
    finally:
        batcher.close()


def test_close_finishes_what_is_queued():
    encoder = RowSums(delay=0.05)
    batcher = MicroBatcher(encoder, max_batch=1, wait_ms=0)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(request, batcher, inputs(i, 1)) for i in range(4)]
        deadline = time.monotonic() + 10
        while not (encoder.steps and batcher._queue.qsize() == 3) and time.monotonic() < deadline:
            time.sleep(0.001)  # one step running, three requests queued behind it
        batcher.close()
        assert all(f.result().shape == (1, 4) for f in futures)
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.embed(inputs(0, 1))
