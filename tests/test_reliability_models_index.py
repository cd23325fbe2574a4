"""Model files that change under a loaded model, and a tag index that keeps failing.

Each case reproduces one finding of the adversarial pass:

* a model file truncated while the model is loaded used to kill the process
  with SIGBUS (the weights were pages of a memory-mapped file), so those cases
  run in a subprocess whose exit status the test reads;
* a tag index corrupted a second time in one process used to turn every tag
  into a general one until restart, with two log lines per tag;
* a build killed halfway left its temporary file behind for good, and every
  set of tag sources left another index in the cache.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_tag_lookup import CSV_ROWS, write_csv, write_kgen_dir
from test_upsample_loop import ScriptedBackend

from dtg_lib import tag_index, tag_lookup
from dtg_lib.backends import BackendCache
from dtg_lib.categories import Category
from dtg_lib.model_selection import ModelChoice
from dtg_lib.settings import UpsampleSettings
from dtg_lib.tag_lookup import TagLookup, TagSource, default_index_path, sweep_cache
from dtg_lib.upsampler import Upsampler

REPO = Path(__file__).resolve().parent.parent
SIGBUS_EXIT = -signal.SIGBUS


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # No test may write into the real user cache.
    cache = tmp_path / "cache"
    monkeypatch.setenv("DTG_CACHE_DIR", str(cache))
    return cache


# --- model files truncated under a loaded model -------------------------------------

# Runs in a child process: expands a prompt four times through the real engine,
# printing one JSON line per request. `moment` says when the file is cut short:
# "during" from inside the model call (after any check the backend makes first),
# "before" after the request chose and validated the model but before it generates.
_SCENARIO = r"""
import json, sys
from pathlib import Path
from dtg_lib import upsampler as up
from dtg_lib.backends import BackendCache
from dtg_lib.settings import UpsampleSettings
from fake_lookup import FakeLookup

kind, path, weights, moment = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
original = weights.read_bytes()
cut = {"armed": False}

def cut_short():
    if cut["armed"]:
        cut["armed"] = False
        with weights.open("r+b") as handle:  # the same inode, as a failing copy would
            handle.truncate(4096)

def hook(owner, name):
    real = getattr(owner, name)
    def wrapped(*args, **kwargs):
        cut_short()
        return real(*args, **kwargs)
    setattr(owner, name, wrapped)

if moment == "before":
    hook(up, "fit_to_context")
elif kind == "llama.cpp":
    from dtg_lib.backends.llama_cpp import LlamaCppBackend
    hook(LlamaCppBackend, "_prefill")
else:
    from dtg_lib.backends.torch_sampling import BatchDecoder
    hook(BatchDecoder, "run")

cache = BackendCache()
engine = up.Upsampler(lookup=FakeLookup(), backends=cache, allow_download=False)
settings = UpsampleSettings.from_dict(
    {"model": str(path), "backend": kind, "target": "very_short"}
)

