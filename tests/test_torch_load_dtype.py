"""The torch backend loads half precision straight in its dtype (issue 16).

The tiny model's weights are stored in fp32. Loaded in bf16, no fp32 tensor shaped
like one of its weight matrices may appear: transformers' own loader made each
one (a view of the mapped file) and converted it, so a full-size bf16 load
peaked at the fp32 file plus the bf16 weights (2.6 GB against 1.1 GB now, see
benchmarks/bench_torch_load.py).
"""

from __future__ import annotations

import json
import shutil

import pytest
from fake_lookup import FakeLookup

from dtg_lib.backends import BackendCache, ModelLoadError, load_backend
from dtg_lib.settings import UpsampleSettings
from dtg_lib.upsampler import Upsampler

pytestmark = [pytest.mark.torch, pytest.mark.slow]

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors.torch import load_file  # noqa: E402  (after the skips above)
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from dtg_lib.backends import torch_backend  # noqa: E402


class Fp32WeightSpy(TorchDispatchMode):
    """Records every fp32 tensor an operation takes or makes whose shape is a weight's."""

    def __init__(self, weight_shapes: set[tuple[int, ...]]):
        super().__init__()
        self.weight_shapes = weight_shapes
        self.seen: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten((args, kwargs, result))[0]:
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                shape = tuple(value.shape)
                if shape in self.weight_shapes:
                    self.seen.append((str(func), shape))
        return result


def _weight_shapes(hf_dir) -> set[tuple[int, ...]]:
    stored = load_file(str(hf_dir / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float32}, "the tiny model is fp32"
    return {tuple(t.shape) for t in stored.values() if t.dim() == 2}


def test_bf16_load_makes_no_fp32_weight(tiny_model, monkeypatch):
    # Converted tensors pass through a buffer smaller than any weight matrix here.
    monkeypatch.setattr(torch_backend, "READ_CHUNK_BYTES", 4096)
    # A dispatch mode sees its own thread only: no worker threads, ours or transformers 5's.
    monkeypatch.setattr(torch_backend, "READ_THREADS", 1)
    monkeypatch.setenv("HF_DEACTIVATE_ASYNC_LOAD", "1")
    spy = Fp32WeightSpy(_weight_shapes(tiny_model.hf_dir))
    with spy:
        backend = torch_backend.TorchBackend(tiny_model.hf_dir, dtype="bf16")
    try:
        assert spy.seen == []
        assert {p.dtype for p in backend._model.parameters()} == {torch.bfloat16}
        assert torch_backend.own_weights(torch, backend._model) == 0  # nothing borrowed
    finally:
        backend.close()


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_weights_are_the_files_in_the_asked_dtype(tiny_model, dtype):
    stored = load_file(str(tiny_model.hf_dir / "model.safetensors"))
    backend = torch_backend.TorchBackend(tiny_model.hf_dir, dtype=dtype)
    try:
        loaded = backend._model.state_dict()
        for name, tensor in stored.items():
            assert loaded[name].dtype == backend.dtype, name
            assert torch.equal(loaded[name], tensor.to(backend.dtype)), name
        # Memory of the process's own: a file truncated later cannot SIGBUS it.
        assert torch_backend.own_weights(torch, backend._model) == 0
    finally:
        backend.close()


def test_bf16_expansion_works(tiny_model):
    def load_bf16(kind, path, device="cpu", **options):
        return load_backend(kind, path, device, **{**options, "dtype": "bf16"})

    cache = BackendCache(loader=load_bf16)
    upsampler = Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
    try:
        settings = UpsampleSettings.from_dict({"model": str(tiny_model.hf_dir), "target": "short"})
        result = upsampler.upsample("1girl, solo", settings, seed=11)
        backend = cache.current
        assert {p.dtype for p in backend._model.parameters()} == {torch.bfloat16}
    finally:
        cache.unload()
    assert result.completion_tokens > 0 and result.new_tags
    assert all(tag.strip() and "<|" not in tag for tag in result.new_tags)
    for tag in ["1girl", "solo", *result.new_tags]:
        assert tag in result.final_prompt


def test_truncated_weights_are_a_load_error(tiny_model, tmp_path):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors is truncated"):
        torch_backend.TorchBackend(folder, dtype="bf16")


def test_sharded_weights_load_through_their_index(tiny_model, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    shutil.copytree(tiny_model.hf_dir, folder)
    stored = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    names = sorted(stored)
    halves = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: stored[k] for k in keys}, str(folder / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    backend = torch_backend.TorchBackend(folder, dtype="fp16")
    try:
        loaded = backend._model.state_dict()
        assert all(torch.equal(loaded[k], v.half()) for k, v in stored.items())
    finally:
        backend.close()
