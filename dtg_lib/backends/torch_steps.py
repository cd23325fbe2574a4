"""The forward passes behind the torch decode loop: prefill once, then one column a step.

Three ways to run them, chosen per backend by `decode_mode`:

- "eager": transformers' own forward with the cache it returns. Works with every
  model transformers can load; the reference the others are tested against.
- "static": `StaticLlama` over a preallocated cache. Same arithmetic, fixed shapes.
- "graph": "static" with the decode step captured once as a CUDA graph per
  batch size (see `StepFactory`) and replayed; capture takes a fraction of a
  second instead of a compiler's tens of seconds.

"auto" is "graph" on CUDA with torch 2.6 or later and "eager" elsewhere: on a CPU
the Python overhead is small next to the matmuls, and older torch cannot recover
from a refused capture (see `graphs_by_default`).
"""

from __future__ import annotations

import inspect
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from .torch_static import StaticCache, StaticDecodeUnsupported, StaticLlama, prefill_mask

log = logging.getLogger("dtg")

DECODE_MODES = ("auto", "eager", "static", "graph")
# Cache lengths are rounded up to this, so that jobs of similar size share a graph.
CACHE_LENGTH_STEP = 256
# Captured graphs kept per backend (batch sizes 1, 2, 4 ... 32); they share one KV cache.
GRAPHS_KEPT = 6
GRAPHS_SINCE = (2, 6)  # the first torch that "auto" captures graphs with


def resolve_decode_mode(mode: str, device: str, torch_version: str = "") -> str:
    mode = (mode or "auto").lower()
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}: use one of {', '.join(DECODE_MODES)}")
    if mode == "auto":
        return (
            "graph" if device.startswith("cuda") and graphs_by_default(torch_version) else "eager"
        )
    if mode == "graph" and not device.startswith("cuda"):
        raise ValueError("decode mode 'graph' needs a CUDA device; use 'static' or 'eager'")
    return mode


def graphs_by_default(torch_version: str) -> bool:
    """Whether "auto" captures graphs with this torch.

    Before 2.6 a capture that CUDA refuses leaves torch's allocator believing a
    capture is still under way, and the host's next `empty_cache()` (the webui
    calls it after every job) fails from then on. Those versions (AUTOMATIC1111
    1.10 ships 2.1, Forge 2.3) get eager unless graphs are asked for by name.
    """
    release = re.match(r"(\d+)\.(\d+)", torch_version or "")
    return bool(release) and (int(release[1]), int(release[2])) >= GRAPHS_SINCE


