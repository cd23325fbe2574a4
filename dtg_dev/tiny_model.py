"""A tiny model that speaks DanTagGen's prompt format, built by the project itself.

The real DTG checkpoints are hundreds of megabytes and need the network; tests,
benchmarks of the plumbing and offline demos need something that loads in
milliseconds, runs on both backends and answers a DTG prompt with
comma-separated tags and EOS. This module trains such a model from synthetic
text in about a minute on two CPU cores and writes it as a Hugging Face folder
and as f16/f32 GGUF files.

    python -m dtg_dev.tiny_model OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("dtg")

# Bump whenever the output of a build changes, so cached builds are redone.
RECIPE_VERSION = 3
BUILD_INFO = "build-info.json"

ADDED_TOKENS = (
    "<|empty|>",
    "<|input_end|>",
    "<|very_short|>",
    "<|short|>",
    "<|long|>",
    "<|very_long|>",
)
TARGET_WORDS = ("very_short", "short", "long", "very_long")

SP_VOCAB_SIZE = 1000
HIDDEN = 128
INTERMEDIATE = 384
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 2048
TRAIN_SAMPLES = 3000
TRAIN_STEPS = 240
BATCH = 24
LEARNING_RATE = 4e-3

# llama.cpp token types (gguf.TokenType values), kept here so the vocabulary can be
# planned without importing gguf.
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6

# Common Danbooru general tags, most frequent first (facts: lowercase, spaces for
# underscores, current names). Kept as text because one tag a line would be 300 lines.
_GENERAL_TAGS_TEXT = """
long hair, breasts, looking at viewer, blush, smile, short hair, open mouth, swept
bangs, blue eyes, simple background, large breasts, skirt, blonde hair, brown hair,
black hair, shirt, hair ornament, red eyes, thighhighs, white background, gloves, long
sleeves, dress, hat, holding, navel, bow, animal ears, cleavage, jewelry, closed mouth,
brown eyes, sitting, medium breasts, ribbon, very long hair, standing, hair between
eyes, green eyes, purple eyes, school uniform, tail, collarbone, twintails, hair bow,
jacket, upper body, swimsuit, full body, white shirt, yellow eyes, weapon, underwear,
blue hair, nipples, pink hair, purple hair, closed eyes, ponytail, panties, braid, bare
shoulders, hair over one eye, white hair, tongue, pantyhose, flower, sweat, one eye
closed, ahoge, teeth, red hair, small breasts, boots, hair ribbon, multicolored hair,
pleated skirt, sidelocks, monochrome, hairband, outdoors, sky, heart, glasses, day, grey
hair, green hair, horns, sleeveless, cowboy shot, food, thighs, wings, necktie, shoes,
short sleeves, frills, earrings, cloud, detached sleeves, barefoot, socks, belt, grin,
japanese clothes, serafuku, miniskirt, from behind, black thighhighs, parted lips, open
clothes, signature, cat ears, tongue out, armpits, white gloves, hood, sword, collared
shirt, black gloves, shorts, striped clothes, ass, star (symbol), pointy ears, looking
back, fang, indoors, midriff, water, bracelet, kimono, tears, choker, black dress,
alternate costume, puffy sleeves, black skirt, sailor collar, orange hair, wide sleeves,
dark skin, black eyes, looking up, virtual youtuber, bikini, wet, fingernails, lying,
headgear, black shoes, two-tone hair, streaked hair, hand up, holding weapon, two side
up, hair flower, petals, scarf, apron, hood down, coat, blue sky, chibi, from side, fox
ears, rabbit ears, red bow, thigh strap, blue skirt, stuffed toy, hair intakes, plaid
skirt, blunt bangs, holding sword, elbow gloves, zettai ryouiki, tree, halo, white
dress, red ribbon, black jacket, profile, leaning forward, maid, maid headdress, crossed
arms, covered navel, on back, hand on own hip, single braid, side ponytail, hair bun,
character name, dutch angle, night, moon, smirk, happy, wavy hair, mole, mole under eye,
eyelashes, fur trim, highleg, bodysuit, cape, witch hat, nail polish, hat ribbon, cherry
blossoms, sunlight, floating hair, wind, motion lines, looking to the side, head tilt,
arms up, v, hands up, knees up, kneeling, squatting, on bed, pillow, window, chair,
table, cup, book, umbrella, open jacket, gradient background, grey background, speech
bubble, english text, animal ear fluff, drill hair, dragon girl, dragon horns, dragon
tail, china dress, chinese clothes, hair between breasts, red dress, beach, ocean, sand,
snow, rain, sunset, building, city, school bag, red necktie, neckerchief, sweater,
hoodie, vest, blazer, armor, gauntlets, shield, bow (weapon), gun, rifle, katana, staff,
wand, fire, magic, sparkle, light particles
"""
GENERAL_TAGS: tuple[str, ...] = tuple(
    tag.strip() for tag in _GENERAL_TAGS_TEXT.replace("\n", " ").split(",") if tag.strip()
)

QUALITY_TAGS: tuple[str, ...] = (
    "masterpiece",
    "best quality",
    "high quality",
    "normal quality",
    "low quality",
    "very aesthetic",
    "aesthetic",
    "newest",
    "recent",
    "mid",
    "early",
    "old",
)
RATINGS: tuple[str, ...] = ("safe", "general", "sensitive", "nsfw", "explicit")

# Used when tipo-kgen's lists are not installed; real names so the text looks right.
FALLBACK_NAMES: dict[str, tuple[str, ...]] = {
    "artist": (
        "ask (askzy)",
        "wlop",
        "mika pikazo",
        "kantoku",
        "hiten (hitenkei)",
        "tony taka",
        "ke-ta",
        "yoneyama mai",
        "fuzichoco",
        "lack",
        "redjuice",
        "shiratama (shiratamaco)",
    ),
    "characters": (
        "hatsune miku",
        "hakurei reimu",
        "kirisame marisa",
        "remilia scarlet",
        "saber (fate)",
        "asuna (sao)",
        "rem (re:zero)",
        "megumin",
        "gawr gura",
        "frieren",
        "artoria pendragon (fate)",
        "izayoi sakuya",
    ),
    "copyrights": (
        "touhou",
        "vocaloid",
        "fate (series)",
        "fate/grand order",
        "hololive",
        "genshin impact",
        "blue archive",
        "kantai collection",
        "idolmaster",
        "re:zero kara hajimeru isekai seikatsu",
        "sousou no frieren",
        "pokemon",
    ),
}
_POOL_SIZES = {"artist": 300, "characters": 300, "copyrights": 120}
_MAX_NAME_CHARS = 32


@dataclass(frozen=True)
class TinyModel:
    """Where one build put its files."""

    hf_dir: Path
    gguf_f16: Path
    gguf_f32: Path

    @property
    def root(self) -> Path:
        return self.hf_dir.parent


@dataclass(frozen=True)
class _Vocab:
    """The full token table: sentencepiece pieces followed by DTG's added tokens."""

    pieces: tuple[str, ...]
    scores: tuple[float, ...]
    types: tuple[int, ...]
    sp_model: bytes
    added: tuple[str, ...] = ADDED_TOKENS  # the format's own tokens, after the pieces

    @property
    def size(self) -> int:
        return len(self.pieces)


