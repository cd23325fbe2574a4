"""The llama.cpp thread count: physical cores, fewer while other work holds them, or a setting."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from dtg_lib.backends import threads
from dtg_lib.backends.threads import (
    THREADS_ENV,
    CpuSample,
    ThreadPolicy,
    auto_threads,
    busy_seconds,
    cgroup_cpu_limit,
    configured_threads,
    others_busy,
    parse_threads,
    physical_cores,
    use_threads,
)
from dtg_lib.settings import SettingsError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _threads_env_restored(monkeypatch):
    """Each test starts from "auto"; what a test (or use_threads) sets is undone after it."""
    monkeypatch.setenv(THREADS_ENV, "auto")


def fake_sys(root: Path, siblings: dict[int, str], *, old_kernel: bool = False) -> Path:
    """A /sys tree whose cpuN/topology lists each CPU's core siblings."""
    name = "thread_siblings_list" if old_kernel else "core_cpus_list"
    for cpu, text in siblings.items():
        topology = root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / name).write_text(text + "\n")
    return root


# ---------------------------------------------------------------- physical cores


def test_smt_siblings_count_as_one_core(tmp_path):
    # 4 cores with 2 threads each, numbered as Linux does on x86: cpuN and cpuN+4 pair up.
    sys_root = fake_sys(tmp_path, {c: f"{c % 4},{c % 4 + 4}" for c in range(8)})
    assert physical_cores(range(8), sys_root=sys_root, platform="linux") == 4


def test_sibling_ranges_and_old_kernels(tmp_path):
    sys_root = fake_sys(tmp_path, {0: "0-1", 1: "0-1", 2: "2-3", 3: "2-3"}, old_kernel=True)
    assert physical_cores(range(4), sys_root=sys_root, platform="linux") == 2


def test_only_the_allowed_cpus_count(tmp_path):
    sys_root = fake_sys(tmp_path, {c: f"{c % 4},{c % 4 + 4}" for c in range(8)})
    # Allowed on both threads of core 0 and one of core 1: two cores.
    assert physical_cores({0, 4, 1}, sys_root=sys_root, platform="linux") == 2
    assert physical_cores({0, 4}, sys_root=sys_root, platform="linux") == 1


def test_no_smt_counts_every_cpu(tmp_path):
    sys_root = fake_sys(tmp_path, {0: "0", 1: "1"})
    assert physical_cores({0, 1}, sys_root=sys_root, platform="linux") == 2


def test_unreadable_topology_falls_back_to_the_allowed_cpus(tmp_path):
    sys_root = fake_sys(tmp_path, {0: "0,1"})  # cpu1 has no topology folder
    assert physical_cores({0, 1}, sys_root=sys_root, platform="linux") == 2
    assert physical_cores({0, 1, 2}, sys_root=tmp_path / "nothing", platform="linux") == 3


