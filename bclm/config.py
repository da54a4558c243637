"""Typed configs: nested dataclasses, filled from a YAML recipe and `--section.field value` overrides.

Written by hand because no maintained library does all three of: nested dataclasses, YAML recipes with
an error for every unknown key (naming it and the file), and dotted command-line overrides with types
taken from the annotations. `HfArgumentParser` is flat; tyro/simple_parsing would add a dependency
for a hundred lines. Help text lives once, in each field's metadata, and `--help` prints it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bclm.errors import BCLMError

T = TypeVar("T")
BOOL_WORDS = ("true", "1", "yes", "on", "false", "0", "no", "off")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (lists/dicts get a default_factory)."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp: Any) -> bool:
    return dataclasses.is_dataclass(tp) and isinstance(tp, type)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise naming `where`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), where)
    if _is_config(tp):
        if not isinstance(value, dict):
            raise BCLMError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, typing.get_args(tp), where)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise BCLMError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise BCLMError(f"{where}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if tp is bool:
        return _coerce_bool(value, where)
    if tp in (int, float):
        return _coerce_number(value, tp, where)
    return str(value) if tp is str else value


def _coerce_union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    """None for an optional field given none/null; else the first member type the value converts to."""
    if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, where)
        except BCLMError as e:
            errors.append(str(e))
    raise BCLMError(errors[0] if errors else f"{where}: cannot use {value!r}")


def _coerce_sequence(value: Any, origin: type, args: tuple[Any, ...], where: str) -> list | tuple:
    """A list or tuple from a YAML sequence, `[a, b]` or `a,b` on the command line; fixed-length tuples checked."""
    if isinstance(value, str):
        value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
    if not isinstance(value, list | tuple):
        raise BCLMError(f"{where}: expected a list, got {value!r}")
    item_types = args if origin is tuple and args and args[-1] is not Ellipsis else (args[:1] or (Any,))
    if origin is tuple and len(item_types) > 1:
        if len(value) != len(item_types):
            raise BCLMError(f"{where}: expected {len(item_types)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    items = [_coerce(v, item_types[0], f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in BOOL_WORDS:
        return value.lower() in ("true", "1", "yes", "on")
    raise BCLMError(f"{where}: expected true or false, got {value!r}")


def _coerce_number(value: Any, tp: type, where: str) -> int | float:
    """A finite int or float; booleans and fractional values for an int are refused."""
    if isinstance(value, bool):
        raise BCLMError(f"{where}: expected {tp.__name__}, got {value!r}")
    try:
        out = tp(value) if not isinstance(value, str) else tp(yaml.safe_load(value))
    except (TypeError, ValueError):
        raise BCLMError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is int and isinstance(value, float) and value != int(value):
        raise BCLMError(f"{where}: expected an integer, got {value!r}")
    if not math.isfinite(out):
        raise BCLMError(f"{where}: expected a finite number, got {value!r}")
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build `cls` from a nested mapping; an unknown key is an error that names it."""
    types_ = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise BCLMError(f"{where}: unknown key {key!r} ({hint}known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, types_[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except BCLMError:
        raise
    except (TypeError, ValueError) as e:
        raise BCLMError(f"{where}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(config))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise BCLMError(f"--{dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(args: list[str], cls: type | None = None) -> dict[str, Any]:
    """`--a.b value`, `--a.b=value` and `--a-b value` pairs into a nested dict (values stay strings). A
    boolean field of `cls` may stand alone (`--overwrite` is `--overwrite true`): it never takes the next
    option as its value."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise BCLMError(f"unexpected argument {arg!r}: overrides look like --section.field VALUE")
        key, eq, value = arg[2:].partition("=")
        key, nxt = key.replace("-", "_"), args[i + 1] if i + 1 < len(args) else None
        if eq:
            i += 1
        elif cls is not None and field_type(cls, key) is bool and (nxt is None or nxt.startswith("--")):
            value, i = "true", i + 1
        elif nxt is None:
            raise BCLMError(f"--{key} needs a value")
        else:
            value, i = nxt, i + 2
        _set_dotted(out, key, value)
    return out


def field_type(cls: type, dotted: str) -> Any:
    """The annotated type of `section.field` in config `cls`; None for a key it does not have."""
    tp: Any = cls
    for name in dotted.split("."):
        if not _is_config(tp) or name not in {f.name for f in dataclasses.fields(tp)}:
            return None
        tp = _field_types(tp)[name]
    return tp


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BCLMError(f"recipe {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise BCLMError(f"recipe {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise BCLMError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:               # an empty file (or only comments): a recipe that was not saved, likely
        raise BCLMError(f"recipe {path} is empty: expected sections such as train: and model:, or no recipe "
                        "argument to train with the defaults")
    if not isinstance(data, dict):
        raise BCLMError(f"recipe {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(cls: type[T], recipe: str | Path | None, overrides: list[str]) -> T:
    """Defaults < recipe file < command-line overrides."""
    data: dict[str, Any] = {}
    where = "config"
    if recipe is not None:
        data = load_recipe(recipe)
        where = str(recipe)
    data = merge(data, parse_overrides(overrides, cls))
    return from_dict(cls, data, where)


KEYS_FILE = Path(__file__).with_name("config_keys.json")    # written by `python -m bclm.reference`


def check_keys(command: str, overrides: list[str]) -> None:
    """A `--section.field` that `command`'s recipe lacks is named at once, with the nearest key: the recipe
    classes live beside torch, whose import takes seconds, so this reads the generated key list instead."""
    known = json.loads(KEYS_FILE.read_text(encoding="utf-8")).get(command)
    if known is None:
        return
    keys, opened = set(known["keys"]), tuple(f"{k}." for k in known["open"])
    for arg in overrides:
        key = arg[2:].partition("=")[0].replace("-", "_") if arg.startswith("--") else ""
        if key and key not in keys and not key.startswith(opened):
            near = difflib.get_close_matches(key, keys, n=1)
            raise BCLMError(f"unknown option --{key}" + (f" (did you mean --{near[0]}?)" if near else "")
                            + f": `bclm {command} --help` lists them")


def leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type name, default, help) of every leaf field of config `cls`, in declaration order."""
    rows = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if _is_config(tp):
            rows += leaf_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        tname = getattr(tp, "__name__", str(tp)).replace("typing.", "")
        rows.append((f"{prefix}{f.name}", tname, default, f.metadata.get("help", "")))
    return rows


def help_text(cls: type) -> list[str]:
    """One line per field: `--section.field (type, default): help`."""
    return [f"  --{key} ({tname}, default {default!r}): {help_}" for key, tname, default, help_ in leaf_fields(cls)]
