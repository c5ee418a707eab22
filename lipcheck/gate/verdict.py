"""The robustness gate: thresholds, where they come from, and the verdict.

Thresholds come from command-line options (or keyword arguments of `lipcheck.api.check`)
and from one configuration file: `--config PATH`, else `./lipcheck.toml`, else the
`[tool.lipcheck]` table of `./pyproject.toml`. Options win over the file, key by key.

Every check reads the best number available: the tightest certified upper bound, or,
where none exists, the AutoLip estimate (the check is then labelled an estimate and
`require-certified` is the check that fails on it).
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lipcheck.errors import EXIT_NO_FINITE_BOUND, EXIT_OK, EXIT_THRESHOLD, UserError
from lipcheck.report import Report

if TYPE_CHECKING:
    from lipcheck.gate.robustness import Robustness
    from lipcheck.gate.outputs import Comparison

CONFIG_KEYS = ("max-lipschitz", "max-layer", "baseline", "max-increase", "require-certified",
               "min-certified-accuracy", "eps", "data")


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

    def merged_over(self, lower: "Thresholds") -> "Thresholds":
        """These values, with `lower`'s where these are None."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(lower, **{k: v for k, v in values.items() if v is not None})

    def validated(self) -> "Thresholds":
        for name in ("max_lipschitz", "max_layer", "max_increase"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(f"{_option(name)} {value}: must be a finite number >= 0")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            raise UserError(f"--eps {self.eps}: must be a finite number > 0")
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
        eps=num("eps"), data=path("data"))


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


@dataclass
class Check:
    """One gate: a value against a limit."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    message: str
    group: str
    certified: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "value": _finite(self.value),
                "limit": _finite(self.limit), "message": self.message, "group": self.group,
                "certified": self.certified}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def fmt(x: float | None) -> str:
    if x is None:
        return "none"
    return "inf" if math.isinf(x) else f"{x:.6g}"


def upper_check(name: str, group: str, value: float, limit: float, certified: bool) -> Check:
    """Passes when value <= limit (an infinite or NaN value fails)."""
    passed = math.isfinite(value) and value <= limit
    relation = "<=" if passed else ">"
    note = "" if certified else " (estimate, not certified)"
    return Check(name, passed, value, limit, f"value {fmt(value)} {relation} limit {fmt(limit)}"
                 f"{note}", group, certified)


def headline(report: Report) -> tuple[float, bool]:
    """The global number the gate reads: (value, certified)."""
    ub = report.upper_bound
    if ub is not None:
        return ub.value, True
    autolip = [b for b in report.bounds if b.method == "autolip"]
    return (autolip[0].value if autolip else math.inf), False


def global_check(report: Report, limit: float) -> Check:
    value, certified = headline(report)
    return upper_check("max-lipschitz", "global", value, limit, certified)


def layer_checks(report: Report, limit: float) -> list[Check]:
    return [upper_check(f"max-layer[{layer.name}]", "layers", layer.bound, limit,
                        layer.certified) for layer in report.layers]


def finite_check(report: Report) -> Check:
    """Always present: some finite bound exists (exit code 3 otherwise)."""
    value, certified = headline(report)
    if math.isfinite(value):
        kind = "certified upper bound" if certified else "estimate, not certified"
        return Check("finite-bound", True, value, None, f"{fmt(value)} ({kind})", "global",
                     certified)
    unbounded = [w.node for w in report.warnings if w.code == "unbounded_op" and w.node]
    where = f": not globally Lipschitz at {', '.join(unbounded[:5])}" if unbounded else ""
    return Check("finite-bound", False, value, None, f"no finite bound{where}", "global", False)


def certified_check(report: Report) -> Check:
    ub = report.upper_bound
    if ub is not None and math.isfinite(ub.value):
        return Check("require-certified", True, ub.value, None,
                     f"certified upper bound {fmt(ub.value)} ({ub.method})", "global")
    return Check("require-certified", False, None, None,
                 "no finite certified upper bound could be computed", "global", False)


def accuracy_check(robustness: "Robustness", limit: float) -> Check:
    value = robustness.certified_accuracy
    passed = value is not None and value >= limit
    relation = ">=" if passed else "<"
    note = "" if robustness.certified else " (radii are estimates, not certified)"
    return Check(f"min-certified-accuracy[eps={fmt(robustness.eps)}]", passed, value, limit,
                 f"value {fmt(value)} {relation} limit {fmt(limit)}{note}", "robustness",
                 robustness.certified)


@dataclass
class Verdict:
    """What `check` decided, with everything it read. The CLI prints this object."""

    report: Report
    thresholds: Thresholds
    checks: list[Check] = field(default_factory=list)
    robustness: "Robustness | None" = None
    comparison: "Comparison | None" = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def finite(self) -> bool:
        return math.isfinite(headline(self.report)[0])

    @property
    def exit_code(self) -> int:
        """3 when no finite bound exists (it wins), 1 when a check failed, else 0."""
        if not self.finite:
            return EXIT_NO_FINITE_BOUND
        return EXIT_THRESHOLD if self.failed else EXIT_OK

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK

    @property
    def status(self) -> str:
        return {EXIT_OK: "pass", EXIT_THRESHOLD: "fail"}.get(self.exit_code, "no finite bound")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status, "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "robustness": self.robustness.to_dict() if self.robustness else None,
            "comparison": self.comparison.to_dict() if self.comparison else None,
            "seconds": round(self.seconds, 6),
        }

    def report_dict(self) -> dict[str, Any]:
        """The estimate report with the verdict under "check" (what --json writes)."""
        data = self.report.to_dict()
        data["check"] = self.to_dict()
        return data


def evaluate(report: Report, thresholds: Thresholds, robustness: "Robustness | None" = None,
             comparison: "Comparison | None" = None) -> list[Check]:
    """Every check the thresholds ask for, in a fixed order."""
    checks = [finite_check(report)]
    if thresholds.require_certified:
        checks.append(certified_check(report))
    if thresholds.max_lipschitz is not None:
        checks.append(global_check(report, thresholds.max_lipschitz))
    if thresholds.max_layer is not None:
        checks += layer_checks(report, thresholds.max_layer)
    if comparison is not None and thresholds.max_increase is not None:
        checks += comparison.checks(thresholds.max_increase)
    if robustness is not None and thresholds.min_certified_accuracy is not None:
        checks.append(accuracy_check(robustness, thresholds.min_certified_accuracy))
    return checks
