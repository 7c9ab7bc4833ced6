"""The command line: parse, call the Python API, print. Each command lives in commands/."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import warnings

import typer

from quantbench.errors import QuantbenchError

app = typer.Typer(
    help="Which precision should I run this LLM in, on this GPU, and what does it cost me?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



@app.callback()
def _root() -> None:
    """Which precision should I run this LLM in, on this GPU, and what does it cost me?"""


# Commands register themselves; this order is the one `--help` shows.
_ORDER = ["inspect", "run", "report", "estimate", "recommend", "finetune", "optimizers"]


def _register_commands() -> None:
    from quantbench import commands

    found = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    for name in sorted(found, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n)):
        importlib.import_module(f"quantbench.commands.{name}").register(app)


def _quiet_libraries() -> None:
    """Our own progress display replaces the libraries' bars and advisory warnings."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")


def main() -> None:
    _quiet_libraries()
    _register_commands()
    try:
        app()
    except QuantbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: results measured so far are kept", file=sys.stderr)
        sys.exit(130)
