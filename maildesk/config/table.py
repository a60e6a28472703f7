"""One TOML table being read: typed getters that raise a ``ConfigError`` naming the key.

Under ``reading`` and the readers of each table; every key a table uses goes through here, so
an unknown key, a wrong type or a bad value is one line saying which file, table and key.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from email.headerregistry import Address
from pathlib import Path
from typing import Any, TypeVar

from maildesk.config.settings import ConfigError

T = TypeVar("T")


DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta | None:
    """``"45s"``, ``"15m"``, ``"4h"``, ``"3d"``, ``"2w"`` to a timedelta; ``"off"`` to None."""
    if text.strip().lower() == "off":
        return None
    match = DURATION.match(text)
    if not match:
        raise ValueError(
            f'expected a duration like "45s", "15m", "4h", "3d" or "off", got {text!r}'
        )
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2)])


class Table:
    """One TOML table being read: typed getters that name the key on error."""

    def __init__(self, data: Any, where: str, file: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {where} must be a table")
        self.data = data
        self.where = where
        self.file = file
        self.used: set[str] = set()

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.where} {key}: {problem}")

    def get(
        self, key: str, kind: type[T], default: T | None = None, *, required: bool = False
    ) -> T:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.fail(key, "missing (required)")
            return default  # type: ignore[return-value]
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, list(default))
        if not all(isinstance(item, str) for item in value):
            raise self.fail(key, "must be a list of strings")
        return tuple(value)

    def duration(self, key: str, default: timedelta | None) -> timedelta | None:
        if key not in self.data:
            self.used.add(key)
            return default
        try:
            return parse_duration(self.get(key, str))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def positive_float(self, key: str, default: float) -> float:
        value = self.get(key, float, default)
        if value <= 0:
            raise self.fail(key, f"must be positive, got {value}")
        return value

    def address(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.get(key, str, default, required=required)
        if value is None:
            return value
        return self._address(key, value)

    def addresses(self, key: str) -> tuple[str, ...]:
        """A list of mail addresses (empty when the key is not given)."""
        return tuple(self._address(key, value) for value in self.strings(key))

    def _address(self, key: str, value: str) -> str:
        try:
            parsed = Address(addr_spec=value.strip())
        except (ValueError, IndexError, TypeError) as exc:
            raise self.fail(key, f"not a valid mail address: {value!r} ({exc})") from None
        if not parsed.domain:
            raise self.fail(key, f"not a valid mail address: {value!r}")
        return parsed.addr_spec.lower()

    def secret(self, prefix: str, base: Path, *, required: bool) -> str | None:
        """``prefix``, ``prefix_env`` or ``prefix_file``: a password from the config, env or file."""
        given = [k for k in (prefix, f"{prefix}_env", f"{prefix}_file") if k in self.data]
        self.used.update((prefix, f"{prefix}_env", f"{prefix}_file"))
        if len(given) > 1:
            raise self.fail(given[1], f"give only one of {', '.join(given)}")
        if not given:
            if required:
                raise self.fail(prefix, f"missing: set {prefix}, {prefix}_env or {prefix}_file")
            return None
        key = given[0]
        value = self.get(key, str)
        if key == prefix:
            return value
        if key.endswith("_env"):
            if value not in os.environ:
                raise self.fail(key, f"environment variable {value} is not set")
            return os.environ[value]
        path = resolve(base, value)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise self.fail(key, f"cannot read {path}: {exc.strerror}") from None

    def path(self, key: str, base: Path) -> Path | None:
        value = self.get(key, str)
        return None if value is None else resolve(base, value)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "unknown key")


def resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path)
