"""The fixed-shape decode path (`torch_static`, `torch_steps`) against transformers' own forward.

On a CPU it is checked for the same logits as transformers, position by
position, and the same sampled text as the eager loop. The CUDA graph replay is
checked against the uncaptured static path where a GPU is present.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_batched import PROMPTS, SAMPLING  # noqa: E402

from dtg_lib.backends.torch_backend import TorchBackend  # noqa: E402
from dtg_lib.backends.torch_static import (  # noqa: E402
    StaticDecodeUnsupported,
    StaticLlama,
    llama_shape,
    prefill_mask,
)
from dtg_lib.backends.torch_steps import (  # noqa: E402
    CACHE_LENGTH_STEP,
    cache_length,
    resolve_decode_mode,
)
from dtg_lib.settings import SamplingSettings  # noqa: E402


def random_llama(kv_heads: int, act: str = "mish"):
    config = transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        rope_theta=500.0,
        hidden_act=act,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    if model.model.layers[0].self_attn.k_proj.out_features != 64 // 4 * kv_heads:
        pytest.skip("this transformers has no grouped-query attention")
    return model


def reference_logits(model, ids, real):
    """transformers' logits at the last column of a left-padded batch, no cache."""
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=real, position_ids=positions, use_cache=False)
    return out.logits[:, -1, :].float()


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_static_forward_matches_transformers_through_prefill_and_steps(kv_heads):
    model = random_llama(kv_heads)
    static = StaticLlama(torch, model)
    lengths = [7, 3, 5]
    width = max(lengths)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, width), generator=generator)
    real = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    ids = ids.masked_fill(real == 0, 2)
    cache = static.new_cache(3, 32)
    positions = (real.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        got = static.forward(
            cache, ids, positions, torch.arange(width), prefill_mask(torch, real, 32)
        )
        torch.testing.assert_close(got, reference_logits(model, ids, real), atol=1e-5, rtol=1e-4)
        valid = torch.zeros((3, 32), dtype=torch.bool)
        valid[:, :width] = real.bool()
        position = positions[:, -1:]
        for slot in range(width, width + 6):
            column = got.argmax(-1, keepdim=True)
            ids = torch.cat([ids, column], dim=1)
            real = torch.cat([real, torch.ones((3, 1), dtype=real.dtype)], dim=1)
            position = position + 1
            valid[:, slot] = True
            got = static.forward(
                cache, column, position, torch.tensor([slot]), valid[:, None, None, :]
            )
            want = reference_logits(model, ids, real)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_padding_columns_see_only_themselves_so_no_row_gets_nan():
    mask = prefill_mask(torch, torch.tensor([[0, 0, 1, 1]]), 6)[0, 0]
    assert mask[0].tolist() == [True, False, False, False, False, False]
    assert mask[1].tolist() == [False, True, False, False, False, False]
    assert mask[3].tolist() == [False, False, True, True, False, False]


@pytest.mark.parametrize("seeds", [[1, 2, 3, 4, 5, 6], [99, 7, 7, 0, 31, 8]])
def test_static_decode_samples_what_eager_decode_samples(tiny_model, seeds):
    eager = TorchBackend(tiny_model.hf_dir, "cpu", decode="eager")
    static = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    assert (eager.decode, static.decode) == ("eager", "static")
    want = [g.text for g in eager.generate_batch(PROMPTS, SAMPLING, seeds)]
    got = [g.text for g in static.generate_batch(PROMPTS, SAMPLING, seeds)]
    assert got == want
    assert static.generate(PROMPTS[2], SAMPLING, seeds[2]).text == want[2]
    assert len(set(want)) > 1


def test_decode_mode_choice():
    assert resolve_decode_mode("auto", "cpu", "2.13.0+cpu") == "eager"
    assert resolve_decode_mode("", "cuda:1", "2.11.0+cu130") == "graph"
    assert resolve_decode_mode("STATIC", "cpu") == "static"
    assert resolve_decode_mode("graph", "cuda", "2.1.2+cu121") == "graph"  # asked by name


@pytest.mark.parametrize(
    "version, graphs",
    [
        ("2.1.2+cu121", False),
        ("2.5.1", False),
        ("2.6.0", True),
        ("2.10.0a0+git", True),
        ("3.0", True),
        ("", False),
        ("unknown", False),
    ],
)
def test_auto_captures_graphs_only_with_a_torch_that_survives_a_refused_capture(version, graphs):
    assert resolve_decode_mode("auto", "cuda", version) == ("graph" if graphs else "eager")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_decode_mode("graph", "cpu")
    with pytest.raises(ValueError, match="unknown decode mode 'fast'"):
        resolve_decode_mode("fast", "cpu")


def test_decode_mode_comes_from_the_environment(tiny_model, monkeypatch):
    monkeypatch.setenv("DTG_TORCH_DECODE", "static")
    assert TorchBackend(tiny_model.hf_dir, "cpu").decode == "static"


def test_cache_lengths_round_up_so_similar_jobs_share_a_graph():
    assert cache_length(40, 100) == CACHE_LENGTH_STEP
    assert cache_length(40, CACHE_LENGTH_STEP - 40) == CACHE_LENGTH_STEP
    assert cache_length(41, CACHE_LENGTH_STEP - 40) == 2 * CACHE_LENGTH_STEP


def llama_config(**fields):
    base = dict(
        model_type="llama",
        num_attention_heads=4,
        num_key_value_heads=4,
        hidden_size=64,
        num_hidden_layers=2,
        rope_theta=10000.0,
    )
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"model_type": "mistral"}, "model type 'mistral'"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rotary scaling 'linear'"),
        ({"rope_parameters": {"rope_type": "yarn"}}, "rotary scaling 'yarn'"),
        ({"attention_bias": True}, "projection biases"),
    ],
)
def test_models_outside_plain_llama_are_refused(fields, reason):
    with pytest.raises(StaticDecodeUnsupported, match=reason):
        llama_shape(llama_config(**fields))


