"""Command line: `python -m dtg_lib "1girl, solo" --seed 42`."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .backends.threads import use_threads
from .limits import MAX_NL_PROMPT_CHARS, MAX_PROMPT_CHARS, MAX_SIZE
from .settings import TARGETS, SettingsError, UpsampleSettings

if TYPE_CHECKING:
    from .models import ProgressEvent, ProgressFn

log = logging.getLogger("dtg")

# How long `serve` waits, after Ctrl-C, for the app to stop before passing the interrupt on.
CHILD_INTERRUPT_GRACE_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dtg_lib",
        description="Expand a Stable Diffusion prompt with DanTagGen.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt, in webui syntax")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sampling seed (default 0; -1: a random one, printed to stderr to replay it)",
    )
    parser.add_argument("--width", type=int, default=1024, help=f"1 to {MAX_SIZE} (default 1024)")
    parser.add_argument("--height", type=int, default=1024, help=f"1 to {MAX_SIZE} (default 1024)")
    parser.add_argument(
        "--target", default=UpsampleSettings.target, help=f"one of {', '.join(TARGETS)}"
    )
    parser.add_argument(
        "--nl",
        default="",
        metavar="TEXT",
        help="a natural-language prompt beside the tags (TIPO models; DTG models ignore it)",
    )
    parser.add_argument(
        "--nl-length",
        default=UpsampleSettings.nl_length,
        help=f"length of the sentences a TIPO model writes: one of {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--caption",
        action="store_true",
        help="also write a caption of the tags (TIPO models; DTG models ignore it)",
    )
    parser.add_argument(
        "--gen-meta",
        action="store_true",
        help="let the last pass also write meta lines (artist, characters, ...) whose tags "
        "join the new ones (TIPO models; DTG models ignore it)",
    )
    parser.add_argument(
        "--budget",
        default=UpsampleSettings.budget,
        metavar="none|fill|chunks:N",
        help="CLIP token budget of the final prompt: none, fill (to the end of the 75-token "
        "chunk the prompt reaches) or chunks:N (at most N chunks); needs open_clip_torch",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="registry name (delta-rev2, delta-rev2:hf, ...) or a local path",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="where models are found and downloaded"
    )
    parser.add_argument(
        "--backend", default=UpsampleSettings.backend, help="auto, llama.cpp or torch"
    )
    parser.add_argument("--device", default=UpsampleSettings.device, help="cpu, cuda, mps")
    parser.add_argument(
        "--threads",
        default=None,
        metavar="auto|N",
        help="CPU threads for llama.cpp: auto (physical cores, fewer while other work holds "
        "them) or a number; sets DTG_THREADS",
    )
    parser.add_argument(
        "--ban",
        default=UpsampleSettings.ban_tags,
        help="comma-separated tags, *wildcards or /regex/ never to add",
    )
    parser.add_argument(
        "--format", default=UpsampleSettings.format, help="default, one line, append, or a template"
    )
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--min-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--max-rounds", type=int, default=None)
    parser.add_argument("--offline", action="store_true", help="never download")
    parser.add_argument(
        "--tag-csv", type=Path, action="append", default=[], help="extra tagcomplete CSV"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show the classification and model input only"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--list-models", action="store_true", help="list registry and local models")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from_args(args: argparse.Namespace) -> UpsampleSettings:
    data: dict[str, Any] = {
        "target": args.target,
        "ban_tags": args.ban,
        "format": args.format,
        "backend": args.backend,
        "device": args.device,
        "nl_length": args.nl_length,
        "caption": args.caption,
        "gen_meta": args.gen_meta,
        "budget": args.budget,
    }
    if args.model is not None:
        data["model"] = args.model
    optional = (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "max_new_tokens",
        "max_rounds",
    )
    data.update({k: getattr(args, k) for k in optional if getattr(args, k) is not None})
    return UpsampleSettings.from_dict(data)


def serve(argv: Sequence[str]) -> int:
    """`python -m dtg_lib serve ...`: `python -m dtg_app ...` in a child process, its exit code.

    A child process, not an import: the engine never imports the app (which imports
    gradio), and the app owns its arguments and their checks.
    """
    if importlib.util.find_spec("dtg_app") is None:  # finds it without importing it
        print("error: the app is not installed: pip install 'dtg-upsampler[app]'", file=sys.stderr)
        return 1
    return run_child([sys.executable, "-m", "dtg_app", *argv])


def run_child(command: Sequence[str]) -> int:
    """Run `command` until it ends and return its exit code; Ctrl-C reaches it and is
    waited out, and a SIGTERM sent to this process is passed on, so the server shuts down
    as it would when run directly and is never left running alone."""
    try:
        process = subprocess.Popen(list(command))
    except OSError as exc:
        print(f"error: cannot start {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    with _terminate_passed_on(process):
        while True:
            try:
                code = process.wait()
            except KeyboardInterrupt:
                _pass_on_interrupt(process)
                continue
            # A child ended by a signal (-2) exits as a shell would report it (130).
            return 128 - code if code < 0 else code


@contextlib.contextmanager
def _terminate_passed_on(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """While in the block, SIGTERM to this process (a service manager stopping it) goes
    to `process` instead, and this process waits for it to end."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set there
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: process.terminate())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _pass_on_interrupt(process: subprocess.Popen[bytes]) -> None:
    """A terminal's Ctrl-C reaches the child by itself; one sent to this process alone
    (or a second Ctrl-C) is passed on."""
    try:
        process.wait(timeout=CHILD_INTERRUPT_GRACE_S)
        return
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    if process.poll() is None:
        process.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # (Python's stderr always escapes what its encoding lacks.)
    _escape_what_cannot_be_encoded(sys.stdout)
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    if args.list_models:
        return _write_out(lambda: _list_models(args))
    if args.prompt is None:
        parser.error("give a prompt, or --list-models")
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logged = _LoggedMessages()
    log.addFilter(logged)
    try:
        return _expand(args, logged)
    finally:
        log.removeFilter(logged)


