"""A SeaTable stand-in (dtable-web + dtable-server + API gateway) for tests and the demo.

Start it in-process with `StubServer`, or as a process with `python -m tests.seatable_stub`.
"""

from .app import StubApp, create_app
from .button import RunScriptButton, RunScriptError, RunScriptTimeout, StateChange
from .clock import Clock
from .config import StubConfig
from .server import StubServer
from .state import SeaTable

__all__ = [
    "Clock",
    "RunScriptButton",
    "RunScriptError",
    "RunScriptTimeout",
    "SeaTable",
    "StateChange",
    "StubApp",
    "StubConfig",
    "StubServer",
    "create_app",
]
