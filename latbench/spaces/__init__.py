"""Search spaces: the ops they contain and the torch modules they build."""

from __future__ import annotations

from latbench.errors import UsageError, did_you_mean
from latbench.spaces.fbnet import FBNetSpace, CANDIDATES

SPACES = {
    "fbnet-cifar": lambda: FBNetSpace("cifar"),
    "fbnet-imagenet": lambda: FBNetSpace("imagenet"),
}


def get_space(name: str) -> FBNetSpace:
    """The search space called `name`; a UsageError listing the known ones otherwise."""
    try:
        return SPACES[name]()
    except KeyError:
        close = did_you_mean(name, SPACES)
        raise UsageError(f"unknown search space {name!r}",
                         (f"{close} " if close else "") + f"known spaces: {', '.join(sorted(SPACES))}") from None


__all__ = ["FBNetSpace", "CANDIDATES", "SPACES", "get_space"]
