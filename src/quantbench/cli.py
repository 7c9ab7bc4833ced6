"""The command line: parse, call the Python API, print. Each command lives in commands/."""

from __future__ import annotations

import os
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


_registered = False


def _register_commands() -> None:
    """Every command, in the order `--help` shows them; each module adds its own."""
    global _registered
    if _registered:
        return
    from quantbench.commands import estimate, finetune, inspect, optimizers, recommend, report, run

    for module in (inspect, run, report, estimate, recommend, finetune, optimizers):
        module.register(app)
    _registered = True


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
