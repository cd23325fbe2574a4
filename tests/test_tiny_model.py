"""The project's tiny DTG-format model: format, tokenizer, GGUF conversion, caching."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from dtg_examples import PROMPT

from dtg_dev import tiny_model as tm

pytestmark = pytest.mark.slow

UNICODE_PROMPT = (
    "rating: safe\nartist: 日本語の絵師 (ü-ß)\ncharacters: hatsune miku 🐉\n"
    "copyrights: <|empty|>\naspect ratio: 0.7\ntarget: <|very_long|>\n"
    "general: 2girls, \\(x\\)  double  space<|input_end|>blush, "
)


# ----------------------------------------------------------------- pure functions


def test_samples_follow_the_dtg_input_format():
    rng = random.Random(3)
    pools = {k: list(v) for k, v in tm.FALLBACK_NAMES.items()}
    for _ in range(50):
        prompt, completion = tm.make_sample(rng, pools)
        lines = prompt.split("\n")
        if lines[0].startswith("quality: "):
            lines = lines[1:]
        keys = [line.split(": ", 1)[0] for line in lines]
        assert keys == [
            "rating",
            "artist",
            "characters",
            "copyrights",
            "aspect ratio",
            "target",
            "general",
        ]
        assert lines[5] in {f"target: <|{t}|>" for t in tm.TARGET_WORDS}
        assert len(lines[4].split(": ")[1]) == 3  # one decimal
        assert prompt.endswith("<|input_end|>")
        new_tags = completion.split(", ")
        assert new_tags and all(t in tm.GENERAL_TAGS for t in new_tags)
        given = lines[6].removeprefix("general: ").removesuffix("<|input_end|>").split(", ")
        assert not set(given) & set(new_tags)


def test_general_tag_list_is_clean():
    assert 200 <= len(tm.GENERAL_TAGS) <= 320
    assert len(set(tm.GENERAL_TAGS)) == len(tm.GENERAL_TAGS)
    for tag in tm.GENERAL_TAGS:
        assert tag == tag.strip().lower() and "_" not in tag and "," not in tag


def _hf_rope(x, positions, theta=10000.0):
    np = pytest.importorskip("numpy")
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) / half)
    angles = positions[:, None] * freqs[None, :]
    cos = np.concatenate([np.cos(angles)] * 2, axis=-1)
    sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _pairwise_rope(x, positions, theta=10000.0):
    np = pytest.importorskip("numpy")
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) / half)
    angles = positions[:, None] * freqs[None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = even * np.sin(angles) + odd * np.cos(angles)
    return out


def test_rope_interleave_turns_half_split_rope_into_pairwise_rope():
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    heads, head_dim, hidden, seq = 4, 8, 16, 5
    wq = rng.normal(size=(heads * head_dim, hidden))
    wk = rng.normal(size=(heads * head_dim, hidden))
    h = rng.normal(size=(seq, hidden))
    pos = np.arange(seq, dtype=float)

    def scores(w_q, w_k, rope):
        q = (h @ w_q.T).reshape(seq, heads, head_dim).transpose(1, 0, 2)
        k = (h @ w_k.T).reshape(seq, heads, head_dim).transpose(1, 0, 2)
        return rope(q, pos) @ rope(k, pos).transpose(0, 2, 1)

    expected = scores(wq, wk, _hf_rope)
    converted = scores(tm.rope_interleave(wq, heads), tm.rope_interleave(wk, heads), _pairwise_rope)
    np.testing.assert_allclose(converted, expected, rtol=1e-10, atol=1e-10)
    # Without the permutation the scores differ: the test can see a missing step.
    assert not np.allclose(scores(wq, wk, _pairwise_rope), expected)


def test_short_build_is_deterministic(tmp_path):
    for module in ("torch", "transformers", "sentencepiece", "gguf"):
        pytest.importorskip(module)
    first = tm.build_tiny_model(tmp_path / "a", seed=5, steps=2)
    second = tm.build_tiny_model(tmp_path / "b", seed=5, steps=2)
    other = tm.build_tiny_model(tmp_path / "c", seed=6, steps=2)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer.model"):
        assert (first.hf_dir / name).read_bytes() == (second.hf_dir / name).read_bytes()
    assert first.gguf_f16.read_bytes() == second.gguf_f16.read_bytes()
    assert first.gguf_f32.read_bytes() == second.gguf_f32.read_bytes()
    assert (first.hf_dir / "model.safetensors").read_bytes() != (
        other.hf_dir / "model.safetensors"
    ).read_bytes()


# ------------------------------------------------------------------- the build


def test_build_writes_both_formats(tiny_model):
    for name in (
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (tiny_model.hf_dir / name).is_file(), name
    assert not list(tiny_model.hf_dir.glob("*.bin"))
    for gguf_path in (tiny_model.gguf_f16, tiny_model.gguf_f32):
        assert gguf_path.read_bytes()[:4] == b"GGUF"
    assert tiny_model.gguf_f16.stat().st_size < tiny_model.gguf_f32.stat().st_size
    config = json.loads((tiny_model.hf_dir / "config.json").read_text())
    assert config["hidden_act"] == "mish"
    assert config["tie_word_embeddings"] is False
    assert config["max_position_embeddings"] == 2048
    assert config["rope_theta"] == 10000.0  # also readable by transformers 4.x
    info = json.loads((tiny_model.root / tm.BUILD_INFO).read_text())
    assert info["recipe"] == tm.RECIPE_VERSION


def test_hf_tokenizer_has_dtg_tokens(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    for token in tm.ADDED_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert tokenizer.convert_ids_to_tokens(ids) == [token]
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 1
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|input_end|>")


def test_byte_fallback_keeps_any_unicode(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    text = "artist: 日本語の絵師 🐉 ü\tß"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def _gguf_field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    if field.types and field.types[0].name == "STRING":
        return bytes(value).decode()
    return value.tolist()[0]


def test_gguf_metadata(tiny_model):
    gguf = pytest.importorskip("gguf")
    for path, file_type in ((tiny_model.gguf_f16, 1), (tiny_model.gguf_f32, 0)):
        reader = gguf.GGUFReader(path)
        assert _gguf_field(reader, "general.architecture") == "llama"
        assert _gguf_field(reader, "general.file_type") == file_type
        assert _gguf_field(reader, "tokenizer.ggml.model") == "llama"
        assert _gguf_field(reader, "tokenizer.ggml.bos_token_id") == 1
        assert _gguf_field(reader, "tokenizer.ggml.eos_token_id") == 2
        assert _gguf_field(reader, "llama.context_length") == 2048
        tokens_field = reader.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(tokens_field.parts[i]).decode() for i in tokens_field.data]
        types_field = reader.fields["tokenizer.ggml.token_type"]
        types = [int(types_field.parts[i][0]) for i in types_field.data]
        for token in tm.ADDED_TOKENS:
            assert types[tokens.index(token)] == int(gguf.TokenType.CONTROL)
        tensors = {t.name: t for t in reader.tensors}
        assert "output.weight" in tensors  # untied embeddings
        want = gguf.GGMLQuantizationType.F16 if file_type else gguf.GGMLQuantizationType.F32
        assert tensors["blk.0.attn_q.weight"].tensor_type == want
        assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@pytest.mark.llama
@pytest.mark.parametrize("text", [PROMPT, UNICODE_PROMPT])
def test_llama_cpp_tokenizes_like_transformers(tiny_model, text):
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    llm = llama_cpp.Llama(model_path=str(tiny_model.gguf_f16), n_ctx=256, verbose=False)
    try:
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
    finally:
        llm.close()
    assert ids == tokenizer(text)["input_ids"]


@pytest.mark.llama
@pytest.mark.parametrize(("which", "tolerance"), [("gguf_f32", 0.02), ("gguf_f16", 0.05)])
def test_gguf_logits_match_transformers(tiny_model, which, tolerance):
    """llama.cpp's LLaMA graph uses SiLU, so compare with a SiLU copy of the HF model.

    With mish (as trained, like DTG) the logits differ by design; the argmax mostly agrees.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    np = pytest.importorskip("numpy")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tiny_model.hf_dir)(PROMPT)["input_ids"]
    llm = llama_cpp.Llama(
        model_path=str(getattr(tiny_model, which)), n_ctx=256, logits_all=True, verbose=False
    )
    try:
        llm.eval(ids)
        gguf_logits = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()

    def hf_logits(act):
        config = AutoConfig.from_pretrained(tiny_model.hf_dir)
        config.hidden_act = act
        model = AutoModelForCausalLM.from_pretrained(
            tiny_model.hf_dir, config=config, use_safetensors=True
        )
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].numpy()

    silu = hf_logits("silu")
    assert np.abs(silu - gguf_logits).max() < tolerance
    assert (silu.argmax(-1) == gguf_logits.argmax(-1)).all()
    mish = hf_logits("mish")
    assert (mish.argmax(-1) == gguf_logits.argmax(-1)).mean() > 0.8


