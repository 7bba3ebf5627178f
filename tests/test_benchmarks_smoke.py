"""The benchmarks' shared measuring code (`benchmarks/measure.py`) and their command lines, without
running a benchmark (those take minutes even at `--size tiny`)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import measure
from segserve.common import rle

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("sam2_image", "automatic_masks", "mask2former", "text_to_mask", "video")


def test_interleaved_warms_up_every_side_then_rotates_the_order():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = measure.interleaved(cases, rounds=5, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # the warm-up: every side once, untimed
    rounds = [calls[3 + 3 * i:6 + 3 * i] for i in range(5)]
    assert [r[0] for r in rounds] == ["a", "b", "c", "a", "b"]  # each round starts one side later
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert {name: len(t) for name, t in times.items()} == {"a": 5, "b": 5, "c": 5}


def test_self_timed_cases_report_their_own_seconds():
    times = measure.interleaved({"x": lambda: (0.25, "result")}, rounds=5, self_timed=("x",))
    assert times["x"] == [0.25] * 5


def test_spread_is_median_quartiles_and_range():
    summary = measure.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary == {"median": 3.0, "q25": 2.0, "q75": 4.0, "min": 1.0, "max": 5.0, "runs": 5}


def test_no_targets_in_the_measuring_code():
    assert not hasattr(measure, "target")


def test_rle_masks_match_the_served_encoding():
    masks = np.random.default_rng(0).random((2, 3, 17, 9)) > 0.5
    encoded = measure.rle_masks(masks)
    assert len(encoded) == 6
    assert encoded[4] == rle.encode(masks[1, 1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_refuses_fewer_than_five_rounds(script):
    flag = {"sam2_image": "--encoder-runs", "mask2former": "--runs", "text_to_mask": "--runs"}.get(script, "--rounds")
    done = subprocess.run([sys.executable, f"benchmarks/{script}.py", flag, "4"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "at least 5" in done.stderr
