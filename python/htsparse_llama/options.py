"""User settings declared once: every HT-Sparse, sampling and video option
is one `Option` (name, type, range, help, CLI flag, request field), and the
CLI flags (`add_flags`), the server's request fields (`from_request`) and the
Python keyword arguments (the dataclass fields of SparseConfig, Sampling and
VideoOptions, declared with `option()`) are all made from it, with one check
and one message for a bad value (`Option.check`).

    @dataclass
    class Sampling:
        top_k: int = option(40, "top-k, 0 disables", lo=0)

    add_flags(parser, Sampling)                 # --top-k INT
    given = from_args(Sampling, args)           # {"top_k": 5} for the flags the user gave
    given = from_request(Sampling, body)        # {"top_k": 5}, or OptionError naming the field

What depends on the model (a select layer below its layer count, the
defaults its GGUF carries) is the runtime's to resolve and check, once, in
C++ (runtime/src/sparse_config.cpp); tests/test_options.py holds both sides'
ranges against each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import InvalidArgumentError


class OptionError(InvalidArgumentError):
    """A value out of an option's type or range; `name` is the option's."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class Option:
    """One setting as every front end shows it.

    name: the Python keyword, and the request field unless `field` says otherwise.
    type: int, float, bool, str or "strings" (a list of strings).
    lo, hi: inclusive bounds unless lo_open / hi_open; None: unbounded.
    flags: the CLI flags (default: --name-with-dashes); cli=False: none.
    request: a request field of the server (`field`, default `name`);
    aliases: other names of that field, which `field` wins over when a
    request gives both; request_hi: a narrower
    upper bound for requests (OpenAI's temperature <= 2).
    """

    name: str
    type: Any
    help: str
    default: Any = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    flags: Tuple[str, ...] = ()
    metavar: Optional[str] = None
    cli: bool = True
    request: bool = True
    field: Optional[str] = None
    aliases: Tuple[str, ...] = ()
    request_hi: Optional[float] = None
    max_items: Optional[int] = None
    literals: Tuple[str, ...] = ()  # words the option also takes besides its type's values ("auto")

    @property
    def request_field(self) -> str:
        return self.field or self.name

    @property
    def cli_flags(self) -> Tuple[str, ...]:
        return self.flags or ("--" + self.name.replace("_", "-"),)

    def range_text(self, hi: Optional[float] = None) -> str:
        """'in (0, 1]', '>= 0', '' (unbounded)."""
        hi = self.hi if hi is None else hi
        if self.lo is not None and hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi:g}"
        return ""

    def check(self, value: Any, label: Optional[str] = None, hi: Optional[float] = None) -> Any:
        """`value` as this option's type, or OptionError saying what is wrong
        ('keep_ratio must be a number in (0, 1], got 1.5'). None stays None."""
        if value is None:
            return None
        if isinstance(value, str) and value in self.literals:
            return value
        label = label or self.name
        if self.type is bool:
            if not isinstance(value, bool):
                raise OptionError(self.name, f"{label} must be true or false, got {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise OptionError(self.name, f"{label} must be a string, got {value!r}")
            return value
        if self.type == "strings":
            return self._strings(value, label)
        return self._number(value, label, self.hi if hi is None else hi)

    def _strings(self, value: Any, label: str) -> Tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        most = f" of at most {self.max_items}" if self.max_items else ""
        if (
            not isinstance(items, (list, tuple))
            or not all(isinstance(s, str) for s in items)
            or (self.max_items and len(items) > self.max_items)
        ):
            raise OptionError(self.name, f"{label} must be a string or a list{most} strings")
        return tuple(items)

    def _number(self, value: Any, label: str, hi: Optional[float]) -> Any:
        integer = self.type is int
        kind = "an integer" if integer else "a number"
        ok_type = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) and not _is_numpy_number(value, integer):
            words = "".join(f" or '{w}'" for w in self.literals)
            raise OptionError(self.name, f"{label} must be {kind}{words}, got {value!r}")
        if not integer and not math.isfinite(float(value)):
            raise OptionError(self.name, f"{label} must be a finite number, got {value!r}")
        low = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
        high = hi is not None and (value > hi or (self.hi_open and value == hi))
        if low or high:
            raise OptionError(self.name, f"{label} must be {self.range_text(hi)}, got {value}")
        return int(value) if integer else float(value)