def request(step):
    try:
        result = engine.upsample("1girl, solo", settings, seed=1)
    except Exception as exc:  # the test reads what the user would see
        print(json.dumps({"step": step, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    else:
        print(json.dumps({"step": step, "prompt": result.final_prompt}), flush=True)

request("loaded")
cut["armed"] = True
request("cut")
request("still cut")
weights.write_bytes(original)
request("restored")
cache.unload()
"""


def _run_scenario(kind: str, model: Path, weights: Path, moment: str) -> tuple[int, list[dict]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    done = subprocess.run(
        [sys.executable, "-c", _SCENARIO, kind, str(model), str(weights), moment],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        print(done.stderr[-3000:])
    return done.returncode, steps


def _model_copy(kind: str, tiny_model, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the tiny model (the file or folder, and its weights file)."""
    import shutil

    if kind == "llama.cpp":
        pytest.importorskip("llama_cpp")
        model = tmp_path / "tiny.gguf"
        shutil.copyfile(tiny_model.gguf_f16, model)
        return model, model
    model = tmp_path / "tiny-hf"
    shutil.copytree(tiny_model.hf_dir, model)
    return model, model / "model.safetensors"


KINDS = [pytest.param("llama.cpp", marks=pytest.mark.llama), "torch"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_model_file_cut_short_during_a_generation_does_not_kill_the_process(
    kind: str, tiny_model, tmp_path: Path
) -> None:
    model, weights = _model_copy(kind, tiny_model, tmp_path)
    code, steps = _run_scenario(kind, model, weights, "during")
    assert code != SIGBUS_EXIT, "the process died of SIGBUS: the weights were still mapped"
    assert code == 0
    by_step = {step["step"]: step for step in steps}
    assert by_step["loaded"]["prompt"].startswith("1girl")
    # The model call under way finishes from the weights in memory. A later round of
    # the same expansion sees the changed file and tries to reload it, which fails:
    # then the request is one clear error that names the model.
    cut = by_step["cut"]
    assert cut.get("prompt", "").startswith("1girl") or (
        model.name in cut["error"] and "load" in cut["error"]
    )
    # The next request finds the file damaged: one clear error that names it.
    assert model.name in by_step["still cut"]["error"]
    # Restored, it loads again.
    assert by_step["restored"]["prompt"].startswith("1girl")


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_model_file_cut_short_after_it_was_chosen_is_a_clear_error_for_that_request(
    kind: str, tiny_model, tmp_path: Path
) -> None:
    model, weights = _model_copy(kind, tiny_model, tmp_path)
    code, steps = _run_scenario(kind, model, weights, "before")
    assert code != SIGBUS_EXIT, "the process died of SIGBUS: the weights were still mapped"
    assert code == 0
    by_step = {step["step"]: step for step in steps}
    assert by_step["loaded"]["prompt"].startswith("1girl")
    # The backend notices that the file changed since it was loaded and reloads it,
    # which fails: an error for this request that names the model, not a dead process.
    error = by_step["cut"]["error"]
    assert model.name in error and "load" in error
    assert "error" in by_step["still cut"]
    assert by_step["restored"]["prompt"].startswith("1girl")


@pytest.mark.slow
@pytest.mark.llama
def test_a_model_file_replaced_while_loaded_is_reloaded(tiny_model, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends.llama_cpp import LlamaCppBackend
    from dtg_lib.settings import SamplingSettings

    model = tmp_path / "tiny.gguf"
    model.write_bytes(tiny_model.gguf_f16.read_bytes())
    backend = LlamaCppBackend(model)
    try:
        first = backend._llm
        backend.generate("1girl", SamplingSettings(max_new_tokens=4), seed=1)
        # A new download renamed into place: a new inode under the same name.
        replacement = tmp_path / "new.gguf"
        replacement.write_bytes(tiny_model.gguf_f32.read_bytes())
        os.replace(replacement, model)
        backend.generate("1girl", SamplingSettings(max_new_tokens=4), seed=1)
        assert backend._llm is not first
    finally:
        backend.close()


def test_a_model_file_swapped_for_a_link_elsewhere_is_not_reloaded(
    tiny_model, tmp_path: Path
) -> None:
    # The model folder check runs when a request names a model; a reload must not
    # follow a file swapped for a link to a model nobody checked (a second adversarial pass).
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends import ModelLoadError
    from dtg_lib.backends.llama_cpp import LlamaCppBackend
    from dtg_lib.settings import SamplingSettings

    folder, outside = tmp_path / "models", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    model = folder / "tiny.gguf"
    model.write_bytes(tiny_model.gguf_f16.read_bytes())
    elsewhere = outside / "other.gguf"
    elsewhere.write_bytes(tiny_model.gguf_f32.read_bytes())
    backend = LlamaCppBackend(model)
    try:
        backend.generate("1girl", SamplingSettings(max_new_tokens=4), seed=1)
        model.unlink()
        model.symlink_to(elsewhere)
        with pytest.raises(ModelLoadError, match="now leads to another file"):
            backend.generate("1girl", SamplingSettings(max_new_tokens=4), seed=1)
    finally:
        backend.close()


# --- a tag index corrupted again and again ------------------------------------------


@pytest.fixture
def sources(tmp_path: Path) -> list[TagSource]:
    return [
        TagSource(write_kgen_dir(tmp_path / "tag-list"), "kgen-dir"),
        TagSource(write_csv(tmp_path / "danbooru.csv", CSV_ROWS), "tagcomplete"),
    ]


PROMPT = "1girl, hatsune miku, vocaloid, by wlop, long hair"
EXPECTED = {
    "hatsune miku": Category.CHARACTER,
    "vocaloid": Category.COPYRIGHT,
    "wlop": Category.ARTIST,
    "long hair": Category.GENERAL,
}
# The same, keyed by the tags as the prompt writes them (Result.tag_categories).
EXPECTED_IN_PROMPT = {("by wlop" if name == "wlop" else name): c for name, c in EXPECTED.items()}


def _overwrite(index: Path) -> None:
    """Garble the index in place, as a failing disk or a stray writer would."""
    index.write_bytes(os.urandom(index.stat().st_size))


def _categories(lookup: TagLookup) -> dict[str, Category]:
    infos = lookup.classify_many(["hatsune miku", "vocaloid", "by wlop", "long hair"])
    return {info.name: info.category for info in infos}


def test_index_corrupted_again_and_again_is_rebuilt_every_time(
    tmp_path: Path, sources: list[TagSource]
) -> None:
    index = tmp_path / "index.sqlite"
    with TagLookup.open(sources, index) as lookup:
        assert _categories(lookup) == EXPECTED
        for _ in range(3):
            _overwrite(index)
            assert _categories(lookup) == EXPECTED
            assert getattr(lookup, "notices", ()) == ()  # and nothing to tell the user
        # Deleted as well: the lookup keeps working from what it has open.
        index.unlink()
        assert _categories(lookup) == EXPECTED


def _engine(lookup: TagLookup, monkeypatch: pytest.MonkeyPatch) -> Upsampler:
    backend = ScriptedBackend()
    engine = Upsampler(
        lookup=lookup, backends=BackendCache(loader=lambda *args, **options: backend)
    )
    choice = ModelChoice("llama.cpp", Path("scripted.gguf"), "scripted", True)
    monkeypatch.setattr(engine, "_choose_model", lambda settings, progress=None: choice)
    return engine


def _index_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dtg" and r.levelno >= logging.WARNING and "tag index" in r.getMessage()
    ]


def test_index_that_cannot_be_rebuilt_is_a_notice_and_one_log_line(
    tmp_path: Path, sources: list[TagSource], monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    index = tmp_path / "index.sqlite"
    lookup = TagLookup.open(sources, index)
    engine = _engine(lookup, monkeypatch)
    settings = UpsampleSettings(target="short")
    real_connect = tag_lookup._connect

    def disk_failing(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(tag_lookup, "_connect", disk_failing)
    _overwrite(index)
    caplog.set_level(logging.INFO, logger="dtg")
    first = engine.upsample(PROMPT, settings, seed=1)
    # The user's prompt survives, and the result says why its tags read as general.
    assert first.final_prompt.startswith("1girl")
    assert "hatsune miku" in first.final_prompt
    assert any("tag index" in notice for notice in first.notices)
    assert first.tag_categories["hatsune miku"] == "general"
    # One line for the failure and one for the failed rebuild, not two per tag.
    assert len(_index_log_lines(caplog)) <= 2
    caplog.clear()
    second = engine.upsample(PROMPT, settings, seed=2)
    assert any("tag index" in notice for notice in second.notices)
    assert _index_log_lines(caplog) == []
    # Once a rebuild can work again (here: the retry time has come), it does.
    monkeypatch.setattr(tag_lookup, "_connect", real_connect)
    monkeypatch.setattr(lookup, "_retry_at", time.monotonic())
    third = engine.upsample(PROMPT, settings, seed=3)
    assert not any("tag index" in notice for notice in third.notices)
    assert {name: third.tag_categories[name] for name in EXPECTED_IN_PROMPT} == {
        name: category.value for name, category in EXPECTED_IN_PROMPT.items()
    }
    lookup.close()


# --- stale files in the cache folder -----------------------------------------------

_KILLED_BUILD = r"""
import os, signal, sys
from pathlib import Path
from dtg_lib import tag_index, tag_lookup

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

tag_index._fill = killed
source = tag_lookup.TagSource(Path(sys.argv[1]), "tagcomplete")
tag_lookup.TagLookup.open([source])
"""


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.skipif(os.name != "posix", reason="kills a process with SIGKILL")
def test_temporary_file_of_a_killed_build_is_removed(tmp_path: Path, _isolated_cache: Path) -> None:
    csv_path = write_csv(tmp_path / "danbooru.csv", CSV_ROWS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_BUILD, str(csv_path)], env=env, timeout=120
    )
    assert done.returncode == -signal.SIGKILL
    (left,) = _isolated_cache.glob(".tag-index-*.tmp")
    _age(left, 10 * 60)  # its writer is gone, and it is past the grace time
    # A build of our own that is under way (this pid, a fresh file) must stay.
    index = default_index_path([TagSource(csv_path, "tagcomplete")])
    ours = index.parent / f".{index.name}.{os.getpid()}.abcd1234.tmp"
    ours.write_bytes(b"building")
    # Someone else's file that merely looks alike stays too.
    unrelated = _isolated_cache / ".notes.123.abc.tmp"
    unrelated.write_bytes(b"")
    _age(unrelated, 10 * 3600)
    TagLookup.open([TagSource(csv_path, "tagcomplete")]).close()
    assert not left.exists()
    assert ours.exists() and unrelated.exists()
    _age(ours, 2 * 3600)  # an hour old: stale whoever wrote it
    TagLookup.open([TagSource(csv_path, "tagcomplete")]).close()
    assert not ours.exists()


def test_indexes_of_other_source_sets_are_not_kept_forever(
    tmp_path: Path, _isolated_cache: Path
) -> None:
    opened = []
    for number in range(7):
        source = TagSource(write_csv(tmp_path / f"set{number}.csv", CSV_ROWS), "tagcomplete")
        with TagLookup.open([source]) as lookup:
            opened.append(lookup.index_path)
        # Distinct "last used" times without sleeping.
        _age(lookup.index_path, (7 - number) * 60)
    kept = sorted(_isolated_cache.glob("tag-index-*.sqlite"))
    assert len(kept) == tag_index.KEEP_INDEXES
    assert set(kept) == set(opened[-tag_index.KEEP_INDEXES :])


def test_an_index_in_use_counts_as_recent_and_a_month_unused_goes(
    tmp_path: Path, _isolated_cache: Path
) -> None:
    old = TagSource(write_csv(tmp_path / "old.csv", CSV_ROWS), "tagcomplete")
    reused = TagSource(write_csv(tmp_path / "reused.csv", CSV_ROWS), "tagcomplete")
    TagLookup.open([old]).close()
    TagLookup.open([reused]).close()
    old_index, reused_index = default_index_path([old]), default_index_path([reused])
    _age(old_index, 31 * 24 * 3600)
    _age(reused_index, 40 * 24 * 3600)
    TagLookup.open([reused]).close()  # opening it marks it used
    mtime = reused_index.stat().st_mtime
    sweep_cache(_isolated_cache / "tag-index-0000000000000000.sqlite")
    assert not old_index.exists()
    assert reused_index.exists()
    # Marking it used kept its mtime, which other checks read.
    assert reused_index.stat().st_mtime == mtime
