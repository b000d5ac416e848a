"""The command line of an experiment, built from its dataclasses: every setting is declared once.

An experiment declares its arguments as one dataclass whose fields are

- plain settings, ``arg(default, help)``: one flag each (``cache_dir`` -> ``--cache-dir``);
- sections, ``section(Config, title)``: a config dataclass of the library (``bs_ref.unlearn.UnlearnConfig``,
  ``bs_ref.protocol.data.DataConfig``, ...) held as a whole; each of its fields with a ``help`` and without
  ``"cli": False`` in its metadata becomes a flag of the section's group;
- run-wide method settings, ``method_settings(title)``: a dict with one flag per hyper-parameter name that
  the methods share (``bs_ref.methods.hyperparameters()``, ``shared``: ``--lam``, ``--top-k``, ``--base``,
  ...), applied to every method that has the field (``bs_ref.methods.method_from_spec(spec, **settings)``).
  A name whose default differs between methods (``beta``, ``gamma``) has no flag: it is set per method in a
  method spec (``npo:beta=0.2``; the spec language is ``bs_ref.methods.parse_spec``).

Flags: ``--name-with-dashes VALUE`` (the underscore spelling ``--name_with_dashes`` is accepted too); ``none``
for None; several values for a list. Booleans are switches: ``--overwrite`` for a field that defaults to
False, ``--no-progress`` for one that defaults to True (``--progress false`` / ``--overwrite true`` also work).
Each default is printed once. Presets are data, ``{flag name: value}``, that replace the defaults (an explicit
flag still wins); the ``--preset`` help lists what each one sets.

Identity: a field declared ``arg(..., identity=False)`` changes no number (``--out``, ``--seeds``, ``--device``,
...); every other setting is part of the run's identity (``CommandLine.identity``), which the run directory
records and checks on every rerun (``bs_ref.protocol.store``).

Problems: ``Problems`` collects every problem with the arguments and is raised once, one line per problem;
``config_problems`` turns a config's ``validate()`` error (``lr=-1.0 is invalid: ...``) into one naming the
flag (``--lr -1.0 is invalid: ...``), and ``resolve_methods`` names the flag or the method spec a bad
hyper-parameter came from (``--lam 1.5`` or ``bs_t:lam=1.5``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import re
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import tqdm.std

from bs_ref.methods import METHODS, Method, hyperparameters, make_method, parse_spec

_INVALID = re.compile(r"^(?:[\w ]+: )?(?:(\w+):)?(\w+)=(.*?) is invalid: (.*?)(?: \(set it through [^)]*\))?$", re.S)
"""The form of the ``validate()`` errors of ``UnlearnConfig`` and of the method declarations (a BS-S base's
error comes prefixed with ``bs_s base: ``)."""


# --------------------------------------------------------------------------------------------- declaring
def arg(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    negative: str | None = None,
    identity: bool = True,
) -> Any:
    """A command-line field: its default (or ``factory`` for a list) and its one-line help. ``negative``: the
    help of ``--no-<name>`` for a boolean that defaults to True. ``identity=False`` marks a setting that changes
    no number (where the output goes, what to run, how fast): it is left out of the run's identity
    (``CommandLine.identity``), so a rerun may change it and still resume."""
    metadata = {"help": help, **({"negative": negative} if negative else {})}
    if not identity:
        metadata["identity"] = False
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(factory: Callable[[], Any], title: str, description: str | None = None) -> Any:
    """A field holding a config dataclass whose command-line fields become one group of flags."""
    return dataclasses.field(default_factory=factory, metadata={"section": title, "description": description})


def method_settings(title: str, description: str | None = None) -> Any:
    """A dict field of run-wide method hyper-parameters: one flag per shared name (see the module docstring)."""
    return dataclasses.field(
        default_factory=dict, metadata={"section": title, "description": description, "methods": True}
    )


def flag(name: str) -> str:
    """``"lam_bss"`` -> ``"--lam-bss"``."""
    return "--" + name.replace("_", "-")


@functools.cache
def shared_hyperparameters() -> dict[str, dict[str, Any]]:
    """The hyper-parameters that get a run-wide flag: ``bs_ref.methods.hyperparameters()`` entries with
    ``shared`` True, each with its ``type`` (from the declaring method's annotations)."""
    out = {}
    for name, entry in hyperparameters().items():
        if entry["shared"]:
            out[name] = {**entry, "type": typing.get_type_hints(METHODS[entry["methods"][0]])[name]}
    return out


def method_defaults(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every run-wide method setting: ``settings`` over the methods' own defaults."""
    return {name: (settings or {}).get(name, entry["default"]) for name, entry in shared_hyperparameters().items()}


# --------------------------------------------------------------------------------------------- problems
class Problems(ValueError):
    """Every problem with the arguments, raised once: one line each (duplicates dropped)."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(dict.fromkeys(problems))
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems with the arguments:\n" + "\n".join(
                f"  - {p}" for p in self.problems
            )
        super().__init__(message)

    @staticmethod
    def check(problems: Iterable[str]) -> None:
        """Raise ``Problems`` when there is any."""
        problems = list(problems)
        if problems:
            raise Problems(problems)


def config_problems(cfg: Any) -> list[str]:
    """Every problem ``cfg.validate()`` finds (it stops at the first: each bad field is reset to its default
    and the check rerun), each naming its flag: ``--lr -1.0 is invalid: must be a positive number``."""
    problems: list[str] = []
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    for _ in range(len(defaults) + 1):
        try:
            cfg.validate()
            return problems
        except ValueError as error:
            match = _INVALID.match(str(error))
            if match is None or match.group(1) is not None or match.group(2) not in defaults:
                return [*problems, str(error)]
            name, value, rule = match.group(2, 3, 4)
            problems.append(f"{flag(name)} {_written(value)} is invalid: {rule}")
            cfg = dataclasses.replace(cfg, **{name: defaults[name]})
    return problems


def _written(value_repr: str) -> str:
    """A value as the user wrote it on the command line (the repr of a string without its quotes)."""
    return value_repr[1:-1] if len(value_repr) > 1 and value_repr[0] == value_repr[-1] == "'" else value_repr


# --------------------------------------------------------------------------------------------- method specs
def resolve_methods(
    specs: Sequence[str], settings: dict[str, Any] | None = None, references: Sequence[str] = ()
) -> tuple[list[tuple[str, Method | None]], list[str]]:
    """([(label, declaration)] in order without duplicates, [problems]) for method specs such as
    ``bs_t:temperature=2,lam=0.6``, with the run-wide ``settings``. A reference method (evaluated, not
    trained) gets None. The label is the method's name plus the spec's values that differ from the run-wide
    setting, sorted (``bs_t:lam=0.6,temperature=2``), so a spec equal to the run's settings is the plain name."""
    settings = method_defaults(settings)
    plan: list[tuple[str, Method | None]] = []
    problems: list[str] = []
    for spec in specs:
        name = spec.partition(":")[0].strip()
        if name in references:
            if spec.strip() != name:
                problems.append(f"method {name!r} is evaluated, not trained; it takes no hyper-parameters ({spec!r})")
            else:
                plan.append((name, None))
            continue
        if name not in METHODS:
            problems.append(
                f"unknown method {name!r} in --methods; choose from {' '.join((*references, *METHODS))} "
                "(optionally with hyper-parameters, e.g. bs_t:temperature=2,lam=0.6)"
            )
            continue
        try:
            _, values = parse_spec(spec)
        except ValueError as error:
            problems.append(str(error))
            continue
        method, bad = _make(name, values, settings)
        problems += bad
        if method is not None:
            plan.append((method_label(name, values, settings), method))
    if not plan and not problems:
        problems.append("--methods is empty; name at least one method")
    unique = {}
    for label, method in plan:
        unique.setdefault(label, method)
    return list(unique.items()), list(dict.fromkeys(problems))


def method_label(name: str, values: dict[str, Any], settings: dict[str, Any]) -> str:
    """``name`` plus the spec values that differ from what the method gets without them, sorted by key."""
    defaults = {f.name: settings.get(f.name, f.default) for f in dataclasses.fields(METHODS[name])}
    kept = {k: v for k, v in values.items() if defaults[k] != v}
    if not kept:
        return name
    return name + ":" + ",".join(f"{k}={_format(v)}" for k, v in sorted(kept.items()))


def _make(name: str, values: dict[str, Any], settings: dict[str, Any]) -> tuple[Method | None, list[str]]:
    """The declaration, and every invalid hyper-parameter named as the flag or the spec it came from."""
    own = {f.name for f in dataclasses.fields(METHODS[name])}
    wide = {k: v for k, v in settings.items() if k in own}
    values, problems = dict(values), []
    for _ in range(len(own) + 1):
        try:
            return make_method(name, **{**wide, **values}), problems
        except ValueError as error:
            match = _INVALID.match(str(error))
            key = match.group(2) if match else None
            if key in values:
                problems.append(f"{name}:{key}={_format(values.pop(key))} is invalid: {match.group(4)}")
            elif key in wide:
                problems.append(f"{flag(key)} {_written(match.group(3))} is invalid: {match.group(4)}")
                wide.pop(key)
            else:
                return None, [*problems, str(error)]
    return None, problems


def _format(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """``--no-progress`` for every library: inside the block every tqdm bar is created disabled (also the bars of
    libraries that bypass transformers' switch, such as the GGUF conversion) and TQDM_DISABLE=1 is set for child
    processes; both are restored afterwards. (tqdm reads TQDM_DISABLE when it is imported, so the variable alone
    does not reach a tqdm that is already loaded.)"""
    before = os.environ.get("TQDM_DISABLE")
    original_init = tqdm.std.tqdm.__init__
    if not enabled:
        os.environ["TQDM_DISABLE"] = "1"

        def quiet_init(self, *args, **kwargs):
            kwargs["disable"] = True
            original_init(self, *args, **kwargs)

        tqdm.std.tqdm.__init__ = quiet_init
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original_init
        os.environ.pop("TQDM_DISABLE", None)
        if before is not None:
            os.environ["TQDM_DISABLE"] = before


# --------------------------------------------------------------------------------------------- the parser
def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


parse_bool.__name__ = "boolean"


class _Switch(argparse.Action):
    """A boolean flag: ``--name`` sets True; ``--name VALUE`` sets VALUE (true/false)."""

    def __init__(self, option_strings, dest, default=None, help=None, const=True):
        super().__init__(option_strings, dest, nargs="?", const=const, default=default, type=parse_bool, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Switches shown without a metavar; line breaks in a help text kept (each line wrapped)."""

    def _format_action_invocation(self, action):
        if isinstance(action, _Switch):
            return ", ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _split_lines(self, text, width):
        lines = []
        for part in text.splitlines():
            indent = " " * (len(part) - len(part.lstrip()))
            more = indent + "  " if indent else ""
            lines += textwrap.wrap(part, width, subsequent_indent=more, break_on_hyphens=False) or [""]
        return lines


@dataclasses.dataclass
class _Flag:
    name: str
    type: Any
    default: Any
    help: str
    negative: str | None = None


class CommandLine:
    """The parser of an experiment's argument dataclass ``spec`` (see the module docstring).

    ``presets``: {preset name: {flag name: value}}; the field ``preset`` of ``spec`` (when it has one) selects
    one. ``parse(argv)`` returns an instance of ``spec``; ``flat(args)`` its settings as {flag name: value}."""

    def __init__(
        self,
        spec: type,
        presets: dict[str, dict[str, Any]] | None = None,
        description: str = "",
        prog: str | None = None,
    ):
        self.spec, self.presets, self.description, self.prog = spec, presets or {"default": {}}, description, prog
        self.groups: dict[str | None, list[_Flag]] = {None: []}  # None: the experiment's own flags
        self.descriptions: dict[str | None, str | None] = {}
        seen: set[str] = set()
        for f in dataclasses.fields(spec):
            flags = self._flags(f)
            clash = seen & {x.name for x in flags}
            if clash:
                raise TypeError(f"{spec.__name__}: flag names declared twice: {sorted(clash)}")
            seen |= {x.name for x in flags}
            self.groups.setdefault(f.metadata.get("section"), []).extend(flags)
            self.descriptions[f.metadata.get("section")] = f.metadata.get("description")
        if "preset" not in seen:  # the spec does not record the preset: the flag still selects one
            self.groups[None].insert(0, _Flag("preset", str, "default", self._preset_help("start from a preset")))
        for preset, values in self.presets.items():
            unknown = set(values) - seen
            if unknown:
                raise TypeError(f"preset {preset!r} sets unknown flags {sorted(unknown)}")

    # ---- declarations -> flags
    def _flags(self, f: dataclasses.Field) -> list[_Flag]:
        if f.metadata.get("methods"):
            return [
                _Flag(n, e["type"], e["default"], f"{e['help']} (methods: {', '.join(e['methods'])})")
                for n, e in shared_hyperparameters().items()
            ]
        if "section" in f.metadata:
            config = f.default_factory()
            hints = typing.get_type_hints(type(config))
            return [
                _Flag(g.name, hints[g.name], getattr(config, g.name), g.metadata["help"], g.metadata.get("negative"))
                for g in dataclasses.fields(config)
                if _is_cli(g)
            ]
        if not _is_cli(f):
            return []
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        hint = typing.get_type_hints(self.spec)[f.name]
        help_text = self._preset_help(f.metadata["help"]) if f.name == "preset" else f.metadata["help"]
        return [_Flag(f.name, hint, default, help_text, f.metadata.get("negative"))]

    def _preset_help(self, text: str) -> str:
        lines = [f"{text} (default: default); each one sets:"]
        for name, values in self.presets.items():
            sets = " ".join(_as_flags(values)) or "the defaults shown here"
            lines.append(f"  {name}: {sets}")
        return "\n".join(lines)

    def parser(self) -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser(
            prog=self.prog, description=self.description, formatter_class=_Formatter, usage="%(prog)s [options]"
        )
        for title, flags in self.groups.items():
            group = parser.add_argument_group(title, self.descriptions.get(title)) if title else parser
            for x in flags:
                _add(group, x)
        return parser

    # ---- argv -> dataclass
    def parse(self, argv: Sequence[str]) -> Any:
        """Parse ``argv`` (preset first, then the flags over it). An unknown preset raises ``Problems``; a
        malformed flag exits like argparse (status 2, with the usage)."""
        argv = list(argv)
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--preset", default="default")
        preset = pre.parse_known_args(argv)[0].preset
        if preset not in self.presets:
            raise Problems([f"unknown --preset {preset!r}; choose one of {', '.join(self.presets)}"])
        parser = self.parser()
        parser.set_defaults(**self.presets[preset])
        return self.build(vars(parser.parse_args(argv)))

    def build(self, flat: dict[str, Any]) -> Any:
        """An instance of ``spec`` from {flag name: value} (flags not given keep their defaults)."""
        kwargs = {}
        for f in dataclasses.fields(self.spec):
            if f.metadata.get("methods"):
                kwargs[f.name] = {n: flat[n] for n in shared_hyperparameters() if n in flat}
            elif "section" in f.metadata:
                config = f.default_factory()
                values = {g.name: flat[g.name] for g in dataclasses.fields(config) if _is_cli(g) and g.name in flat}
                kwargs[f.name] = dataclasses.replace(config, **values)
            elif _is_cli(f) and f.name in flat:
                kwargs[f.name] = flat[f.name]
        return self.spec(**kwargs)

    def flat(self, args: Any, identity_only: bool = False) -> dict[str, Any]:
        """Every command-line setting of ``args`` as {flag name: value} (run-wide method settings with their
        defaults filled in); with ``identity_only``, only those that may change a number (``identity``)."""
        out = {}
        for f in dataclasses.fields(self.spec):
            value = getattr(args, f.name)
            if f.metadata.get("methods"):
                out.update(method_defaults(value))
            elif "section" in f.metadata:
                fields = [g for g in dataclasses.fields(value) if _is_cli(g)]
                out.update({g.name: getattr(value, g.name) for g in fields if _counts(g, identity_only)})
            elif _is_cli(f) and _counts(f, identity_only):
                out[f.name] = value
        return out

    def identity(self, args: Any) -> dict[str, Any]:
        """The settings of ``args`` that decide the numbers, {flag name: value}: every command-line setting but
        those declared with ``arg(..., identity=False)``. A run directory records it (``RunDir``) and refuses a
        rerun whose identity differs, unless ``--overwrite``."""
        return self.flat(args, identity_only=True)


def _is_cli(f: dataclasses.Field) -> bool:
    return "help" in f.metadata and f.metadata.get("cli", True) is not False


def _counts(f: dataclasses.Field, identity_only: bool) -> bool:
    """Whether ``flat`` keeps the field: always, or with ``identity_only`` unless it is marked ``identity=False``."""
    return not identity_only or f.metadata.get("identity", True) is not False


def _as_flags(values: dict[str, Any]) -> list[str]:
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            out.append(flag(name) if value else f"{flag(name)} false")
        else:
            out.append(f"{flag(name)} {' '.join(map(str, value)) if isinstance(value, list) else value}")
    return out


def _add(group, x: _Flag) -> None:
    base, optional, many = _unpack(x.type)
    help_text = x.help.replace("%", "%%")
    options = [flag(x.name)]
    hidden = [f"--{x.name}"] if "_" in x.name else []
    if base is bool:
        if x.default is True:
            group.add_argument(
                f"--no-{x.name.replace('_', '-')}",
                dest=x.name,
                action="store_false",
                default=True,
                help=(x.negative or f"turn off: {x.help}").replace("%", "%%"),
            )
            group.add_argument(*options, *hidden, dest=x.name, action=_Switch, default=True, help=argparse.SUPPRESS)
        else:
            group.add_argument(*options, dest=x.name, action=_Switch, default=x.default, help=help_text)
            if hidden:
                group.add_argument(*hidden, dest=x.name, action=_Switch, default=x.default, help=argparse.SUPPRESS)
        return
    empty_list = many and x.default == []  # given with no value, the flag clears a preset's list
    if empty_list:
        help_text += " (the flag with no value: none, e.g. to turn a preset's off)"
    elif x.default is not None and not re.search(r"\(default\b", x.help):
        shown = " ".join(map(str, x.default)) if many else x.default
        help_text += f" (default: {shown})".replace("%", "%%")
    kwargs = dict(dest=x.name, type=_converter(base, optional), default=x.default, metavar=x.name.upper())
    if many:
        kwargs["nargs"] = "*" if empty_list else "+"
    group.add_argument(*options, help=help_text, **kwargs)
    if hidden:
        group.add_argument(*hidden, help=argparse.SUPPRESS, **kwargs)


def _unpack(hint: Any) -> tuple[Any, bool, bool]:
    """(base type, accepts None, is a list) of a field annotation such as ``float | None`` or ``list[int]``."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(members) < len(typing.get_args(hint))
        hint = members[0]
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def _converter(base: Any, optional: bool) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if optional and text.strip().lower() == "none":
            return None
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value") + (" or none" if optional else "")
    return convert