def _expand(args: argparse.Namespace, logged: _LoggedMessages) -> int:
    try:
        settings = settings_from_args(args)
        if args.threads is not None:
            use_threads(args.threads)
        upsampler = _upsampler(args)
        if args.dry_run:
            prepared = _prepared(upsampler, args, settings)
            return _write_out(lambda: _show_dry_run(prepared, args.json))
        seed = _chosen_seed(args.seed)
        # Passed only when given, so an upsampler of a caller's own need not take it.
        nl = {"nl_prompt": args.nl} if args.nl else {}
        try:
            with progress_display(sys.stderr) as progress:
                result = upsampler.upsample(
                    args.prompt, settings, seed, args.width, args.height, progress=progress, **nl
                )
        finally:
            # Closed here, not by the collector at interpreter exit, when llama-cpp-python's
            # own clean-up can no longer run and prints a traceback instead.
            _unload(upsampler)
    except SettingsError as exc:
        print(f"error: invalid setting: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError, ValueError) as exc:
        # Expected failures (missing backend or model, bad file, failed download) carry
        # messages written for people; print the message, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return _write_out(lambda: _show_result(result, args.json, logged.seen))


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the prompt or size, by the limits the HTTP API applies too."""
    for name in ("width", "height"):
        value = getattr(args, name)
        if not 1 <= value <= MAX_SIZE:
            return f"--{name} must be a whole number from 1 to {MAX_SIZE}, got {value}"
    texts = (("the prompt", args.prompt, MAX_PROMPT_CHARS), ("--nl", args.nl, MAX_NL_PROMPT_CHARS))
    for what, text, limit in texts:
        if len(text) > limit:
            return f"{what} has {len(text)} characters; at most {limit} are read"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Bytes the terminal's encoding could not decode arrive as lone surrogates.
            return f"{what} is not valid text: it holds bytes that are not UTF-8"
    return None


def shows_progress_bar(stream: TextIO) -> bool:
    """A bar only on a terminal: in a log file or a pipe its redraws would be noise."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def progress_display(stream: TextIO) -> Iterator[ProgressFn]:
    """The engine's progress callback: tqdm bars on `stream` when it is a terminal,
    otherwise (or without tqdm) nothing at all, not even the hub's own download bar."""
    tqdm_class = _tqdm_class() if shows_progress_bar(stream) else None
    if tqdm_class is None:
        yield _shows_nothing
        return
    bars = _ProgressBars(stream, tqdm_class)
    try:
        yield bars.show
    finally:
        bars.close()


def _shows_nothing(event: ProgressEvent) -> None:
    """Progress nobody watches."""


def _tqdm_class() -> type | None:
    try:
        from tqdm import tqdm  # comes with huggingface_hub; optional
    except ImportError:
        return None
    return tqdm


class _ProgressBars:
    """One bar at a time: a new one for each phase or file, the last one cleared at the end."""

    def __init__(self, stream: TextIO, tqdm_class: type) -> None:
        self._stream = stream
        self._tqdm_class = tqdm_class
        self._bar: Any = None
        self._shape: tuple[str, int | None] = ("", None)

    def show(self, event: ProgressEvent) -> None:
        shape = (event.phase, event.total)
        if self._bar is None or shape != self._shape or event.done < self._bar.n:
            self.close()
            self._bar, self._shape = self._new_bar(event), shape
        self._bar.set_description_str(event.message, refresh=False)
        self._bar.update(event.done - self._bar.n)

    def _new_bar(self, event: ProgressEvent) -> Any:
        options: dict[str, Any] = {"unit": f" {event.unit}" if event.unit else "it"}
        if event.unit == "bytes":
            options = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
        if event.total is None:  # no end to show: the step and the time it has taken
            options["bar_format"] = "{desc} ({elapsed})"
        return self._tqdm_class(
            total=event.total,
            initial=event.done,
            desc=event.message,
            file=self._stream,
            leave=False,
            **options,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _show_result(result: Any, as_json: bool, logged: set[str]) -> None:
    if as_json:
        _print_json(result.to_dict())
        return
    print(result.final_prompt)
    sys.stdout.flush()  # the expansion first, should a notice fail to write
    if getattr(result, "tokens", None) is not None:
        print(f"tokens: {result.tokens}/{result.token_target}", file=sys.stderr)
    for notice in getattr(result, "notices", ()):
        if notice not in logged:  # the log has printed it already
            print(f"note: {notice}", file=sys.stderr)


def _print_json(data: Any) -> None:
    """JSON with text as it is, or with \\u escapes where stdout's encoding lacks a character."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    if not _encodable(text, sys.stdout):
        text = json.dumps(data, indent=2)
    print(text)


def _encodable(text: str, stream: TextIO) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _escape_what_cannot_be_encoded(stream: TextIO) -> None:
    """Let `stream` write a character its encoding lacks as an escape (\\u30e1), not fail.

    An ASCII terminal (PYTHONIOENCODING=ascii, LANG=C on old systems) would
    otherwise turn an expansion with a Japanese tag into a traceback.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if callable(reconfigure) and getattr(stream, "errors", None) == "strict":
        # A stream that refuses is left as it is; _write_out still reports its failure.
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="backslashreplace")


def _write_out(show: Callable[[], int | None]) -> int:
    """Run `show`, which prints the output; failing to write it is one line on stderr."""
    try:
        code = show()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading (`| head -1`): it has what it wanted, so no message.
        # Pointing stdout at nowhere keeps Python's own flush at exit quiet too.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (OSError, UnicodeError) as exc:
        print(f"error: cannot write the output: {exc}", file=sys.stderr)
        return 1
    return code or 0


class _LoggedMessages(logging.Filter):
    """Remembers what the "dtg" log said, so a notice it printed is not printed again."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        self.seen.add(record.getMessage())
        return True


def _chosen_seed(seed: int) -> int:
    """-1 is "random", as in the webui and the HTTP API; the seed drawn is printed."""
    if seed != -1:
        return seed
    drawn = random.randrange(2**32)
    print(f"seed: {drawn}", file=sys.stderr)
    return drawn


def _unload(upsampler: Any) -> None:
    unload = getattr(upsampler, "unload", None)  # a caller's own upsampler may have none
    if callable(unload):
        unload()


def _upsampler(args: argparse.Namespace) -> Any:
    from .tag_lookup import default_sources, get_lookup
    from .upsampler import Upsampler

    lookup = get_lookup(default_sources(extra_csv=args.tag_csv)) if args.tag_csv else None
    return Upsampler(model_dir=args.model_dir, lookup=lookup, allow_download=not args.offline)


def _prepared(upsampler: Any, args: argparse.Namespace, settings: UpsampleSettings) -> Any:
    from . import models

    # A registry name's family is in the registry; a local file's is read from its header.
    spec = models.parse_model_name(settings.model, args.model_dir)
    prepared = upsampler.prepare(
        args.prompt, settings, args.width, args.height, quality_line=spec.takes_quality_line
    )
    if spec.family != models.TIPO_FAMILY:
        return prepared
    from .tipo_loop import first_model_input, tipo_request

    request = tipo_request(prepared.classified, args.nl, settings, args.width, args.height)
    return dataclasses.replace(prepared, model_input=first_model_input(request))


def _show_dry_run(prepared: Any, as_json: bool) -> None:
    rows = _item_rows(prepared.classified)
    if as_json:
        _print_json({"items": rows, "model_input": prepared.model_input})
        return
    for row in rows:
        weight = "" if row["weight"] is None else f"{row['weight']:.3f}"
        print(f"{row['kind']:<14} {row['category'] or '':<10} {weight:>6}  {row['text']}")
    print("\nModel input:\n" + prepared.model_input)


def _item_rows(classified: Any) -> list[dict[str, Any]]:
    by_item: dict[int, list[Any]] = {}
    for tag in classified.tags:
        by_item.setdefault(tag.item_index, []).append(tag)
    rows = []
    for index, item in enumerate(classified.parsed.items):
        if item.kind.value == "separator":
            continue
        tags = by_item.get(index, [])
        categories = {t.category.value for t in tags}
        rows.append(
            {
                "kind": item.kind.value,
                "text": item.text,
                "category": categories.pop() if len(categories) == 1 else None,
                "weight": item.weight,
                "tags": [
                    {
                        "name": t.tag.name,
                        "model_name": t.name,
                        "category": t.category.value,
                        "weight": t.tag.weight,
                    }
                    for t in tags
                ],
            }
        )
    return rows


def _registry_line(entry: dict[str, Any]) -> str:
    if not entry["supported"]:
        return f"{entry['name']:<20} {entry['family']:<5} {entry['reason']}"
    made_here = entry.get("local_quants", ())
    variants = ", ".join(f"{v}*" if v in made_here else v for v in entry["variants"])
    return f"{entry['name']:<20} {entry['family']:<5} {entry['licence']:<20} {variants}"


def _list_models(args: argparse.Namespace) -> int:
    from . import models

    local = models.list_local_models(args.model_dir)
    if args.json:
        print(
            json.dumps(
                {
                    "registry": models.model_choices(),
                    "models": models.registry_models(),
                    "local": [{**m.described(), "path": str(m.path)} for m in local],
                },
                indent=2,
            )
        )
        return 0
    print("Registry (downloaded on first use; variants after the name, default first):")
    for entry in models.registry_models():
        print(f"  {_registry_line(entry)}")
    print("  * quantized on this machine from the F16 file at first use")
    print(f"Local ({args.model_dir or models.default_model_dir()}):")
    for model in local:
        print(
            f"  {model.name:<40} {model.kind:<5} {model.family:<5} "
            f"{model.licence or '-':<20} {model.size / 1e6:8.1f} MB  {model.path}"
            + ("  (quantized here)" if model.local_quant else "")
        )
    if not local:
        print("  (none)")
    return 0
