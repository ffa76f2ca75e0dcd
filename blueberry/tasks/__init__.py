"""Tasks the one trainer drives (DESIGN contract 2); each is one module here."""

from importlib import import_module

TASKS = {"lm": "blueberry.tasks.lm:LMTask", "scanline": "blueberry.tasks.scanline:ScanlineTask"}


def load_task(name: str):
    """A task instance by name, imported only when a command needs it (keeps --help fast)."""
    module, cls = TASKS[name].split(":")
    return getattr(import_module(module), cls)()
