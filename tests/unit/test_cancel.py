"""Cancel inside long network forwards (core.cancel) and the analysis' pixel-bounded chunks."""

import threading
import time

import pytest
import torch

from visage.core.cancel import checks_inside_modules
from visage.nodes.face.analyzer import chunk_frames


class Stop(Exception):
    pass


class Slow(torch.nn.Module):
    """A network whose one forward takes ~n * 20 ms, in many small sub-module calls."""

    def __init__(self, n=100):
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Identity() for _ in range(n))

    def forward(self, x):
        for layer in self.layers:
            time.sleep(0.02)
            x = layer(x)
        return x


def test_check_runs_inside_one_forward():
    flag = {"stop": False}

    def check():
        if flag["stop"]:
            raise Stop()

    net = Slow(100)  # ~2 s uninterrupted
    timer = threading.Timer(0.3, lambda: flag.update(stop=True))
    timer.start()
    t0 = time.perf_counter()
    with pytest.raises(Stop):
        with checks_inside_modules(check, every_s=0.05):
            net(torch.zeros(1))
    assert time.perf_counter() - t0 < 0.8
    # removed on exit: the same forward runs through
    net(torch.zeros(1))


def test_check_is_throttled_and_thread_local():
    calls = []
    net = Slow(10)
    with checks_inside_modules(lambda: calls.append(threading.get_ident()), every_s=0.05):
        net(torch.zeros(1))  # ~0.2 s, 11 module calls
        other = threading.Thread(target=lambda: net(torch.zeros(1)))
        other.start()
        other.join()
    assert 1 <= len(calls) <= 6, calls
    assert set(calls) == {threading.get_ident()}


def test_analysis_chunks_are_bounded_by_pixels():
    assert chunk_frames(16, 640 * 640, "cpu") == 2
    assert chunk_frames(16, 1920 * 1080, "cpu") == 1
    assert chunk_frames(16, 4096 * 4096, "cpu") == 1
    assert chunk_frames(1, 64 * 64, "cpu") == 1
    assert chunk_frames(16, 640 * 640, "cuda") == 16
    assert chunk_frames(16, 4096 * 4096, "cuda") == 4
