"""The command line: parse, call the Python API, print. Each command lives in commands/."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from quantbench.commands._options import EXIT_CODES
from quantbench.errors import QuantbenchError

try:  # newer typer vendors its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:
    from click.exceptions import ClickException, NoArgsIsHelpError

app = typer.Typer(
    help="Which precision should I run this LLM in, on this GPU, and what does it cost me?",
    epilog=EXIT_CODES,
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


# Libraries that log at import: torchao (its optional kernels), torch (pytree deprecations),
# bitsandbytes (optional CPU kernels). transformers imports torchao whenever it is installed.
CHATTY_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes")


def _quiet_libraries() -> None:
    """Our own progress display replaces the libraries' bars and advisory warnings.

    Only the commands' own lines reach the terminal; workers keep library chatter in their log.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def main() -> None:
    _quiet_libraries()
    _register_commands()
    try:
        code = app(standalone_mode=False)  # usage errors come back here, to be shown as one line
    except QuantbenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NoArgsIsHelpError as err:
        err.show()
        sys.exit(err.exit_code)
    except ClickException as err:
        print(f"error: {err.format_message()}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        print("interrupted: results measured so far are kept", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
