"""The end-of-scan policy, on an in-memory key source and a fake clock: no cluster, no file."""

from __future__ import annotations

import numpy as np

from framebag.keys import EndOfScan


class Keys:
    """Key masks the test sets by hand, and a finished flag; ``polls`` counts reads."""

    def __init__(self, n: int, growing: bool = False) -> None:
        self.mask = np.zeros(n, dtype=bool)
        self.flag = False
        self.growing = growing
        self.polls = 0

    def poll(self) -> np.ndarray:
        self.polls += 1
        return self.mask.copy()

    def finished(self) -> bool:
        return self.flag


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_finished_file_is_polled_once():
    keys = Keys(4)
    keys.mask[:] = True
    end = EndOfScan(keys, live=False, timeout=1.0, clock=Clock())
    first = end.poll()
    keys.mask[:] = False
    assert end.final and end.reason == ""
    assert end.poll() is first and keys.polls == 1


def test_a_full_scan_ends_after_one_more_poll():
    keys, clock = Keys(3), Clock()
    end = EndOfScan(keys, live=True, timeout=5.0, clock=clock)
    end.poll()
    keys.mask[:] = True
    assert end.poll().all() and not end.final  # seen full now: decided at the next poll
    assert end.poll().all() and end.final and end.reason == "keys_full"
    assert keys.polls == 3
    assert end.poll().all() and keys.polls == 3  # ended: no more reads


def test_the_poll_after_the_flag_catches_the_last_keys():
    keys, clock = Keys(4), Clock()
    end = EndOfScan(keys, live=True, timeout=5.0, clock=clock)
    keys.mask[:2] = True
    end.poll()
    keys.flag = True
    keys.mask[2] = True  # the writer set a key just before the flag
    last = end.poll()
    assert end.final and end.reason == "finished_flag"
    assert last.sum() == 3


def test_the_timeout_counts_from_the_last_new_frame():
    keys, clock = Keys(10), Clock()
    end = EndOfScan(keys, live=True, timeout=5.0, clock=clock)
    end.poll()
    clock.now += 4.0
    keys.mask[0] = True
    end.poll()  # a new frame: the timer starts again here
    clock.now += 4.0
    end.poll()
    assert not end.final  # 8 s since the start, 4 s since the last new frame
    clock.now += 1.5
    end.poll()
    assert end.final and end.reason == "timeout"


def test_exactly_the_timeout_is_not_yet_past_it():
    keys, clock = Keys(2), Clock()
    end = EndOfScan(keys, live=True, timeout=5.0, clock=clock)
    end.poll()
    clock.now += 5.0
    end.poll()
    assert not end.final
    clock.now += 0.001
    end.poll()
    end.poll()
    assert end.reason == "timeout"


def test_a_growing_scan_never_ends_on_a_full_mask():
    keys, clock = Keys(3, growing=True), Clock()
    keys.mask[:] = True
    end = EndOfScan(keys, live=True, timeout=5.0, clock=clock)
    for _ in range(5):
        end.poll()
    assert not end.final
    keys.flag = True
    end.poll()
    end.poll()
    assert end.reason == "finished_flag"
