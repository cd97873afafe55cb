"""The WAF's rules as data: loading, validation and compilation.

A rule file (``rules.yaml`` beside this module is the default) is a mapping::

    version: "2025.1"              # pushed with the rules; logged with every finding
    limits: {max_body_bytes: …}    # optional; each key overrides one of :class:`Limits`
    rules:
      - id: sqli.union-select      # unique; what logs, metrics and ``disabled`` name
        family: sqli               # one of inspect.FAMILIES
        description: …
        pattern: '…'               # an RE2 expression, searched in the ``view`` …
        view: sql                  # lower (default) | text | sql | shell
        targets: [query, body]     # optional: path, query, header, cookie, body, name
      - id: sqli.libinjection
        family: sqli
        detector: libinjection-sqli   # … or one of the built-in detectors (DETECTORS)

Views: ``lower`` is the decoded value, matched case-insensitively (write patterns in lower
case); ``text`` is the same value matched case-sensitively; ``sql`` and ``shell`` are the
spellings :mod:`normalize` gives a SQL and a shell tokenizer (case-insensitive too). Targets name
where a value comes from; ``name`` is any parameter name, JSON key, form or part name.

A policy adds rules (same shape) and disables rules by id with :meth:`RuleSet.with_changes`;
every problem in the data is reported at once in one :class:`ValueError` naming the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2
import yaml

__all__ = [
    "DETECTORS",
    "FAMILIES",
    "TARGETS",
    "VIEWS",
    "Limits",
    "Rule",
    "RuleSet",
    "default_rules_data",
]

FAMILIES = ("sqli", "xss", "cmdi", "traversal", "xxe", "exploit", "protocol")
VIEWS = ("lower", "text", "sql", "shell")
TARGETS = ("path", "query", "header", "cookie", "body", "name")

# Built-in detectors: code, not a pattern, but listed in the rule file so that each has an id
# a policy can disable and a family its findings count under.
DETECTORS = {
    "libinjection-sqli": "sqli",  # libinjection's SQL tokenizer and fingerprints
    "libinjection-xss": "xss",  # libinjection's HTML5 tokenizer
    "log4j-lookup": "exploit",  # resolves nested ${lower:j}-style lookups, then looks for ${jndi:
    "xml-dtd": "xxe",  # any DOCTYPE or ENTITY declaration in an XML body
    "xml-xinclude": "xxe",  # an XInclude element in an XML body
    "body-unparsable": "protocol",  # a body that does not parse as its declared type
    "content-encoding": "protocol",  # a body encoding the service cannot undo (or a bomb)
    "nul-byte": "protocol",  # NUL in a text value
    "overlong-utf8": "protocol",  # an overlong UTF-8 sequence (never sent by a correct client)
    "limits": "protocol",  # a value, body, depth, count or decoding past Limits
}

_RULE_KEYS = {"id", "family", "description", "pattern", "detector", "view", "targets"}
_FILE_KEYS = {"version", "limits", "rules"}
DEFAULT_RULES = Path(__file__).with_name("rules.yaml")


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one request can cost. Past any of them the request gets a
    ``protocol`` finding (rule ``protocol.limits``): it is never let through uninspected."""

    max_body_bytes: int = 1 << 20  # after decompression
    max_value_chars: int = 256 << 10  # one string: a JSON string, a parameter, a part
    max_header_chars: int = 8 << 10  # one header value
    max_values: int = 5000  # strings inspected in one request (a 1 MB array of "a" is 250k)
    max_depth: int = 32  # JSON and XML nesting
    max_decode_passes: int = 6  # decoding passes before a value must be stable
    max_parts: int = 100  # multipart parts
    max_headers: int = 200
    max_findings: int = 32  # findings reported for one request (inspection stops there)

    @classmethod
    def from_data(cls, data: Any, errors: list[str]) -> Limits:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            errors.append("limits: must be a mapping of limit name to a positive integer")
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, int] = {}
        for key, value in data.items():
            if key not in known:
                errors.append(f"limits.{key}: unknown limit (known: {', '.join(sorted(known))})")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"limits.{key}: must be a positive integer, got {value!r}")
            else:
                values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class Rule:
    id: str
    family: str
    description: str = ""
    pattern: str | None = None
    detector: str | None = None
    view: str = "lower"
    targets: frozenset[str] = frozenset(TARGETS)

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "family": self.family}
        if self.description:
            data["description"] = self.description
        if self.pattern is not None:
            data["pattern"] = self.pattern
            if self.view != "lower":
                data["view"] = self.view
        if self.detector is not None:
            data["detector"] = self.detector
        if self.targets != frozenset(TARGETS):
            data["targets"] = [t for t in TARGETS if t in self.targets]
        return data


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported once, by us, naming the rule
    return options


