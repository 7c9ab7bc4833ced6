"""Libraries that log the same line on every call (bitsandbytes warns once per int8 matmul)
keep only its first occurrence, so a worker's log stays readable."""

from __future__ import annotations

import logging

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