def test_other_systems_without_sys_use_the_cpu_count(tmp_path, monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert physical_cores(set(), sys_root=tmp_path, platform="win32") == 6


def test_container_cpu_quota_caps_the_cores(tmp_path):
    sys_root = fake_sys(tmp_path, {c: str(c) for c in range(8)})
    cgroup = sys_root / "fs" / "cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(cgroup) == 2
    assert physical_cores(range(8), sys_root=sys_root, platform="linux") == 2
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(cgroup) is None
    assert physical_cores(range(8), sys_root=sys_root, platform="linux") == 8


def test_cgroup_v1_quota(tmp_path):
    v1 = tmp_path / "cpu"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("300000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 3
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_this_machine_has_at_least_one_core_and_no_more_than_its_cpus():
    assert 1 <= physical_cores() <= (threads.os.cpu_count() or 1)


# ---------------------------------------------------------------- the load and the auto rule


PROC_STAT = """cpu  500 0 100 1000 10 0 0 0 0 0
cpu0 200 0 50 500 5 0 0 0 0 0
cpu1 300 0 50 500 5 0 0 0 0 0
intr 1 2 3
ctxt 99
"""


def test_busy_seconds_counts_busy_columns_of_the_chosen_cpus():
    ticks = threads._CLOCK_TICKS
    assert busy_seconds(PROC_STAT, frozenset({1})) == pytest.approx(350 / ticks)
    assert busy_seconds(PROC_STAT, frozenset({0, 1})) == pytest.approx(600 / ticks)
    assert busy_seconds(PROC_STAT, None) == pytest.approx(600 / ticks)
    steal = "cpu0 100 0 0 0 0 0 0 40 0 0\n"  # another guest of the hypervisor on our core
    assert busy_seconds(steal, frozenset({0})) == pytest.approx(140 / ticks)


def test_others_busy_subtracts_our_own_cpu_time():
    before = CpuSample(wall_s=10.0, busy_s=100.0, own_s=5.0)
    after = CpuSample(wall_s=12.0, busy_s=104.0, own_s=7.0)  # 4 busy CPU-s, 2 of them ours
    assert others_busy(before, after) == pytest.approx(1.0)
    quiet = CpuSample(wall_s=12.0, busy_s=102.0, own_s=7.0)
    assert others_busy(before, quiet) == 0.0


@pytest.mark.parametrize(
    ("cores", "others", "expected"),
    [
        (2, 0.0, 2),
        (2, 0.29, 2),  # background noise keeps every core
        (2, 0.3, 1),  # others holding a third of a core take it
        (2, 1.0, 1),
        (2, 7.5, 1),  # never below one
        (8, 1.2, 7),
        (8, 1.35, 6),
        (1, 3.0, 1),
    ],
)
def test_auto_rule(cores, others, expected):
    assert auto_threads(cores, others) == expected


class FakeLoad:
    """Samples as if `others` cores were busy with other work since the previous one."""

    def __init__(self) -> None:
        self.others = 0.0
        self.wall = self.busy = 0.0

    def __call__(self) -> CpuSample:
        now = threads.time.monotonic()
        self.busy += self.others * (now - self.wall) if self.wall else 0.0
        self.wall = now
        return CpuSample(now, self.busy + threads.own_cpu_seconds(), threads.own_cpu_seconds())


def test_auto_policy_leaves_held_cores_out_and_takes_them_back(monkeypatch):
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.0)
    load = FakeLoad()
    policy = ThreadPolicy(cores=4, sampler=load)
    assert policy.at_load == 4
    load.others = 2.0
    threads.time.sleep(0.01)
    assert policy.choose() == 2
    load.others = 0.0
    threads.time.sleep(0.01)
    assert policy.choose() == 4


def test_a_short_window_keeps_the_last_choice(monkeypatch):
    load = FakeLoad()
    policy = ThreadPolicy(cores=4, sampler=load)
    load.others = 3.0
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 60.0)
    assert policy.choose() == 4  # too soon to tell
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.0)
    assert policy.choose() == 1


def test_a_fixed_count_ignores_the_load(monkeypatch):
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.0)
    load = FakeLoad()
    load.others = 3.0
    assert ThreadPolicy(3, cores=4, sampler=load).choose() == 3
    monkeypatch.setenv(THREADS_ENV, "6")
    policy = ThreadPolicy(cores=4, sampler=load)
    assert (policy.at_load, policy.choose()) == (6, 6)
    monkeypatch.setenv(THREADS_ENV, "auto")  # read again at every call
    threads.time.sleep(0.01)
    assert policy.choose() == 1
    assert ThreadPolicy(2, cores=4, sampler=load).choose() == 2  # the caller's count wins


def test_without_proc_stat_the_count_stays(monkeypatch):
    """The load average still counts our own decoding for a minute after it: read as
    others' load, it would take threads away with nothing else running."""
    monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.0)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.2, 0.0, 0.0), raising=False)
    policy = ThreadPolicy(cores=4, sampler=lambda: None)
    threads.time.sleep(0.01)
    assert policy.choose() == 4


def test_others_are_set_against_every_cpu_we_may_use():
    # A container capped at 4 cores on a 64-CPU host where others keep 40 CPUs busy.
    assert auto_threads(4, 40.0, capacity=64) == 4
    assert auto_threads(4, 61.0, capacity=64) == 3
    assert auto_threads(32, 30.0, capacity=64) == 32
    assert auto_threads(2, 1.0) == 1  # the quiet 2-core case is unchanged


@pytest.mark.parametrize("value", ["²", "1" * 5000, "٣"])
def test_digits_int_refuses_are_a_settings_error(value):
    with pytest.raises(SettingsError, match="whole number"):
        parse_threads(value)


# ---------------------------------------------------------------- the setting


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", None), ("", None), (None, None), (" AUTO ", None), ("4", 4), (" 12 ", 12)],
)
def test_setting_values(value, expected):
    assert parse_threads(value) == expected


def test_setting_numbers_and_the_top_of_the_range():
    assert (parse_threads(3), parse_threads("512")) == (3, 512)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "between 1 and 512, got 0"),
        ("513", "between 1 and 512, got 513"),
        ("-2", "'auto' or a whole number of threads, got '-2'"),
        ("two", "'auto' or a whole number of threads, got 'two'"),
        ("2.5", "'auto' or a whole number of threads, got '2.5'"),
        (True, "'auto' or a whole number, got True"),
    ],
)
def test_bad_setting_values_are_refused_with_the_reason(value, message):
    with pytest.raises(SettingsError, match="threads must be") as caught:
        parse_threads(value)
    assert message in str(caught.value)


