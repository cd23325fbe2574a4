"""`Script`, `AlwaysVisible` and a runner that calls always-on scripts like the host."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

AlwaysVisible = object()
log = logging.getLogger("webui_stub")


@dataclass
class ScriptClassData:
    """One loaded script file: where it lies and the module it became."""

    script_class: Any
    path: str
    basedir: str
    module: Any


# Every script file the host loaded, in load order; extensions search it for other scripts.
scripts_data: list[ScriptClassData] = []


class Script:
    infotext_fields: list | None = None
    paste_field_names: list | None = None
    is_txt2img = False
    is_img2img = False
    args_from = 0
    args_to = 0

    def title(self) -> str:
        raise NotImplementedError

    def show(self, is_img2img: bool) -> Any:
        return True

    def ui(self, is_img2img: bool) -> list:
        return []

    def after_component(self, component: Any, **kwargs: Any) -> None:
        """Called for every component the host builds, with its constructor's keywords."""

    def before_process(self, p: Any, *args: Any) -> None:
        pass

    def process(self, p: Any, *args: Any) -> None:
        pass

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        pass


class ScriptRunner:
    """Always-on scripts in load order, each fed its own slice of `p.script_args`.

    Hook exceptions are recorded in `errors` and generation goes on, as in the host.
    """

    def __init__(self, alwayson: list[Script], args_per_script: list[list[Any]]) -> None:
        self.alwayson_scripts = alwayson
        self.errors: list[tuple[str, str, BaseException]] = []
        self.script_args: list[Any] = []
        for script, args in zip(alwayson, args_per_script):
            script.args_from = len(self.script_args)
            self.script_args.extend(args)
            script.args_to = len(self.script_args)

    def _run(self, hook: str, p: Any, *before: Any, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            args = p.script_args[script.args_from : script.args_to]
            try:
                getattr(script, hook)(p, *before, *args, **kwargs)
            except Exception as exc:  # the host reports and carries on
                log.error("script %s failed in %s: %s", script.title(), hook, exc)
                self.errors.append((script.title(), hook, exc))

    def before_process(self, p: Any) -> None:
        self._run("before_process", p)

    def process(self, p: Any) -> None:
        self._run("process", p)

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        self._run("before_process_batch", p, **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        self._run("process_batch", p, **kwargs)

    def postprocess_batch(self, p: Any, **kwargs: Any) -> None:
        self._run("postprocess_batch", p, **kwargs)

    def postprocess(self, p: Any, processed: Any) -> None:
        self._run("postprocess", p, processed)