def _layout(out_dir: Path) -> TinyModel:
    return TinyModel(
        hf_dir=out_dir / "hf",
        gguf_f16=out_dir / "tiny-dtg-f16.gguf",
        gguf_f32=out_dir / "tiny-dtg-f32.gguf",
    )


# --------------------------------------------------------------------------- corpus


def _kgen_tag_list_dir() -> Path | None:
    # find_spec on a top-level package reads no code, so kgen's imports never run.
    try:
        spec = importlib.util.find_spec("kgen")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "tag-list"
        if folder.is_dir():
            return folder
    return None


def _name_pools(rng: random.Random) -> tuple[dict[str, list[str]], str]:
    """Sample artist/character/copyright names, from tipo-kgen when installed."""
    folder = _kgen_tag_list_dir()
    pools: dict[str, list[str]] = {}
    source = "kgen" if folder else "builtin"
    for category, size in _POOL_SIZES.items():
        names = _read_names(folder / f"{category}.txt") if folder else []
        names = [n for n in names if 0 < len(n) <= _MAX_NAME_CHARS and "," not in n]
        if len(names) < size:
            names, source = list(FALLBACK_NAMES[category]), "builtin"
            pools[category] = names
        else:
            pools[category] = rng.sample(names, size)
    return pools, source


def _read_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read tag list %s: %s", path, exc)
        return []
    return [line.strip() for line in text.splitlines()]