def _is_numpy_number(value: Any, integer: bool) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False
    return isinstance(value, np.integer if integer else (np.integer, np.floating))


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field that is an Option (its name and type come from the field)."""
    return dataclasses.field(default=default, metadata={"option": spec, "help": help})


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _field_type(annotation: Any) -> Any:
    """int / float / bool / str / "strings" from a field's annotation (a string
    under `from __future__ import annotations`)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("typing.", "").replace(" ", "")
    if text.startswith("Optional[") and text.endswith("]"):
        text = text[len("Optional[") : -1]
    if text in _TYPES:
        return _TYPES[text]
    if text.startswith(("Tuple[str", "Sequence[str", "List[str")):
        return "strings"
    raise TypeError(f"no option type for the annotation {annotation!r}")


def options_of(cls: type) -> List[Option]:
    """The Options a dataclass declares with option(), in field order."""
    out = []
    for f in dataclasses.fields(cls):
        if "option" not in f.metadata:
            continue
        out.append(
            Option(
                name=f.name,
                type=_field_type(f.type),
                help=f.metadata["help"],
                default=f.default,
                **f.metadata["option"],
            )
        )
    return out


def check_fields(obj: Any) -> None:
    """Checks every option field of a dataclass instance (its __post_init__)."""
    for opt in options_of(type(obj)):
        setattr(obj, opt.name, opt.check(getattr(obj, opt.name)))


def _select(options: Iterable[Option], only: Optional[Sequence[str]], exclude: Sequence[str]) -> List[Option]:
    chosen = [o for o in options if (only is None or o.name in only) and o.name not in exclude]
    if only is not None and len(chosen) != len(only):
        known = {o.name for o in options}
        raise KeyError(f"no such options: {sorted(set(only) - known)}")
    return chosen


def declared(source: Any) -> List[Option]:
    """The Options of a dataclass, or a list of Options as is."""
    return options_of(source) if isinstance(source, type) else list(source)


# -- the CLI ------------------------------------------------------------------------------------


def _help(opt: Option, default: Any) -> str:
    text = opt.help
    rng = opt.range_text()
    if rng and opt.type in (int, float) and "default" not in text:
        text += f", {rng}"
    if default is not None and opt.type is not bool and "default" not in text:
        text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    return text.replace("%", "%%")


def add_flags(
    parser: Any,
    source: Any,
    only: Optional[Sequence[str]] = None,
    exclude: Sequence[str] = (),
    defaults: Optional[Dict[str, Any]] = None,
) -> None:
    """One argparse flag per option of `source` (a dataclass or a list of
    Options). The argparse default is the option's (or `defaults`'), so
    from_args() sees None only for options left unset without a default."""
    defaults = defaults or {}
    for opt in _select(declared(source), only, exclude):
        if not opt.cli:
            continue
        default = defaults.get(opt.name, opt.default)
        dest = dict(dest=opt.name)
        if opt.type is bool:
            parser.add_argument(
                *opt.cli_flags, action="store_true", default=bool(default), help=_help(opt, None), **dest
            )
            continue
        parser.add_argument(
            *opt.cli_flags, type=_parse_arg(opt), default=default, metavar=opt.metavar, help=_help(opt, default), **dest
        )


def _parse_arg(opt: Option):
    """The argparse `type` of an option: parses and checks, so a bad value is
    argparse's one-line error before anything loads."""

    def parse(text: str):
        if text in opt.literals:
            return text
        try:
            value = opt.type(text)
        except ValueError:
            kind = "an integer" if opt.type is int else "a number"
            words = "".join(f" or '{w}'" for w in opt.literals)
            raise argparse.ArgumentTypeError(f"expected {kind}{words}, got {text!r}") from None
        try:
            return opt.check(value)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = opt.type.__name__  # argparse names the type in its messages
    return parse


def from_args(
    source: Any, args: argparse.Namespace, only: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()
) -> Dict[str, Any]:
    """The options' values from parsed flags (those with a value)."""
    out = {}
    for opt in _select(declared(source), only, exclude):
        value = getattr(args, opt.name, None)
        if value is not None:
            out[opt.name] = value
    return out


# -- server requests -------------------------------------------------------------------------


def request_fields(source: Any) -> List[str]:
    """Every request field (aliases included) the options of `source` take."""
    return [name for opt in declared(source) if opt.request for name in (opt.request_field, *opt.aliases)]


def from_request(source: Any, body: Dict[str, Any]) -> Dict[str, Any]:
    """The options a request body sets (not null), checked; OptionError whose
    `name` is the request field at fault. An option given under several of
    its names takes the first one (the current name before older aliases)."""
    out = {}
    for opt in declared(source):
        if not opt.request:
            continue
        for name in (opt.request_field, *opt.aliases):
            value = body.get(name)
            if value is None:
                continue
            try:
                out[opt.name] = opt.check(value, f"'{name}'", hi=opt.request_hi)
            except OptionError as exc:
                raise OptionError(name, str(exc)) from None
            break
    return out