# ------------------------------------------------------------------- the cache


def _fake_build(source: Path, calls: list):
    def build(out_dir, *, seed=0, steps=tm.TRAIN_STEPS):
        calls.append(Path(out_dir))
        shutil.copytree(source, out_dir)
        return tm._layout(Path(out_dir))

    return build


def test_cache_reuses_a_matching_build(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "tiny"
    shutil.copytree(tiny_model.root, target)
    calls: list = []
    monkeypatch.setattr(tm, "build_tiny_model", _fake_build(tiny_model.root, calls))
    built = tm.tiny_model_cached(target)
    assert calls == []
    assert built == tm._layout(target)


@pytest.mark.parametrize(
    "spoil",
    [
        lambda root: (root / tm.BUILD_INFO).write_text('{"recipe": -1, "seed": 0}'),
        lambda root: (root / tm.BUILD_INFO).write_text("not json"),
        lambda root: (root / tm.BUILD_INFO).unlink(),
        lambda root: (root / "tiny-dtg-f16.gguf").unlink(),
    ],
)
def test_cache_rebuilds_a_stale_or_broken_build(tiny_model, tmp_path, monkeypatch, spoil):
    target = tmp_path / "tiny"
    shutil.copytree(tiny_model.root, target)
    spoil(target)
    calls: list = []
    monkeypatch.setattr(tm, "build_tiny_model", _fake_build(tiny_model.root, calls))
    built = tm.tiny_model_cached(target)
    assert len(calls) == 1 and calls[0] != target  # built aside, then swapped in
    assert built.gguf_f16.is_file()
    assert json.loads((target / tm.BUILD_INFO).read_text())["recipe"] == tm.RECIPE_VERSION
    assert not list(tmp_path.glob(".tiny.building-*"))


def test_cli_builds_into_the_given_folder(tmp_path, monkeypatch, capsys):
    calls = []

    def build(out_dir, *, seed=0):
        calls.append((out_dir, seed))
        return tm._layout(out_dir)

    monkeypatch.setattr(tm, "build_tiny_model", build)
    assert tm.main([str(tmp_path / "out"), "--seed", "7"]) == 0
    assert calls == [(tmp_path / "out", 7)]
    assert "tiny-dtg-f16.gguf" in capsys.readouterr().out


def test_a_missing_build_module_is_one_line_before_any_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tm, "missing_build_modules", lambda: ["gguf"])
    monkeypatch.setattr(tm, "build_tiny_model", lambda *a, **k: pytest.fail("trained anyway"))
    with pytest.raises(SystemExit) as exited:
        tm.main([str(tmp_path / "tiny")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: building the tiny model needs gguf: pip install -e '.[torch,tiny]'"]
    assert not (tmp_path / "tiny").exists()