def _zipf_weights(n: int) -> list[float]:
    return [1.0 / (rank + 8) for rank in range(n)]


def _pick_some(rng: random.Random, names: Sequence[str], most: int) -> str:
    count = rng.choice([0, 0, 1, 1, most])
    picked = list(dict.fromkeys(rng.choice(names) for _ in range(count)))
    return ", ".join(picked) if picked else "<|empty|>"


def _special_tags(rng: random.Random) -> list[str]:
    roll = rng.random()
    if roll < 0.6:
        return ["1girl", "solo"]
    if roll < 0.75:
        return ["1boy", "male focus", "solo"]
    if roll < 0.85:
        return [rng.choice(["2girls", "3girls", "multiple girls"])]
    if roll < 0.92:
        return ["1girl", "1boy"]
    return []


# Completion sizes per length target, scaled down from DTG's so samples stay short.
_NEW_TAGS = {"very_short": (3, 6), "short": (5, 9), "long": (7, 12), "very_long": (9, 15)}


def make_sample(rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, str]:
    """One DTG training example: the prompt up to `<|input_end|>` and its completion."""
    target = rng.choice(TARGET_WORDS)
    weights = _zipf_weights(len(GENERAL_TAGS))
    low, high = _NEW_TAGS[target]
    wanted = rng.randint(0, 6) + rng.randint(low, high)
    tags: list[str] = []
    while len(tags) < wanted:
        tag = rng.choices(GENERAL_TAGS, weights=weights)[0]
        if tag not in tags:
            tags.append(tag)
    given = rng.randint(0, min(6, len(tags) - low))
    general = _special_tags(rng) + tags[:given]
    lines = []
    if rng.random() < 0.7:
        lines.append(f"quality: {', '.join(rng.sample(QUALITY_TAGS, rng.randint(1, 2)))}")
    lines += [
        f"rating: {rng.choice(RATINGS)}",
        f"artist: {_pick_some(rng, pools['artist'], 2)}",
        f"characters: {_pick_some(rng, pools['characters'], 2)}",
        f"copyrights: {_pick_some(rng, pools['copyrights'], 2)}",
        f"aspect ratio: {rng.choice([0.5, 0.6, 0.7, 0.8, 1.0, 1.0, 1.3, 1.5, 1.8]):.1f}",
        f"target: <|{target}|>",
        f"general: {', '.join(general)}<|input_end|>",
    ]
    return "\n".join(lines), ", ".join(tags[given:])


def _corpus(seed: int, count: int) -> tuple[list[tuple[str, str]], str]:
    rng = random.Random(seed)
    pools, source = _name_pools(rng)
    return [make_sample(rng, pools) for _ in range(count)], source


# ------------------------------------------------------------------------ tokenizer


def _sp_training_lines(
    samples: Sequence[tuple[str, str]], added: Sequence[str] = ADDED_TOKENS
) -> Iterator[str]:
    for prompt, completion in samples:
        text = prompt
        for token in added:
            text = text.replace(token, " ")
        yield from (line for line in text.split("\n") if line.strip())
        yield completion


