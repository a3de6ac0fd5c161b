"""argparse types shared by the latbench and nas commands: a bad value is one usage line."""

from __future__ import annotations

import argparse


def int_at_least(low: int):
    """A type for whole numbers >= `low` ("--rounds abc" says what is wrong, not the type's name)."""
    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return whole_number


def port_number(text: str) -> int:
    """A TCP port, 1..65535."""
    value = int_at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {value}")
    return value
