"""The command line: parse, call the Python API, print. Each command lives in commands/."""

from __future__ import annotations

import sys

import typer

from quantbench.commands._options import EXIT_CODES
from quantbench.errors import QuantbenchError
from quantbench.logfilter import CHATTY_LOGGERS, quiet_libraries  # noqa: F401 (tests restore these loggers)

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


def main() -> None:
    quiet_libraries()
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
