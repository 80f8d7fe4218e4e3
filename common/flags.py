"""Command-line flags for the config models of `common.config`: every field is a flag with the
same name (`groups_per_step` -> `--groups-per-step`), so `--help` is the reference; `--config
file.json` sets fields from a file, and flags override it.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from common.config import callable_path, redact_url
from common.errors import ConfigError


def _flag_type(annotation: Any) -> Callable[[str], Any] | None:
    """The parser of a numeric flag (`none` allowed where the field is optional), else None."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if annotation not in (int, float):
        return None
    base = annotation

    def parse(text: str) -> Any:
        return None if optional and text.lower() == "none" else base(text)

    return parse


def build_parser(model_cls: type[BaseModel], prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=model_cls.__doc__)
    parser.add_argument("--config", help="JSON file of field values; flags override it")
    defaults = model_cls()
    for name, field in model_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if callable(default):
            default = callable_path(default)
        elif isinstance(default, str):
            default = redact_url(default)  # REDIS_URL's password stays out of --help
        # SUPPRESS keeps unset flags out of the result, so a --config file can set them.
        kwargs: dict[str, Any] = {
            "help": f"{field.description} (default: {default})".replace("%", "%%"),
            "default": argparse.SUPPRESS,
        }
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(field.annotation) is Literal:
            kwargs["choices"] = typing.get_args(field.annotation)
        elif (parse := _flag_type(field.annotation)) is not None:
            kwargs["type"] = parse
        parser.add_argument(flag, **kwargs)
    return parser


_C = typing.TypeVar("_C", bound=BaseModel)


def parse_config(argv: Sequence[str] | None, model_cls: type[_C], prog: str) -> _C:
    """Flags (and an optional --config JSON file) -> a validated config object.

    Invalid values exit with one line naming the flag and the fix.
    """
    parser = build_parser(model_cls, prog)
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        try:
            with open(config_file) as handle:
                values.update(json.load(handle))
        except (OSError, ValueError) as exc:
            parser.error(f"--config {config_file}: {exc}")
    values.update(args)
    try:
        return model_cls(**values)
    except ConfigError as exc:
        parser.error(str(exc))
    except ValueError as exc:  # pydantic.ValidationError
        parser.error(_describe_validation_error(exc))


def _describe_validation_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for error in errors():
        location = ".".join(str(part) for part in error.get("loc", ()))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if location:
            flag = "--" + location.replace("_", "-")
            message = f"{flag}: {message} (got {error.get('input')!r})"
        lines.append(message)
    return "; ".join(lines)
