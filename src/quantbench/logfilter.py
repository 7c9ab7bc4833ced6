"""What the libraries under quantbench may print. Libraries that log the same line on every call
(bitsandbytes warns once per int8 matmul) keep only its first occurrence, so a worker's log stays
readable; chatter at import and progress bars stay off the terminal and out of notebooks."""

from __future__ import annotations

import logging
import os
import warnings

NOISY = ("bitsandbytes", "bitsandbytes.autograd._functions")


class OncePerMessage(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def log_repeats_once(prefixes: tuple[str, ...] = NOISY) -> OncePerMessage:
    """Attach one filter to the named loggers and to every existing logger below them.

    A logger's filter only sees records made on that very logger, hence each one by name.
    """
    once = OncePerMessage()
    names = set(prefixes) | {name for name in logging.root.manager.loggerDict
                             if any(name.startswith(p + ".") for p in prefixes)}
    for name in sorted(names):
        logging.getLogger(name).addFilter(once)
    return once


# Libraries that log at import: torchao (its optional kernels), torch (pytree deprecations),
# bitsandbytes (optional CPU kernels). transformers imports torchao and hqq whenever installed.
CHATTY_LOGGERS = ("torchao", "torch.utils._pytree", "bitsandbytes")


def quiet_libraries() -> None:
    """Keep library chatter (import-time warnings, advisory warnings, progress bars) out of the
    output; the CLI calls it first, and a notebook can too, before anything imports transformers.
    Errors still show. Workers keep their libraries' chatter in their own log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