def _compile(pattern: str) -> Any:
    return re2.compile(pattern, options=_re2_options())


def _effective(rule: Rule) -> str:
    """The pattern as compiled: case-insensitive except in the ``text`` view."""
    return str(rule.pattern) if rule.view == "text" else f"(?i){rule.pattern}"


def _parse_rule(index: int, data: Any, errors: list[str]) -> Rule | None:
    where = f"rules[{index}]"
    if not isinstance(data, Mapping):
        errors.append(f"{where}: must be a mapping with id, family and pattern or detector")
        return None
    rule_id = data.get("id")
    if isinstance(rule_id, str) and rule_id:
        where = f"{where} (id {rule_id!r})"
    else:
        errors.append(f"{where}: 'id' must be a non-empty string")
        rule_id = None
    count = len(errors)
    for key in sorted(set(data) - _RULE_KEYS):
        errors.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_RULE_KEYS))})")
    family = data.get("family")
    if family not in FAMILIES:
        errors.append(f"{where}: 'family' must be one of {', '.join(FAMILIES)}, got {family!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        errors.append(f"{where}: 'description' must be a string")
    pattern, detector = data.get("pattern"), data.get("detector")
    if (pattern is None) == (detector is None):
        errors.append(f"{where}: exactly one of 'pattern' and 'detector' is needed")
    if pattern is not None:
        if not isinstance(pattern, str) or not pattern:
            errors.append(f"{where}: 'pattern' must be a non-empty string")
        else:
            try:
                _compile(pattern if data.get("view") == "text" else f"(?i){pattern}")
            except re2.error as exc:
                message = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
                errors.append(f"{where}: 'pattern' is not a valid RE2 expression: {message}")
    if detector is not None:
        if detector not in DETECTORS:
            errors.append(f"{where}: unknown detector {detector!r} (known: {', '.join(DETECTORS)})")
        elif family != DETECTORS[detector]:
            errors.append(f"{where}: detector {detector!r} reports family {DETECTORS[detector]!r}, not {family!r}")
        if "view" in data:
            errors.append(f"{where}: 'view' applies to patterns only")
    view = data.get("view", "lower")
    if view not in VIEWS:
        errors.append(f"{where}: 'view' must be one of {', '.join(VIEWS)}, got {view!r}")
    targets = data.get("targets", list(TARGETS))
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) and t in TARGETS for t in targets):
        errors.append(f"{where}: 'targets' must be a non-empty list of {', '.join(TARGETS)}, got {targets!r}")
        targets = list(TARGETS)
    if len(errors) > count or rule_id is None:
        return None
    return Rule(
        id=rule_id,
        family=str(family),
        description=str(description),
        pattern=pattern,
        detector=detector,
        view=str(view),
        targets=frozenset(targets),
    )


@dataclass(frozen=True)
class _ViewSet:
    """The pattern rules of one view as one RE2 set (one scan finds which rules match), and
    each rule alone (to find where it matched, for the snippet)."""

    matcher: Any
    rules: tuple[Rule, ...]
    regexes: tuple[Any, ...]

    @classmethod
    def build(cls, rules: Sequence[Rule]) -> _ViewSet | None:
        if not rules:
            return None
        matcher = re2.Set.SearchSet(_re2_options())
        for rule in rules:
            matcher.Add(_effective(rule))
        matcher.Compile()
        return cls(matcher, tuple(rules), tuple(_compile(_effective(r)) for r in rules))


