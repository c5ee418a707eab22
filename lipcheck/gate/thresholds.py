"""Gate thresholds and where they come from.

Thresholds come from command-line options (or keyword arguments of `lipcheck.api.check`)
and from one configuration file: `--config PATH`, else `./lipcheck.toml`, else the
`[tool.lipcheck]` table of `./pyproject.toml`. Options win over the file, key by key.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lipcheck.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as a package
    # tomli is installed only there (pyproject: tomli; python_version < '3.11')
    import tomli as tomllib  # type: ignore[import-not-found]

CONFIG_KEYS = ("max-lipschitz", "max-layer", "baseline", "max-increase", "require-certified",
               "min-certified-accuracy", "eps", "data", "bab-domains", "sdp-margins")


@dataclass(frozen=True)
class Thresholds:
    """What `check` gates on; None means the check is off."""

    max_lipschitz: float | None = None
    max_layer: float | None = None
    baseline: Path | None = None
    max_increase: float | None = None      # a fraction: 0.1 is 10%
    require_certified: bool | None = None
    min_certified_accuracy: float | None = None  # a fraction
    eps: float | None = None
    data: Path | None = None
    bab_domains: int | None = None         # branch and bound per margin at --eps (0: off)
    sdp_margins: int | None = None         # sdp-net evaluations per margin left (0: off)

    def merged_over(self, lower: Thresholds) -> Thresholds:
        """These values, with `lower`'s where these are None."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(lower, **{k: v for k, v in values.items() if v is not None})

    def validated(self) -> Thresholds:
        for name in ("max_lipschitz", "max_layer", "max_increase"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"{_option(name)} {value}: must be a finite number >= 0")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise UserError(f"--eps {self.eps}: must be a finite number > 0")
        for name in ("bab_domains", "sdp_margins"):
            count = getattr(self, name)
            if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                      or count < 0):
                raise UserError(f"{_option(name)} {count}: must be a whole number >= 0")
        acc = self.min_certified_accuracy
        if acc is not None and not 0 <= acc <= 1:
            raise UserError(f"--min-certified-accuracy {acc}: must lie in [0, 1] (or 0%-100%)")
        if acc is not None and (self.eps is None or self.data is None):
            raise UserError("--min-certified-accuracy needs --eps and --data")
        if self.max_increase is not None and self.baseline is None:
            raise UserError("--max-increase needs --baseline (a JSON report of an earlier model)")
        return self


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_fraction(value: Any, option: str) -> float | None:
    """'10%' -> 0.1, '0.1' -> 0.1, 0.1 -> 0.1."""
    if value is None or isinstance(value, float | int) and not isinstance(value, bool):
        return None if value is None else float(value)
    text = str(value).strip()
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise UserError(f"{option} {value!r}: expected a fraction like 0.1 or a percentage "
                        "like 10%") from None


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"config key {key!r}: expected a number, got {value!r}")
    return float(value)


def thresholds_from_table(table: dict[str, Any], base: Path, source: str) -> Thresholds:
    """Thresholds from a TOML table; relative paths are read from the file's folder."""
    unknown = sorted(set(table) - set(CONFIG_KEYS))
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; "
                        f"known: {', '.join(CONFIG_KEYS)}")
    required = table.get("require-certified")
    if required is not None and not isinstance(required, bool):
        raise UserError(f"{source}: require-certified must be true or false, got {required!r}")

    def path(key: str) -> Path | None:
        return base / str(table[key]) if key in table else None

    def num(key: str) -> float | None:
        return _number(table[key], key) if key in table else None

    return Thresholds(
        max_lipschitz=num("max-lipschitz"), max_layer=num("max-layer"), baseline=path("baseline"),
        max_increase=parse_fraction(table.get("max-increase"), f"{source}: max-increase"),
        require_certified=required,
        min_certified_accuracy=parse_fraction(table.get("min-certified-accuracy"),
                                              f"{source}: min-certified-accuracy"),
        eps=num("eps"), data=path("data"),
        bab_domains=_whole(table.get("bab-domains"), source, "bab-domains"),
        sdp_margins=_whole(table.get("sdp-margins"), source, "sdp-margins"))


def _whole(value: Any, source: str, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{source}: {key} must be a whole number >= 0, got {value!r}")
    return value


def find_config(cwd: Path, explicit: Path | None = None) -> Path | None:
    """The one file thresholds are read from: --config, ./lipcheck.toml, ./pyproject.toml."""
    if explicit is not None:
        if not explicit.is_file():
            raise UserError(f"--config {explicit}: no such file")
        return explicit
    for name in ("lipcheck.toml", "pyproject.toml"):
        if (cwd / name).is_file():
            return cwd / name
    return None


def read_config(path: Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config {path} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("lipcheck")
    if table is None:
        table = {} if path.name == "pyproject.toml" else data
    return thresholds_from_table(table, path.parent, str(path))


def resolve_thresholds(options: Thresholds, cwd: Path | None = None,
                       config: Path | None = None, discover: bool = True) -> Thresholds:
    """Options over the config file, validated."""
    cwd = cwd or Path.cwd()
    source = find_config(cwd, config) if (discover or config is not None) else None
    return options.merged_over(read_config(source)).validated()