def test_rope_theta_is_read_from_either_config_style():
    assert llama_shape(llama_config(rope_theta=500.0)).rope_theta == 500.0
    newer = llama_config(rope_parameters={"rope_type": "default", "rope_theta": 250.0})
    del newer.rope_theta
    assert llama_shape(newer).rope_theta == 250.0


def test_an_unsupported_model_falls_back_to_eager_and_still_generates(tiny_model, monkeypatch):
    def refuse(config):
        raise StaticDecodeUnsupported("test model")

    monkeypatch.setattr("dtg_lib.backends.torch_static.llama_shape", refuse)
    backend = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    assert backend.decode == "eager"
    assert backend.generate(PROMPTS[0], SAMPLING, 1).completion_tokens > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_graph_replay_on_a_gpu(tiny_model, dtype):
    """fp32: the replayed graph samples exactly what the uncaptured step samples.

    Batches of 4 and 1 run at their own size in both paths, so the same kernels
    see the same shapes. In fp16 a different kernel choice inside the capture may
    move a logit by a rounding step and so, rarely, a sampled token; there the
    test asks that capture held and every expansion came back.
    """
    import warnings

    seeds = [3, 1, 4, 1]
    graph = TorchBackend(tiny_model.hf_dir, "cuda", dtype=dtype, decode="graph")
    static = TorchBackend(tiny_model.hf_dir, "cuda", dtype=dtype, decode="static")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*CUDA Graph is empty.*")
        got = [g.text for g in graph.generate_batch(PROMPTS[:4], SAMPLING, seeds)]
    assert graph.decode == "graph", "the capture failed and fell back"
    captured = graph._steps.capture_s
    # A second job of the same shape replays the graph it already has.
    again = [g.text for g in graph.generate_batch(PROMPTS[:4], SAMPLING, seeds)]
    assert graph._steps.capture_s == captured
    single = graph.generate(PROMPTS[0], SAMPLING, 7).text
    assert sorted(graph._steps._graphs)[0][0] == 1 and len(graph._steps._graphs) == 2
    assert all(got) and single
    if dtype == "fp32":
        assert got == again == [g.text for g in static.generate_batch(PROMPTS[:4], SAMPLING, seeds)]
        assert single == static.generate(PROMPTS[0], SAMPLING, 7).text


def test_a_failed_graph_capture_falls_back_to_the_uncaptured_step(tiny_model, monkeypatch):
    from dtg_lib.backends import torch_steps

    def broken_capture(*args):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(torch_steps, "DecodeGraph", broken_capture)
    backend = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    want = backend.generate(PROMPTS[1], SAMPLING, 8).text
    # As on a GPU: the factory is told to capture, and capture fails on first use.
    backend._steps.mode = "graph"
    assert backend.generate(PROMPTS[1], SAMPLING, 8).text == want
    assert backend._steps.mode == "static"


class ReplayOnCpu:
    """Stands in for torch.cuda.CUDAGraph: replay runs the recorded step again.

    What a CUDA graph adds (launching recorded kernels) needs a GPU; what this
    checks is everything around it: the fixed input buffers each step is copied
    into, the slot written, the output read back, and reuse across jobs.
    """

    captures = 0

    def __init__(self, decode_graph):
        self.decode_graph = decode_graph

    def replay(self):
        self.decode_graph.logits.copy_(self.decode_graph._run())


