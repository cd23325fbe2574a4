"""The GPU benchmark runs only where a GPU is lent, so its tables and its verdicts on
the issue's targets are checked here on the CPU with the tiny model."""

from __future__ import annotations

import pytest

from benchmarks import bench_backends_gpu as bench


def _modes(first_s: float, single_s: float, batch_of_8_s: float) -> dict:
    return {
        "graph": {
            "first_s": first_s,
            "by_batch": {1: (single_s, 1000 * single_s / 128), 8: (batch_of_8_s, 1.0)},
        }
    }


def test_targets_met_are_called_met():
    # raw generate 20 ms/token; ours 0.5 s for 128 tokens = 3.9 ms/token: 5.1x
    lines = bench.judge_targets({1: 20.0}, _modes(first_s=2.3, single_s=0.5, batch_of_8_s=0.7))
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["met", "met", "met"]
    assert "5.1x" in lines[0]
    assert "1.80 s" in lines[1]
    assert "1.40x" in lines[2]


def test_each_missed_target_is_called_missed():
    lines = bench.judge_targets({1: 10.0}, _modes(first_s=3.0, single_s=0.5, batch_of_8_s=0.8))
    assert [line.rsplit(" ", 1)[-1] for line in lines] == ["MISSED", "MISSED", "MISSED"]


def test_without_a_batch_of_8_that_target_is_not_judged():
    modes = _modes(first_s=1.0, single_s=0.5, batch_of_8_s=0.6)
    del modes["graph"]["by_batch"][8]
    assert len(bench.judge_targets({1: 50.0}, modes)) == 2


@pytest.mark.torch
@pytest.mark.slow
def test_the_tables_run_on_the_cpu_with_the_tiny_model(tiny_model, capsys):
    model_dir = tiny_model.hf_dir.parent
    raw_ms = bench.batch_table(model_dir, "fp32", "cpu", [2])
    modes = bench.decode_mode_table(model_dir, "fp32", "cpu", [2])
    printed = capsys.readouterr().out
    assert set(raw_ms) == {1, 2}
    assert set(modes) == {"eager", "static"}  # no CUDA graphs on a CPU
    for figures in modes.values():
        assert set(figures["by_batch"]) == {1, 2}
        assert all(ms > 0 for _, ms in figures["by_batch"].values())
    assert printed.count(" static ") == 2
    lines = bench.judge_targets(raw_ms, modes)
    assert len(lines) == 2 and lines[0].startswith("single stream (static)")