def _train_sentencepiece(
    samples: Sequence[tuple[str, str]], vocab_size: int, added: Sequence[str] = ADDED_TOKENS
) -> bytes:
    import sentencepiece as spm

    # The options mirror the LLaMA tokenizer: BPE (llama.cpp's SPM tokenizer merges
    # by score, which only matches BPE models), no normalisation so newlines
    # survive, digits split, and byte fallback so no character becomes <unk>.
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sp_training_lines(samples, added),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def _vocab_from_sentencepiece(sp_model: bytes, added: Sequence[str] = ADDED_TOKENS) -> _Vocab:
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=sp_model)
    pieces, scores, types = [], [], []
    for i in range(processor.get_piece_size()):
        pieces.append(processor.id_to_piece(i))
        scores.append(float(processor.get_score(i)))
        if processor.is_unknown(i):
            types.append(_UNKNOWN)
        elif processor.is_control(i):
            types.append(_CONTROL)
        elif processor.is_byte(i):
            types.append(_BYTE)
        else:
            types.append(_NORMAL)
    pieces += added
    scores += [0.0] * len(added)
    types += [_CONTROL] * len(added)
    return _Vocab(tuple(pieces), tuple(scores), tuple(types), sp_model, tuple(added))


def _bpe_merges(vocab: _Vocab) -> list[tuple[str, str]]:
    """Merges that make a rank-based BPE reproduce sentencepiece's score-based one."""
    ids = {p: i for i, (p, t) in enumerate(zip(vocab.pieces, vocab.types)) if t == _NORMAL}
    ranked = []
    for piece, piece_id in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                key = (-vocab.scores[piece_id], piece_id, ids[left], ids[right])
                ranked.append((key, (left, right)))
    ranked.sort()
    return [pair for _, pair in ranked]


