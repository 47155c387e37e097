"""Configuration problems: where they are and what to do about them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ERROR = "error"
WARNING = "warning"


def format_path(path: Sequence[object]) -> str:
    """``['providers', 0, 'pools', 1, 'name']`` -> ``providers[0].pools[1].name``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass(frozen=True)
class ConfigProblem:
    file: str
    path: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = f"{self.file}: {self.path}" if self.path else self.file
        prefix = "warning: " if self.severity == WARNING else ""
        return f"{prefix}{where}: {self.message}"


class ConfigError(Exception):
    """One or more errors; ``problems`` also carries the warnings found."""

    def __init__(self, problems: Iterable[ConfigProblem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.errors))

    @property
    def errors(self) -> list[ConfigProblem]:
        return [p for p in self.problems if p.severity == ERROR]


class Problems:
    """Collects problems for one file so every check can run to the end."""

    def __init__(self, file: str):
        self.file = file
        self.items: list[ConfigProblem] = []

    def error(self, path: Sequence[object] | str, message: str) -> None:
        self._add(path, message, ERROR)

    def warning(self, path: Sequence[object] | str, message: str) -> None:
        self._add(path, message, WARNING)

    def _add(self, path, message: str, severity: str) -> None:
        p = path if isinstance(path, str) else format_path(path)
        self.items.append(ConfigProblem(self.file, p, message, severity))

    @property
    def has_errors(self) -> bool:
        return any(p.severity == ERROR for p in self.items)


def check_unique(items: list, key: str, path: list, problems: Problems, what: str) -> None:
    """An error for each item whose ``key`` repeats an earlier one's."""
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            continue
        name = item[key]
        if name in seen:
            problems.error(path + [i, key], f"duplicate {what} {name!r} (first defined at "
                                            f"index {seen[name]}); names must be unique")
        else:
            seen[name] = i