@dataclass(frozen=True)
class RuleSet:
    """A validated, compiled rule file. Immutable: a push builds a new one."""

    version: str
    rules: tuple[Rule, ...]
    limits: Limits = field(default_factory=Limits)
    _views: dict[str, _ViewSet] = field(default_factory=dict, init=False, repr=False, compare=False)
    _detectors: dict[str, Rule] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # "all" serves the common value whose SQL and shell views equal its text: one scan
        patterns = [r for r in self.rules if r.pattern is not None]
        for name, views in (
            ("all", VIEWS),
            ("base", ("lower", "text")),
            ("sql", ("sql",)),
            ("shell", ("shell",)),
            ("base+sql", ("lower", "text", "sql")),
            ("base+shell", ("lower", "text", "shell")),
        ):
            built = _ViewSet.build([r for r in patterns if r.view in views])
            if built is not None:
                self._views[name] = built
        for rule in self.rules:
            if rule.detector is not None:
                self._detectors[rule.detector] = rule

    # --- loading ------------------------------------------------------------------------

    @classmethod
    def default(cls) -> RuleSet:
        return cls.from_yaml(DEFAULT_RULES.read_text(encoding="utf-8"), str(DEFAULT_RULES))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<rules>") -> RuleSet:
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from exc
        try:
            return cls.from_data(data)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from exc

    @classmethod
    def from_data(cls, data: Any) -> RuleSet:
        """Validate and compile; every problem is in the one ValueError raised."""
        errors: list[str] = []
        if not isinstance(data, Mapping):
            raise ValueError("a rule file is a mapping with 'version' and 'rules'")
        for key in sorted(set(data) - _FILE_KEYS):
            errors.append(f"unknown key {key!r} (known: {', '.join(sorted(_FILE_KEYS))})")
        version = data.get("version")
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version:
            errors.append("'version' must be a non-empty string")
        limits = Limits.from_data(data.get("limits"), errors)
        raw_rules = data.get("rules")
        rules: list[Rule] = []
        if not isinstance(raw_rules, list):
            errors.append("'rules' must be a list")
        else:
            for index, raw in enumerate(raw_rules):
                rule = _parse_rule(index, raw, errors)
                if rule is not None:
                    rules.append(rule)
        _check_unique(rules, errors)
        if errors:
            raise ValueError(_message(errors))
        return cls(version=str(version), rules=tuple(rules), limits=limits)

    def to_data(self) -> dict[str, Any]:
        """The rule file this set was built from (what the control plane pushes)."""
        limits = {
            f.name: getattr(self.limits, f.name)
            for f in dataclasses.fields(Limits)
            if getattr(self.limits, f.name) != f.default
        }
        data: dict[str, Any] = {"version": self.version}
        if limits:
            data["limits"] = limits
        data["rules"] = [r.to_data() for r in self.rules]
        return data

    # --- policy changes -----------------------------------------------------------------

    def ids(self) -> tuple[str, ...]:
        return tuple(r.id for r in self.rules)

    def without(self, *rule_ids: str) -> RuleSet:
        """This set without the rules ``rule_ids`` (a policy's disabled rules); ValueError
        naming an id that is not in the set."""
        return self.with_changes(disabled=rule_ids, version=self.version)

    def with_changes(
        self,
        extra: Sequence[Mapping[str, Any]] = (),
        disabled: Iterable[str] = (),
        version: str | None = None,
    ) -> RuleSet:
        """This set with ``extra`` rules added (same shape as in the file) and the rules whose
        ids are in ``disabled`` removed. The version becomes ``version`` or, when rules
        changed, ``<version>+<n> extra -<m> disabled`` so logs tell the sets apart."""
        errors: list[str] = []
        disabled = list(disabled)
        known = {r.id for r in self.rules}
        added: list[Rule] = []
        for index, raw in enumerate(extra):
            rule = _parse_rule(index, raw, errors)
            if rule is not None:
                added.append(rule)
        errors = [e.replace("rules[", "extra rules[", 1) for e in errors]
        for rule_id in disabled:
            if rule_id not in known and rule_id not in {r.id for r in added}:
                errors.append(f"disabled rule {rule_id!r}: no such rule (the rule file has {len(known)} rules)")
        _check_unique([*self.rules, *added], errors)
        if errors:
            raise ValueError(_message(errors))
        gone = set(disabled)
        rules = tuple(r for r in (*self.rules, *added) if r.id not in gone)
        if version is None:
            version = self.version
            if added or gone:
                version += f"+{len(added)} extra -{len(gone)} disabled"
        return RuleSet(version=version, rules=rules, limits=self.limits)

    # --- what the inspector uses --------------------------------------------------------

    def view_set(self, name: str) -> _ViewSet | None:
        """The compiled patterns of ``all`` views, of the ``base`` views (lower and text,
        both run on the decoded text), of ``sql``, of ``shell``, or of the base views with one
        of those (for a value whose other view is its text); None when there are none."""
        return self._views.get(name)

    def detector(self, name: str) -> Rule | None:
        """The rule that enables built-in detector ``name``, or None when it is disabled."""
        return self._detectors.get(name)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)


def default_rules_data() -> dict[str, Any]:
    """The default rule file as data (what the control plane pushes when a policy names none)."""
    data = yaml.load(DEFAULT_RULES.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert isinstance(data, dict)
    return data


def _check_unique(rules: Sequence[Rule], errors: list[str]) -> None:
    seen: set[str] = set()
    detectors: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen:
            errors.append(f"rule id {rule.id!r} is used twice")
        seen.add(rule.id)
        if rule.detector is not None:
            if rule.detector in detectors:
                first = detectors[rule.detector]
                errors.append(f"rule {rule.id!r}: detector {rule.detector!r} is already rule {first!r}")
            detectors[rule.detector] = rule.id


def _message(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problems:\n" + "\n".join(f"  {e}" for e in errors)