def test_graph_plumbing_replays_what_the_static_step_computes(tiny_model, monkeypatch):
    import contextlib

    from dtg_lib.backends import torch_steps

    def capture_on_cpu(decode_graph):
        ReplayOnCpu.captures += 1
        decode_graph.graph = ReplayOnCpu(decode_graph)
        return decode_graph._run()

    monkeypatch.setattr(torch_steps.DecodeGraph, "_capture_here", capture_on_cpu)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    static = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    graphed = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    graphed._steps.mode = "graph"
    seeds = [11, 12, 13, 14, 15, 16]
    want = [g.text for g in static.generate_batch(PROMPTS, SAMPLING, seeds)]
    assert [g.text for g in graphed.generate_batch(PROMPTS, SAMPLING, seeds)] == want
    assert [g.text for g in graphed.generate_batch(PROMPTS, SAMPLING, seeds)] == want
    assert ReplayOnCpu.captures == 1  # the second job of that shape reused the graph
    # A job's batch shrinks round by round: 5, 3, 2 and 1 rows run as 8, 4, 2 and 1.
    for count in (5, 3, 2, 1, 5, 3, 2, 1):
        got = graphed.generate_batch(PROMPTS[:count], SAMPLING, seeds[:count])
        assert [g.text for g in got] == [
            g.text for g in static.generate_batch(PROMPTS[:count], SAMPLING, seeds[:count])
        ]
    assert ReplayOnCpu.captures == 4  # batch sizes 8, 4, 2, 1, each captured once
    assert sorted(graphed._steps._graphs) == [(1, 256), (2, 256), (4, 256), (8, 256)]
    caches = {
        graph.cache.keys.untyped_storage().data_ptr() for graph in graphed._steps._graphs.values()
    }
    assert len(caches) == 1  # all of them write into one KV cache
    assert graphed._steps.mode == "graph"


def test_a_longer_job_grows_the_shared_cache_and_recaptures(tiny_model, monkeypatch):
    import contextlib

    from dtg_lib.backends import torch_steps

    captured = []

    def capture_on_cpu(decode_graph):
        captured.append((decode_graph.cache.batch, decode_graph.cache.length))
        decode_graph.graph = ReplayOnCpu(decode_graph)
        return decode_graph._run()

    monkeypatch.setattr(torch_steps.DecodeGraph, "_capture_here", capture_on_cpu)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    graphed = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    graphed._steps.mode = "graph"
    short = SamplingSettings(temperature=1.0, max_new_tokens=8)
    longer = SamplingSettings(temperature=1.0, max_new_tokens=300)
    graphed.generate_batch(PROMPTS[:2], short, [1, 2])
    graphed.generate_batch(PROMPTS[:2], longer, [1, 2])
    graphed.generate_batch(PROMPTS[:2], short, [1, 2])  # fits the grown cache: no capture
    assert captured == [(2, 256), (2, 512)]
    assert sorted(graphed._steps._graphs) == [(2, 512)]


def test_running_out_of_memory_while_capturing_is_an_error_not_a_downgrade(tiny_model, monkeypatch):
    from dtg_lib.backends import torch_steps

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 400.00 MiB")

    monkeypatch.setattr(torch_steps, "DecodeGraph", out_of_memory)
    backend = TorchBackend(tiny_model.hf_dir, "cpu", decode="static")
    backend._steps.mode = "graph"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        backend.generate(PROMPTS[0], SAMPLING, 1)
    assert backend.decode == "graph"  # the next job, with memory freed, captures again


def test_the_exponential_race_draws_what_multinomial_draws_on_the_cpu():
    from dtg_lib.backends.torch_sampling import BatchDecoder

    decoder = BatchDecoder(torch, None, "cpu", eos=2)
    scores = torch.randn(4, 500, generator=torch.Generator().manual_seed(0)) * 3
    scores[:, :10] = float("-inf")  # filtered tokens: probability 0, never drawn
    probs = torch.softmax(scores, dim=-1)
    for seed in range(50):
        ours = [torch.Generator().manual_seed(seed + row) for row in range(4)]
        theirs = [torch.Generator().manual_seed(seed + row) for row in range(4)]
        drawn = decoder._draw(probs, ours).tolist()
        want = [
            torch.multinomial(probs[r : r + 1], 1, generator=theirs[r]).item() for r in range(4)
        ]
        assert drawn == want
        assert min(drawn) >= 10
