"""The configuration registry's machinery: what a variable is, how a service reads it, how it fills a config.

A `Variable` is declared once (name, kind, whether it is a secret) with one `Use` per service that reads it:
the config field it fills, its default there, what it means there, and whether it must be set. A `Service`
reads the environment through its uses into `{field: value}` and gives the service's dataclass its defaults
(`Service.config`), so a default is written in one place only. Every bad value is one readable line
(`ConfigError`), never a traceback.

Every secret `X` may instead be given as `X_FILE`, the path of a file holding it (Podman secrets under
/run/secrets, systemd's `LoadCredential=` under `$CREDENTIALS_DIRECTORY`), so its value need not sit in an
environment that `podman inspect` or /proc shows.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

C = TypeVar("C")


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot use."""


# --- kinds: how a raw string becomes a value ----------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A string; `url=True` drops a URL's final slashes; `choices` (after `case`) limits what it may be."""

    url: bool = False
    choices: tuple[str, ...] = ()
    case: Callable[[str], str] | None = None

    def parse(self, name: str, raw: str) -> Any:
        value = raw.rstrip("/") if self.url else raw
        if self.case is not None:
            value = self.case(value)
        if self.choices and value not in self.choices:
            raise ConfigError(f"{name}={raw!r}: use one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class Int:
    minimum: int = 0

    def parse(self, name: str, raw: str) -> Any:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number") from None
        if value < self.minimum:
            raise ConfigError(f"{name} must be at least {self.minimum}, got {value}")
        return value


@dataclass(frozen=True)
class Number:
    """A decimal number in [minimum, maximum]; `empty` is what an empty value means (None: an error)."""

    minimum: float = 0.0
    maximum: float = float("inf")
    empty: float | None = None

    def parse(self, name: str, raw: str) -> Any:
        if not raw and self.empty is not None:
            return self.empty
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not self.minimum <= value <= self.maximum:
            raise ConfigError(f"{name} must be between {self.minimum:g} and {self.maximum:g}, got {value:g}")
        return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Flag:
    def parse(self, name: str, raw: str) -> Any:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r}: use true or false")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Docker-style sizes: 512m, 1g, 1048576."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


@dataclass(frozen=True)
class Size:
    """Bytes, written as 1048576, 512m or 1g."""

    def parse(self, name: str, raw: str) -> Any:
        try:
            return parse_size(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a size (like 512m or 1g)") from None


@dataclass(frozen=True)
class Urls:
    """A comma list of distinct http(s) URLs, trailing slashes dropped."""

    def parse(self, name: str, raw: str) -> Any:
        urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} holds a URL without http:// or https://: {url!r}")
        if len(set(urls)) != len(urls):
            raise ConfigError(f"{name} names a node twice")
        return urls


@dataclass(frozen=True)
class Addresses:
    """IP addresses separated by commas or spaces (empty: none)."""

    def parse(self, name: str, raw: str) -> Any:
        entries = tuple(entry for entry in re.split(r"[\s,]+", raw) if entry)
        for entry in entries:
            try:
                ipaddress.ip_address(entry)
            except ValueError:
                raise ConfigError(f"{name}: {entry!r} is not an IP address") from None
        return entries


@dataclass(frozen=True)
class Words:
    """Entries separated by commas or spaces (empty: none), e.g. previous tokens kept during a rotation."""

    def parse(self, name: str, raw: str) -> Any:
        return tuple(entry for entry in re.split(r"[\s,]+", raw) if entry)


@dataclass(frozen=True)
class Password:
    """A secret people type: empty (the feature is off) or at least `minimum` characters; never echoed."""

    minimum: int = 12

    def parse(self, name: str, raw: str) -> Any:
        if raw and len(raw) < self.minimum:
            raise ConfigError(f"{name} must be at least {self.minimum} characters (or empty: off)")
        return raw


@dataclass(frozen=True)
class Zone:
    """An IANA time zone name; empty is allowed (the host's zone)."""

    def parse(self, name: str, raw: str) -> Any:
        if raw:
            try:
                ZoneInfo(raw)
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(f"{name} is not a known IANA time zone: {raw!r}") from None
        return raw


@dataclass(frozen=True)
class Pattern:
    """A string matching a regular expression (or empty); `form` says in words what is expected."""

    regex: str
    form: str

    def parse(self, name: str, raw: str) -> Any:
        if raw and not re.fullmatch(self.regex, raw):
            raise ConfigError(f"{name}={raw!r}: expected {self.form}")
        return raw


Kind = Text | Int | Number | Flag | Size | Urls | Addresses | Words | Password | Zone | Pattern


