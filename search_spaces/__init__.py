"""Named search spaces. ``python -m search_spaces`` lists them with their parameters.

Each module exports ``SPACE`` (a `SearchSpace`); `get(name)` finds one by name.
"""
from __future__ import annotations

from search_spaces.base import SearchSpace


def _registry() -> dict[str, SearchSpace]:
    from search_spaces import baseline, grokking, modular_addition, smoke

    spaces = [grokking.SPACE, baseline.SPACE, smoke.SPACE]
    spaces += [v for v in vars(modular_addition).values() if isinstance(v, SearchSpace)]
    return {space.name: space for space in spaces}


def names() -> list[str]:
    return sorted(_registry())


def get(name: str) -> SearchSpace:
    registry = _registry()
    if name not in registry:
        raise ValueError(f"unknown search space {name!r}; known spaces: {', '.join(sorted(registry))}")
    return registry[name]


__all__ = ["SearchSpace", "get", "names"]