def test_environment_setting_names_the_variable():
    assert configured_threads({THREADS_ENV: "3"}) == 3
    assert configured_threads({}) is None
    with pytest.raises(SettingsError, match=f"^{THREADS_ENV} must be"):
        configured_threads({THREADS_ENV: "lots"})


def test_use_threads_sets_the_variable_every_backend_reads():
    use_threads("5")
    assert configured_threads() == 5
    use_threads("auto")
    assert configured_threads() is None
    with pytest.raises(SettingsError, match="--threads must be"):
        use_threads("x")
    assert configured_threads() is None  # a refused value changes nothing


def test_cli_flag_is_checked_and_applied(capsys):
    from dtg_lib import cli

    assert cli.main(["1girl", "--threads", "many", "--dry-run"]) == 2
    assert "--threads must be 'auto' or a whole number" in capsys.readouterr().err
    assert configured_threads() is None


def test_app_flag_is_checked():
    from dtg_app.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["--threads", "2"]).threads == "2"
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])


def test_webui_flag_is_registered():
    spec = importlib.util.spec_from_file_location("dtg_preload_threads", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    module.preload(parser)
    assert parser.parse_args(["--dtg-threads", "3"]).dtg_threads == "3"


def test_webui_flag_becomes_the_setting():
    from dtg_webui import host

    host._use_threads_flag("3")
    assert configured_threads() == 3
    host._use_threads_flag("nonsense")  # logged and ignored: the webui keeps running
    assert configured_threads() == 3


def test_a_bad_webui_flag_is_warned_about_once(caplog):
    from dtg_webui import host

    host._warn_once.cache_clear()
    for _ in range(3):  # config() runs at every job and Preview
        host._use_threads_flag("many")
    assert sum("--dtg-threads" in r.getMessage() for r in caplog.records) == 1


# ---------------------------------------------------------------- the backend gets it


def _n_threads(backend) -> tuple[int, int]:
    import llama_cpp

    ctx = backend._llm.ctx
    return llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx)


def test_llama_backend_loads_with_the_rule_and_follows_the_load(tiny_model, monkeypatch):
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends.llama_cpp import LlamaCppBackend

    monkeypatch.setattr(threads, "usable_cores", lambda: 3)
    backend = LlamaCppBackend(tiny_model.gguf_f16)
    try:
        assert backend.threads.at_load == 3
        assert _n_threads(backend) == (3, 3)
        load = FakeLoad()
        backend.threads._sampler = load  # the machine gets busy: 1.5 cores taken
        backend.threads._last = load()
        monkeypatch.setattr(threads, "MIN_WINDOW_S", 0.0)
        load.others = 1.5
        threads.time.sleep(0.01)
        assert backend.threads.apply(backend._llm) == 1
        assert _n_threads(backend) == (1, 1)
    finally:
        backend.close()


def test_llama_backend_takes_the_setting(tiny_model, monkeypatch):
    pytest.importorskip("llama_cpp")
    from dtg_lib.backends.llama_cpp import LlamaCppBackend

    wanted = (threads.os.cpu_count() or 1) + 1  # not what any default would give
    monkeypatch.setenv(THREADS_ENV, str(wanted))
    backend = LlamaCppBackend(tiny_model.gguf_f16)
    try:
        assert _n_threads(backend) == (wanted, wanted)
    finally:
        backend.close()
    explicit = LlamaCppBackend(tiny_model.gguf_f16, n_threads=1)
    try:
        assert _n_threads(explicit) == (1, 1)
    finally:
        explicit.close()


@pytest.mark.slow
def test_thread_counts_do_not_change_what_a_seed_gives(tiny_model, tmp_path):
    """`auto` changes the count between generations, so a seed's tokens must not depend
    on it: 1 and 2 threads, F16 and Q8_0, token for token (the README says so)."""
    pytest.importorskip("llama_cpp")
    from dtg_dev.tiny_model import quantize_gguf
    from dtg_lib.backends import load_backend
    from dtg_lib.settings import SamplingSettings

    q8 = quantize_gguf(tiny_model.gguf_f32, tmp_path / "tiny-Q8_0.gguf", "Q8_0")
    prompt = "quality: masterpiece\nrating: safe\ntarget: <|long|>\ngeneral: 1girl<|input_end|>"
    sampling = SamplingSettings(max_new_tokens=48)
    for path in (tiny_model.gguf_f16, q8):
        texts = {}
        for count in (1, 2):
            backend = load_backend("llama.cpp", path, n_threads=count)
            try:
                texts[count] = [backend.generate(prompt, sampling, seed).text for seed in range(3)]
            finally:
                backend.close()
        assert texts[1] == texts[2], path.name
        assert any(texts[1])