# --- the declarations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    """How one service uses a variable.

    field: the config attribute it fills; None when it only feeds a rule in the service's `from_env`
      (then `read` returns it under the variable's own name).
    default: the value when unset, as it would be written in the environment.
    shown: how the docs show the default when it is computed at start (`<hostname>`); else `default`.
    required: reading refuses to start without it. fill_in: the env templates leave it to be filled in.
    keep_blank: an empty value is a value, not "unset" (None: the service's rule).
    kind: overrides the variable's kind for this service.
    """

    field: str | None
    default: str
    meaning: str
    shown: str | None = None
    required: bool = False
    fill_in: bool = False
    keep_blank: bool | None = None
    kind: Kind | None = None

    @property
    def documented_default(self) -> str:
        return self.default if self.shown is None else self.shown


@dataclass(frozen=True)
class Variable:
    name: str
    kind: Kind
    scheduler: Use | None = None
    sandbox: Use | None = None
    secret: bool = False  # never in a repr (logs, errors)

    def use(self, service: str) -> Use | None:
        use: Use | None = getattr(self, service)
        return use


FILE_SUFFIX = "_FILE"


def with_secret_files(env: Mapping[str, str], variables: Iterable[Variable]) -> Mapping[str, str]:
    """`env` with each secret `X` read from the file `X_FILE` names (one trailing newline dropped).

    Both set (non-empty) is refused: which one wins would be a guess. The path is opened as given and the file's
    content is never shown in an error.
    """
    resolved: dict[str, str] | None = None
    for var in variables:
        if not var.secret:
            continue
        path = (env.get(var.name + FILE_SUFFIX) or "").strip()
        if not path:
            continue
        if (env.get(var.name) or "").strip():
            raise ConfigError(f"{var.name} and {var.name}{FILE_SUFFIX} are both set: set one of them")
        try:
            with open(path, encoding="utf-8") as secret:
                text = secret.read()
        except OSError as exc:
            raise ConfigError(f"{var.name}{FILE_SUFFIX}={path}: cannot read it ({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{var.name}{FILE_SUFFIX}={path}: not UTF-8 text") from None
        if resolved is None:
            resolved = dict(env)
        resolved[var.name] = text.removesuffix("\n").removesuffix("\r")
    return env if resolved is None else resolved


class Documented(NamedTuple):
    """One row of a service's documentation: what the README table and the env templates show."""

    name: str
    default: str
    description: str


@dataclass(frozen=True)
class Service:
    """One service's view of the registry.

    blank_is_unset: an empty variable means its default (the sandbox's rule); False keeps an empty value
    (the scheduler's rule, as upstream: an empty DB_PORT is an error, not 3306).
    """

    name: str
    variables: tuple[Variable, ...]
    blank_is_unset: bool

    def uses(self) -> list[tuple[Variable, Use]]:
        return [(var, use) for var in self.variables if (use := var.use(self.name)) is not None]

    def documented(self) -> tuple[Documented, ...]:
        return tuple(Documented(var.name, use.documented_default, use.meaning) for var, use in self.uses())

    def read(self, env: Mapping[str, str], fallbacks: Mapping[str, str] | None = None,
             names: Iterable[str] | None = None) -> dict[str, Any]:
        """{field: value} for every use (a field-less use under its variable's name); refuses what is wrong.

        fallbacks: values for variables the environment does not set, in place of the registry's defaults.
        names: read only these variables (e.g. the log settings, before the rest can be checked).
        A secret may come from the file its `_FILE` variable names (`with_secret_files`).
        """
        values: dict[str, Any] = {}
        missing: list[str] = []
        only = None if names is None else set(names)
        env = with_secret_files(env, (var for var, _use in self.uses() if only is None or var.name in only))
        for var, use in self.uses():
            if only is not None and var.name not in only:
                continue
            default = (fallbacks or {}).get(var.name, use.default)
            raw = env.get(var.name)
            raw = default if raw is None else raw.strip()
            keep_blank = use.keep_blank if use.keep_blank is not None else not self.blank_is_unset
            if not raw and not keep_blank:
                raw = default
            if use.required and not raw:
                missing.append(var.name)
                continue
            values[use.field or var.name] = (use.kind or var.kind).parse(var.name, raw)
        if missing:
            raise ConfigError(f"{', '.join(missing)} must be set")
        return values

    def config(self, cls: type[C]) -> type[C]:
        """Class decorator (under @dataclass): each field's default and repr from the registry.

        A field the registry does not fill must carry its own default (it is derived in `from_env`);
        a registry field the class does not declare is an error at import, not at the first start.
        """
        annotations = inspect.get_annotations(cls)
        for var, use in self.uses():
            if use.field is None:
                continue
            if use.field not in annotations:
                raise TypeError(f"{cls.__name__} has no field {use.field} for {var.name}")
            default = (use.kind or var.kind).parse(var.name, use.default)
            setattr(cls, use.field, dataclasses.field(default=default, repr=not var.secret))
        for name in annotations:
            if name not in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{name} is not in the registry and has no default")
        return cls


def services(variables: Iterable[Variable]) -> tuple[Service, Service]:
    """The scheduler's and the sandbox's views of one table of variables."""
    table = tuple(variables)
    names = [var.name for var in table]
    if len(names) != len(set(names)):
        raise TypeError("a variable is declared twice")
    return Service("scheduler", table, blank_is_unset=False), Service("sandbox", table, blank_is_unset=True)