def cache_length(width: int, budget: int) -> int:
    needed = width + budget
    return -(-needed // CACHE_LENGTH_STEP) * CACHE_LENGTH_STEP


def _first_keyword(model: Any, names: Sequence[str]) -> str | None:
    """The first of `names` that the model's forward() accepts."""
    accepted = inspect.signature(model.forward).parameters
    return next((name for name in names if name in accepted), None)


class EagerSteps:
    """transformers' forward; the cache grows by one column a step.

    The cache argument is `past_key_values` up to transformers 5.2x and `cache`
    in later 5.x, and 4.30 lacks the argument that limits logits to the last
    position, so both are looked up in forward()'s signature.
    """

    def __init__(self, torch: Any, model: Any) -> None:
        self.torch, self.model = torch, model
        self._keep = _first_keyword(model, ("logits_to_keep", "num_logits_to_keep"))
        self._cache = _first_keyword(model, ("cache", "past_key_values")) or "past_key_values"
        self._past: Any = None
        self._mask: Any = None
        self._positions: Any = None

    def prefill(self, ids: Any, real: Any, positions: Any) -> Any:
        self._mask, self._positions = real, positions
        return self._forward(ids)

    def step(self, column: Any) -> Any:
        self._mask = self.torch.cat([self._mask, self._mask.new_ones((len(column), 1))], dim=-1)
        self._positions = self._positions[:, -1:] + 1
        return self._forward(column)

    def _forward(self, ids: Any) -> Any:
        extra = {self._cache: self._past}
        if self._keep:
            extra[self._keep] = 1
        out = self.model(
            input_ids=ids,
            attention_mask=self._mask,
            position_ids=self._positions,
            use_cache=True,
            **extra,
        )
        self._past = getattr(out, self._cache)
        return out.logits[:, -1, :].float()


class StaticSteps:
    """`StaticLlama` over one cache; the decode step optionally replayed from a graph."""

    def __init__(self, torch: Any, static: StaticLlama, cache: StaticCache, graph: Any) -> None:
        self.torch, self.static, self.cache, self.graph = torch, static, cache, graph
        self._valid: Any = None
        self._position: Any = None
        self._slot = 0

    def prefill(self, ids: Any, real: Any, positions: Any) -> Any:
        torch, width = self.torch, ids.shape[1]
        slots = torch.arange(width, device=ids.device)
        logits = self.static.forward(
            self.cache, ids, positions, slots, prefill_mask(torch, real, self.cache.length)
        )
        self._valid = torch.zeros(
            (ids.shape[0], self.cache.length), dtype=torch.bool, device=ids.device
        )
        self._valid[:, :width] = real.bool()
        self._position, self._slot = positions[:, -1:], width
        return logits

    def step(self, column: Any) -> Any:
        self._position = self._position + 1
        self._valid[:, self._slot] = True
        slot = self._slot
        self._slot += 1
        attend = self._valid[:, None, None, :]
        if self.graph is not None:
            return self.graph.replay(column, self._position, slot, attend)
        slots = self.torch.arange(slot, slot + 1, device=column.device)
        return self.static.forward(self.cache, column, self._position, slots, attend)


class DecodeGraph:
    """One captured decode step for a fixed batch size and cache length."""

    def __init__(self, torch: Any, static: StaticLlama, cache: StaticCache) -> None:
        self.torch, self.static, self.cache = torch, static, cache
        device, batch, length = static.device, cache.batch, cache.length
        self.ids = torch.zeros((batch, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((batch, 1), dtype=torch.long, device=device)
        # The warm-up and capture runs write a real step into the last slot, which
        # is masked out until a job's own step overwrites it.
        self.slot = torch.full((1,), length - 1, dtype=torch.long, device=device)
        self.attend = torch.zeros((batch, 1, 1, length), dtype=torch.bool, device=device)
        self.attend[..., 0] = True
        self.logits = self._capture()

    def _run(self) -> Any:
        return self.static.forward(self.cache, self.ids, self.positions, self.slot, self.attend)

    def _capture(self) -> Any:
        # Streams belong to the current device, which need not be the model's (cuda:1).
        with self.torch.cuda.device(self.static.device):
            return self._capture_here()

    def _capture_here(self) -> Any:
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # kernels pick their algorithms before capture
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Thread-local: other threads of the host program (the webui's) may use
        # CUDA while this one captures; only this thread's calls are the graph's.
        options = {}
        if "capture_error_mode" in inspect.signature(torch.cuda.graph).parameters:
            options["capture_error_mode"] = "thread_local"
        # Our own stream, made on the model's device: torch's shared capture
        # stream lives on whichever device first captured, and a graph captured
        # there from another device's tensors records nothing.
        previous = torch.cuda.current_stream()
        try:
            with torch.cuda.graph(self.graph, stream=side, **options):
                logits = self._run()
        finally:
            # A failed capture_end leaves the capture stream current in torch's
            # context manager; the webui's own work must not land on it.
            torch.cuda.set_stream(previous)
        return logits

    def replay(self, column: Any, positions: Any, slot: int, attend: Any) -> Any:
        self.ids.copy_(column)
        self.positions.copy_(positions)
        self.slot.fill_(slot)
        self.attend.copy_(attend)
        with self.torch.cuda.device(self.static.device):  # replay uses the current stream
            self.graph.replay()
        return self.logits.clone()


def batch_bucket(batch: int) -> int:
    """The captured batch size a batch runs at: the next power of two."""
    return 1 << max(batch - 1, 0).bit_length()


class StepFactory:
    """Makes the steps for each batch; owns the static model view and captured graphs.

    One per loaded model, used under the backend's lock. A model the static path
    cannot run falls back to eager once, with a log line saying why.

    A webui job's batch shrinks as its expansions finish (8, 6, 3, 1 prompts in
    successive rounds) and its prompts grow. So graphs are captured for batch
    sizes rounded up to a power of two (the decoder pads with idle rows), and all
    of them share one KV cache, the first rows of it for the smaller sizes: the
    GPU holds one cache, and a job's rounds replay graphs captured before.
    """

    def __init__(self, torch: Any, model: Any, mode: str) -> None:
        self.torch, self.model, self.mode = torch, model, mode
        self._static: StaticLlama | None = None
        self._graphs: OrderedDict[tuple[int, int], DecodeGraph] = OrderedDict()
        self._cache: StaticCache | None = None
        self.capture_s = 0.0
        if mode != "eager":
            try:
                self._static = StaticLlama(torch, model)
            except StaticDecodeUnsupported as exc:
                log.info("torch decode: %s not supported by the static path; using eager", exc)
                self.mode = "eager"

    def padded_batch(self, batch: int) -> int:
        """How many rows the decoder should run for `batch` prompts."""
        return batch_bucket(batch) if self.mode == "graph" else batch

    def steps(self, batch: int, width: int, budget: int) -> EagerSteps | StaticSteps:
        if self._static is None:
            return EagerSteps(self.torch, self.model)
        length = cache_length(width, budget)
        if self.mode == "static":
            cache = self._static.new_cache(batch, length)
            return StaticSteps(self.torch, self._static, cache, None)
        graph = self._graph_or_none(batch, length)
        if graph is None:
            return self.steps(batch, width, budget)
        return StaticSteps(self.torch, self._static, graph.cache, graph)

    def _graph_or_none(self, batch: int, length: int) -> DecodeGraph | None:
        """The graph for this shape; None after a failed capture turned graphs off."""
        try:
            return self._graph(batch, length)
        except self.torch.cuda.OutOfMemoryError:
            self.clear()  # the memory they hold is what the job lacks
            raise
        # Capture meets each user's GPU, driver and torch build for the first time
        # on their click; whatever goes wrong there, the uncaptured step still works.
        except Exception as exc:
            log.warning(
                "torch decode: CUDA graph capture failed (%s); running uncaptured from now on. "
                "If CUDA errors follow, restart with DTG_TORCH_DECODE=static or eager",
                exc,
            )
        self.mode = "static"
        self.clear()
        return None

    def _shared_cache(self, batch: int, length: int) -> StaticCache:
        """A cache with room for `batch` rows and at least `length` slots."""
        old = self._cache
        if old is not None and old.batch >= batch and old.length >= length:
            return old
        if old is not None:
            batch, length = max(batch, old.batch), max(length, old.length)
        # The graphs write into the old cache; they go with it (this frame's
        # reference too) before the new one takes its memory.
        self.clear()
        del old
        self._cache = self._static.new_cache(batch, length)
        return self._cache

    def _graph(self, batch: int, length: int) -> DecodeGraph:
        cache = self._shared_cache(batch, length)
        key = (batch, cache.length)
        graph = self._graphs.pop(key, None)
        if graph is None:
            while len(self._graphs) >= GRAPHS_KEPT:
                self._graphs.popitem(last=False)
            started = time.perf_counter()
            graph = DecodeGraph(self.torch, self._static, cache.first_rows(batch))
            took = time.perf_counter() - started
            self.capture_s += took
            log.info("captured the decode step for batch %d, cache %d in %.2f s", *key, took)
        self._graphs[key] = graph
        return graph

    def clear(self) -> None:
        self._graphs.clear()
        self._cache = None
