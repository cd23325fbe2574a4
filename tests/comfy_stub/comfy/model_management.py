"""Stand-in for comfy.model_management: the interrupt flag and the unload request.

As in ComfyUI, `throw_exception_if_processing_interrupted` raises once and clears the
flag; the "free memory" request calls `unload_all_models` by attribute.
"""

import threading


class InterruptProcessingException(Exception):
    pass


_interrupt_lock = threading.RLock()
_interrupted = [False]
unloads = []  # one entry per unload_all_models call, for the tests


def interrupt_current_processing(value: bool = True) -> None:
    with _interrupt_lock:
        _interrupted[0] = value


def processing_interrupted() -> bool:
    with _interrupt_lock:
        return _interrupted[0]


def throw_exception_if_processing_interrupted() -> None:
    with _interrupt_lock:
        if _interrupted[0]:
            _interrupted[0] = False
            raise InterruptProcessingException()


def unload_all_models() -> None:
    unloads.append("comfy")
