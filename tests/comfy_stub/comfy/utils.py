"""Stand-in for comfy.utils.ProgressBar: updates go to a global hook, which ComfyUI's
server sets and which checks the interrupt flag (so an update may raise)."""

from comfy import model_management

PROGRESS_BAR_HOOK = None
updates = []  # (value, total) of every update, for the tests


def set_progress_bar_global_hook(function) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


def _default_hook(value, total, preview) -> None:
    model_management.throw_exception_if_processing_interrupted()


class ProgressBar:
    def __init__(self, total: int) -> None:
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK or _default_hook

    def update_absolute(self, value: int, total: int | None = None, preview=None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        updates.append((self.current, self.total))
        self.hook(self.current, self.total, preview)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)
