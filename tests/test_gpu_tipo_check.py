"""The TIPO GPU check runs only where a GPU is lent, so its tables, its agreement check
and its shaped-model build are run here on the CPU with the tiny TIPO model."""

from __future__ import annotations

import pytest

from benchmarks import gpu_tipo_check as check


def test_ratios_compare_modes_per_batch_and_batches_per_mode():
    figures = {"eager": {1: 20.0, 8: 24.0}, "graph": {1: 4.0, 8: 5.0}}
    assert check.ratio_lines(figures) == [
        "eager / graph, batch 1: 5.00x",
        "eager / graph, batch 8: 4.80x",
        "eager batch 8 / batch 1, per step: 1.20x",
        "graph batch 8 / batch 1, per step: 1.25x",
    ]


def test_the_inputs_are_tipo_first_pass_inputs():
    inputs = check.tipo_inputs(10)
    assert len(inputs) == 10 and inputs[8] == inputs[0]
    assert inputs[0].startswith("aspect_ratio: 0.7\ntarget: <|long|>\ntag: 1girl, solo")
    assert "<|long_to_tag|>" in inputs[1] and "long: a girl reading in a library" in inputs[1]


@pytest.mark.torch
@pytest.mark.slow
def test_the_check_runs_on_the_cpu_with_the_tiny_tipo_model(tiny_tipo_model, capsys):
    argv = ["--device", "cpu", "--new-tokens", "24", "--batches", "1,2"]
    assert check.main([*argv, "--tiny", str(tiny_tipo_model.hf_dir)]) == 0
    printed = capsys.readouterr().out
    agreed = [line.split() for line in printed.splitlines() if line.endswith(" yes")]
    # eager and static, batch 1 and 2: all agree
    assert [row[:2] for row in agreed if row[0] != "graph"] == [
        ["eager", "1"],
        ["eager", "2"],
        ["static", "1"],
        ["static", "2"],
    ]
    assert "graph and eager agree on every row: yes" in printed
    rows = [line.split() for line in printed.splitlines() if line.split()[:1] == ["static"]]
    rows = [row for row in rows if row[1].isdigit()]
    assert [row[1] for row in rows[-2:]] == ["1", "2"]  # the speed table's static rows
    assert "eager / static, batch 2:" in printed
    assert "one by one / batched:" in printed


@pytest.mark.torch
@pytest.mark.slow
def test_the_shaped_model_builds_and_decodes_ids_its_tokenizer_lacks(tiny_tipo_model, tmp_path):
    # TIPO-200M's vocabulary and layout, far fewer layers and dimensions: a quick build.
    small = {**check.TIPO_200M, "hidden_size": 64, "intermediate_size": 128}
    small.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)
    built = check.build_shaped_model(tmp_path / "shaped", tiny_tipo_model.hf_dir, small)
    figures = check.speed(built, "cpu", "fp32", [2], 16)
    assert set(figures) == {"eager", "static"} and set(figures["eager"]) == {1, 2}
    backend = check.backend_for(built, "cpu", "fp32", "eager")
    try:
        assert backend.context == 2048
        from dtg_lib.settings import SamplingSettings

        made = backend.generate("tag: 1girl", SamplingSettings(max_new_tokens=16), 3)
    finally:
        backend.close()
    assert made.completion_tokens == 16  # a random 32013-token model hardly draws EOS