def build_hf_tokenizer(vocab: _Vocab) -> Any:
    """A `tokenizers.Tokenizer` equal to the legacy LLaMA fast tokenizer layout."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    table = {piece: i for i, piece in enumerate(vocab.pieces)}
    model = BPE(
        vocab=table,
        merges=_bpe_merges(vocab),
        unk_token="<unk>",
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    specials = ["<unk>", "<s>", "</s>", *vocab.added]
    # add_special_tokens marks them special; the `special=` keyword would be an
    # unknown option for tokenizers 0.13 (transformers 4.30).
    tokenizer.add_special_tokens([AddedToken(t, normalized=False) for t in specials])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def _portable_tokenizer_json(tokenizer: Any) -> dict[str, Any]:
    """tokenizer.json in the layout tokenizers 0.13 (transformers 4.30) can read too.

    Newer tokenizers write merges as pairs and add `ignore_merges`; the old
    reader wants "left right" strings and rejects the model otherwise. Pieces
    never contain a plain space (sentencepiece uses "▁"), so the join is safe.
    """
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    if not model.get("ignore_merges"):
        model.pop("ignore_merges", None)
    return data


def _tokenizer_config(vocab: _Vocab, max_length: int = MAX_POSITIONS) -> dict[str, Any]:
    decoder = {
        str(i): {
            "content": piece,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, piece in enumerate(vocab.pieces)
        if vocab.types[i] in (_UNKNOWN, _CONTROL)
    }
    return {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        # "legacy" keeps a space-prefix after every special token, like the
        # tokenizer DTG was trained with and like llama.cpp.
        "legacy": True,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
        "sp_model_kwargs": {},
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(vocab.added),
    }


def _save_tokenizer(
    hf_dir: Path, vocab: _Vocab, tokenizer: Any, max_length: int = MAX_POSITIONS
) -> None:
    hf_dir.mkdir(parents=True, exist_ok=True)
    (hf_dir / "tokenizer.model").write_bytes(vocab.sp_model)
    _write_json(hf_dir / "tokenizer.json", _portable_tokenizer_json(tokenizer))
    _write_json(hf_dir / "tokenizer_config.json", _tokenizer_config(vocab, max_length))
    special_map = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "additional_special_tokens": list(vocab.added),
    }
    _write_json(hf_dir / "special_tokens_map.json", special_map)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- model


def tiny_config(
    vocab_size: int, hidden_act: str = "mish", max_positions: int = MAX_POSITIONS
) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act=hidden_act,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )


def _encode_samples(
    tokenizer: Any, samples: Sequence[tuple[str, str]]
) -> list[tuple[list[int], int]]:
    """Token ids (BOS + prompt + completion + EOS) and where the completion starts."""
    prompts = tokenizer.encode_batch([p for p, _ in samples])
    full = tokenizer.encode_batch([p + c for p, c in samples])
    encoded = []
    for prompt, whole in zip(prompts, full):
        encoded.append(([*whole.ids, 2], len(prompt.ids)))
    return encoded


def _batches(
    encoded: Sequence[tuple[list[int], int]], steps: int, rng: random.Random, batch: int = BATCH
) -> Iterator[tuple[Any, Any, Any]]:
    import torch

    for _ in range(steps):
        chosen = rng.sample(encoded, batch)
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.full((batch, width), 2, dtype=torch.long)
        labels = torch.full((batch, width), -100, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, (ids, start) in enumerate(chosen):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            # Only the completion is learnt: the model must continue tags, not invent prompts.
            labels[row, start : len(ids)] = torch.tensor(ids[start:])
        yield input_ids, mask, labels


def _train(
    vocab_size: int,
    encoded: Sequence[tuple[list[int], int]],
    seed: int,
    steps: int,
    *,
    batch: int = BATCH,
    max_positions: int = MAX_POSITIONS,
) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    rng = random.Random(seed + 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(vocab_size, max_positions=max_positions))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=max(steps, 2), pct_start=0.1
    )
    loss_value = float("nan")
    for step, (input_ids, mask, labels) in enumerate(_batches(encoded, steps, rng, batch)):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if step % 40 == 0:
            log.debug("tiny model step %d loss %.3f", step, loss_value)
    log.info("tiny model trained %d steps, final loss %.3f", steps, loss_value)
    model.eval()
    return model


def _save_hf(model: Any, hf_dir: Path) -> None:
    from transformers import GenerationConfig

    model.save_pretrained(hf_dir, safe_serialization=True)
    _add_legacy_config_keys(hf_dir / "config.json")
    GenerationConfig(
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        do_sample=True,
        temperature=1.0,
        top_p=0.95,
        top_k=100,
        max_new_tokens=256,
    ).save_pretrained(hf_dir)


def _add_legacy_config_keys(path: Path) -> None:
    # Transformers 5 writes `rope_parameters` and `dtype`; 4.x reads `rope_theta`
    # and `torch_dtype`. Both spellings keep the folder loadable by either.
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    _write_json(path, config)


# ----------------------------------------------------------------------------- GGUF


def rope_interleave(weight: Any, n_heads: int) -> Any:
    """Reorder q/k projection rows from HF's half-split rope to llama.cpp's pairwise rope.

    Transformers rotates dimension i of each head with dimension i + head_dim/2;
    llama.cpp's LLaMA graph rotates neighbours (2i, 2i+1). Interleaving the two
    halves of every head's rows makes both compute the same attention scores.
    """
    rows, cols = weight.shape
    half = rows // n_heads // 2
    return weight.reshape(n_heads, 2, half, cols).swapaxes(1, 2).reshape(rows, cols)


_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_tensors(state: dict[str, Any], config: Any) -> Iterator[tuple[str, Any]]:
    """(gguf name, float32 numpy array) for every weight of a LLaMA state dict."""
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    for hf_name, tensor in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # a cached buffer in transformers 4.x state dicts, not a weight
        array = tensor.detach().to("cpu").float().numpy()
        if hf_name in top:
            yield top[hf_name], array
            continue
        _, _, layer, rest = hf_name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            array = rope_interleave(array, config.num_attention_heads)
        elif rest == "self_attn.k_proj.weight":
            array = rope_interleave(array, config.num_key_value_heads)
        yield f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}", array


def write_gguf(
    path: Path,
    state: dict[str, Any],
    config: Any,
    vocab: _Vocab,
    kind: str,
    *,
    name: str = "tiny-dtg",
) -> None:
    """A llama GGUF of `kind` "f32", "f16" or "Q8_0" (the benchmarks write full-size ones)."""
    import gguf
    import numpy as np

    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab.size)
    writer.add_file_type(file_types[kind])
    _add_gguf_vocab(writer, vocab)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for tensor_name, array in gguf_tensors(state, config):
        # Norm vectors stay f32 in f16 and Q8_0 files, as llama.cpp's own converter does.
        if kind == "f32" or array.ndim == 1:
            writer.add_tensor(tensor_name, array.astype(np.float32))
        elif kind == "f16":
            writer.add_tensor(tensor_name, array.astype(np.float16))
        else:
            writer.add_tensor(tensor_name, gguf.quants.quantize(array, q8), raw_dtype=q8)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _add_gguf_vocab(writer: Any, vocab: _Vocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_token_list(list(vocab.pieces))
    writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)


# llama.cpp file types for the quantizations DTG ships (llama_ftype values).
QUANT_FTYPES = {"Q8_0": 7, "Q6_K": 18}


def quantize_gguf(source: Path, out: Path, quant: str = "Q8_0") -> Path:
    """Write `source` (an f32/f16 GGUF) quantized to `quant` with llama.cpp's own quantizer.

    The real DTG files were made by this quantizer, so a test file made here
    exercises the same kernels. gguf.quants cannot write Q6_K; llama.cpp can, but
    falls back to Q8_0 for rows that are not a multiple of 256, which is every
    matrix of the tiny model (width 128).
    """
    import ctypes

    import llama_cpp

    if quant not in QUANT_FTYPES:
        raise ValueError(f"unknown quantization {quant!r}: use one of {', '.join(QUANT_FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = os.cpu_count() or 1
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(out).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"llama.cpp failed to quantize {source} to {quant} (status {status})")
    return out


# ---------------------------------------------------------------------------- build


def build_tiny_model(out_dir: Path, *, seed: int = 0, steps: int = TRAIN_STEPS) -> TinyModel:
    """Train the tiny DTG-format model and write the HF folder and both GGUF files.

    `steps` exists so tests can check determinism with a short run; the default
    gives a model that continues DTG prompts with tags and EOS.
    """
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    layout = _layout(out_dir)
    samples, source = _corpus(seed, TRAIN_SAMPLES)
    vocab = _vocab_from_sentencepiece(_train_sentencepiece(samples, SP_VOCAB_SIZE))
    tokenizer = build_hf_tokenizer(vocab)
    _save_tokenizer(layout.hf_dir, vocab, tokenizer)
    model = _train(vocab.size, _encode_samples(tokenizer, samples), seed, steps)
    _save_hf(model, layout.hf_dir)
    with torch.no_grad():
        state = dict(model.state_dict())
    write_gguf(layout.gguf_f32, state, model.config, vocab, "f32")
    write_gguf(layout.gguf_f16, state, model.config, vocab, "f16")
    info = {
        "recipe": RECIPE_VERSION,
        "seed": seed,
        "steps": steps,
        "names": source,
        "vocab_size": vocab.size,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(out_dir / BUILD_INFO, info)
    log.info("tiny model built in %.1fs at %s", info["build_seconds"], out_dir)
    return layout


def _cached_build_matches(out_dir: Path, seed: int) -> bool:
    layout = _layout(out_dir)
    files = (layout.gguf_f16, layout.gguf_f32, layout.hf_dir / "model.safetensors")
    return _build_matches(out_dir, RECIPE_VERSION, seed, TRAIN_STEPS, files)


def _build_matches(
    out_dir: Path, recipe: int, seed: int, steps: int, files: Sequence[Path]
) -> bool:
    """Whether `out_dir` holds a finished build of this recipe, seed and step count."""
    info = _read_build_info(out_dir)
    return (
        info.get("recipe") == recipe
        and info.get("seed") == seed
        and info.get("steps") == steps
        and all(f.is_file() for f in files)
    )


def tiny_model_cached(cache_dir: Path, *, seed: int = 0) -> TinyModel:
    """Reuse the build in `cache_dir` when its recipe matches, else build it there."""
    cache_dir = Path(cache_dir)
    if not _cached_build_matches(cache_dir, seed):
        _build_into(
            cache_dir,
            lambda staging: build_tiny_model(staging, seed=seed),
            lambda: _cached_build_matches(cache_dir, seed),
        )
    return _layout(cache_dir)


def _build_into(
    cache_dir: Path, build: Callable[[Path], object], done_meanwhile: Callable[[], bool]
) -> None:
    """Build beside the target and swap it in, so an interrupted build never looks valid."""
    staging = cache_dir.with_name(f".{cache_dir.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    _swap_in(staging, cache_dir, done_meanwhile())


# ------------------------------------------------------------------ tiny TIPO model
#
# The same tiny LLaMA, trained briefly on text in TIPO's format (dtg_lib.tipo_format
# writes every input), with TIPO's special tokens and not DTG's `<|input_end|>`: a
# model whose family is read as "tipo" and that answers with `tag:` / `long:` text.

# Bump whenever a TIPO build's output changes; the DTG build has its own RECIPE_VERSION.
TIPO_RECIPE_VERSION = 1
TIPO_ADDED_TOKENS = (
    *(f"<|{word}|>" for word in TARGET_WORDS),
    "<|short_to_tag|>",
    "<|short_to_tag_to_long|>",
    "<|tag_to_long|>",
    "<|tag_to_long_to_short|>",
    "<|tag_to_short|>",
    "<|tag_to_short_to_long|>",
    "<|long_to_tag|>",
    "<|gen_meta|>",
)
TIPO_CONTEXT = 1024  # as TIPO v1
TIPO_SP_VOCAB_SIZE = 700
TIPO_TRAIN_SAMPLES = 1200
TIPO_TRAIN_STEPS = 90
TIPO_BATCH = 16
_TIPO_SIZES = ((1024, 1024), (832, 1216), (1216, 832), (768, 1344))
_SUBJECTS = {"1girl": "girl", "1boy": "boy", "2girls": "two girls", "multiple girls": "girls"}


@dataclass(frozen=True)
class TinyTipoModel:
    """Where one TIPO build put its files."""

    hf_dir: Path
    gguf_f16: Path

    @property
    def root(self) -> Path:
        return self.hf_dir.parent


def _tipo_layout(out_dir: Path) -> TinyTipoModel:
    return TinyTipoModel(hf_dir=out_dir / "hf", gguf_f16=out_dir / "tiny-tipo-f16.gguf")


def _tipo_caption(rng: random.Random, special: Sequence[str], tags: Sequence[str]) -> str:
    """A short made-up caption of some of the tags, one to three sentences."""
    subject = next((_SUBJECTS[t] for t in special if t in _SUBJECTS), "character")
    picked = rng.sample(list(tags), min(len(tags), rng.randint(1, 3)))
    return " ".join(f"The {subject} has {tag}." for tag in picked) or f"A {subject}."


def make_tipo_sample(rng: random.Random, pools: dict[str, list[str]]) -> tuple[str, str]:
    """One TIPO training example: a model input from dtg_lib.tipo_format and what follows.

    Three kinds: continue the `tag` section, write the `long` caption of the tags, and
    continue the tags of a short caption (`short_to_tag`).
    """
    from dtg_lib.categories import Category
    from dtg_lib.tipo_format import TipoPass, TipoRequest, build_model_input

    length = rng.choice(TARGET_WORDS)
    low, high = _NEW_TAGS[length]
    tags = list(dict.fromkeys(rng.choices(GENERAL_TAGS, k=rng.randint(low, high) + 3)))
    given = rng.randint(0, 3)
    special = _special_tags(rng)
    width, height = rng.choice(_TIPO_SIZES)
    header: dict[Category, list[str]] = {Category.RATING: [rng.choice(RATINGS)]}
    if rng.random() < 0.3:
        header[Category.ARTIST] = [rng.choice(pools["artist"])]
    if rng.random() < 0.3:
        header[Category.QUALITY] = rng.sample(QUALITY_TAGS, rng.randint(1, 2))
    known = {**header, Category.SPECIAL: special, Category.GENERAL: tags[:given]}
    kind = rng.choice(("tag", "tag", "long", "short_to_tag"))
    if kind == "long":
        request = TipoRequest(tags={**known, Category.GENERAL: tags}, width=width, height=height)
        step = TipoPass("tag_to_long", length, expand=False)
        return build_model_input(request, step), " " + _tipo_caption(rng, special, tags)
    text = _tipo_caption(rng, special, tags[:given]) if kind == "short_to_tag" else ""
    request = TipoRequest(tags=known, text=text, width=width, height=height)
    operation = "short_to_tag" if kind == "short_to_tag" else None
    prompt = build_model_input(request, TipoPass(operation, length, expand=True))
    new = ", ".join(tags[given:])
    if prompt.endswith(("tag:", "tag: ")) or not request.tag_section():
        # No tags given: the model opens the `tag` section itself.
        return prompt, ("\ntag: " if "\ntag:" not in prompt else " ") + new
    return prompt, ", " + new


def build_tiny_tipo_model(
    out_dir: Path, *, seed: int = 0, steps: int = TIPO_TRAIN_STEPS
) -> TinyTipoModel:
    """Train the tiny TIPO-format model and write its HF folder and f16 GGUF."""
    import torch

    started = time.perf_counter()
    out_dir = Path(out_dir)
    layout = _tipo_layout(out_dir)
    rng = random.Random(seed)
    pools, source = _name_pools(rng)
    samples = [make_tipo_sample(rng, pools) for _ in range(TIPO_TRAIN_SAMPLES)]
    sp_model = _train_sentencepiece(samples, TIPO_SP_VOCAB_SIZE, TIPO_ADDED_TOKENS)
    vocab = _vocab_from_sentencepiece(sp_model, TIPO_ADDED_TOKENS)
    tokenizer = build_hf_tokenizer(vocab)
    _save_tokenizer(layout.hf_dir, vocab, tokenizer, TIPO_CONTEXT)
    encoded = _encode_samples(tokenizer, samples)
    model = _train(vocab.size, encoded, seed, steps, batch=TIPO_BATCH, max_positions=TIPO_CONTEXT)
    _save_hf(model, layout.hf_dir)
    with torch.no_grad():
        state = dict(model.state_dict())
    write_gguf(layout.gguf_f16, state, model.config, vocab, "f16", name="tiny-tipo")
    info = {
        "recipe": TIPO_RECIPE_VERSION,
        "seed": seed,
        "steps": steps,
        "names": source,
        "vocab_size": vocab.size,
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    _write_json(out_dir / BUILD_INFO, info)
    log.info("tiny TIPO model built in %.1fs at %s", info["build_seconds"], out_dir)
    return layout


def _tipo_build_matches(out_dir: Path, seed: int) -> bool:
    layout = _tipo_layout(out_dir)
    files = (layout.gguf_f16, layout.hf_dir / "model.safetensors")
    return _build_matches(out_dir, TIPO_RECIPE_VERSION, seed, TIPO_TRAIN_STEPS, files)


def _read_build_info(out_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((out_dir / BUILD_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def tiny_tipo_model_cached(cache_dir: Path, *, seed: int = 0) -> TinyTipoModel:
    """Reuse the TIPO build in `cache_dir` when its recipe matches, else build it there.

    Give it a folder of its own (not inside the DTG model's cache, which a DTG rebuild
    replaces whole).
    """
    cache_dir = Path(cache_dir)
    if not _tipo_build_matches(cache_dir, seed):
        _build_into(
            cache_dir,
            lambda staging: build_tiny_tipo_model(staging, seed=seed),
            lambda: _tipo_build_matches(cache_dir, seed),
        )
    return _tipo_layout(cache_dir)


def _swap_in(staging: Path, cache_dir: Path, already_done: bool) -> None:
    """Move a finished build into place, unless another process finished first."""
    if already_done:
        shutil.rmtree(staging, ignore_errors=True)
        return
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(cache_dir)


BUILD_MODULES = ("torch", "transformers", "sentencepiece", "tokenizers", "gguf", "numpy")


def missing_build_modules() -> list[str]:
    return [name for name in BUILD_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dtg_dev.tiny_model",
        description="Build a tiny DTG-format model (HF folder + f16/f32 GGUF).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    missing = missing_build_modules()
    if missing:
        # Checked first: training takes minutes, and the GGUF writer is needed last.
        parser.exit(
            2,
            f"error: building the tiny model needs {', '.join(missing)}: "
            "pip install -e '.[torch,tiny]'\n",
        )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    built = build_tiny_model(args.out_dir, seed=args.seed)
    for path in (built.hf_dir, built.gguf_f16, built.gguf_f32):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
