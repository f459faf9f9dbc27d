"""Where a drex process finds the learner's state, and how its settings are read.

``drex worker`` (:class:`streams.settings.WorkerSettings`) and ``drex serve``
(:class:`serving.settings.ServerSettings`) both derive from :class:`StateLocation`, so
the learner store's folder is worked out in one place: ``DREX_LEARNER_DIR``, else
``DREX_STATE_DIR/learner``. A server finds the store its worker writes when both are
given the same two variables (or flags).

Every setting is a field with a default and a docstring that starts with its
environment variable. pydantic-settings reads the variables, pydantic checks the
values, and :func:`add_flags` makes a command's flags from the same fields; a flag
beats its variable, a variable beats the default. Nothing here imports torch or
anything from ``streams`` or ``serving``.
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "DREX_"


def learner_dir(state_dir: str, learner_dir: str = "") -> Path:
    """The learner's store: ``learner_dir`` when given, else ``state_dir/learner``.

    >>> learner_dir("/state"), learner_dir("/state", "/shared/learner")
    (PosixPath('/state/learner'), PosixPath('/shared/learner'))
    """
    return Path(learner_dir) if learner_dir else Path(state_dir) / "learner"


class StateLocation(BaseSettings):
    """The settings every process that reads or writes the learner's state shares.

    Constructing one reads only its arguments (tests and benchmarks are never changed by
    a stray ``DREX_*`` variable); :meth:`from_env` reads the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # DREX_X= (empty) counts as unset: the default applies
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,  # a field's docstring is its flag's help
        validate_by_name=True,  # fields whose variable is an alias (DREX_SET) by name too
    )

    # fields with a variable and no flag (a command line is visible to every user)
    ENV_ONLY: ClassVar[frozenset[str]] = frozenset()

    state_dir: str = "./state"
    """DREX_STATE_DIR: local state: faust tables, the learner store, checkpoints, the index."""
    learner_dir: str = ""
    """DREX_LEARNER_DIR: the learner's RocksDB store; default STATE_DIR/learner. Workers
    that may take the learner over from each other must share it, and every server that
    follows the learner reads it (see streams/agents/learn.py)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # only the arguments: from_env passes the environment's values as arguments
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Self:
        """Defaults, then the ``DREX_*`` variables of ``env`` (default: ``os.environ``),
        then ``flags`` (a None value is a flag not given).

        A bad value raises ``ValueError`` naming the setting, its variable and its flag.
        """
        values = _Environment(cls, os.environ if env is None else env)()
        # a field whose variable is an alias (DREX_SET) comes back under it: by name, so
        # that its flag replaces it
        names = {cls.variable(name): name for name in cls.model_fields}
        values = {names.get(key, key): value for key, value in values.items()}
        values.update({key: value for key, value in flags.items() if value is not None})
        try:
            return cls(**values)
        except ValidationError as err:
            raise ValueError(_describe(cls, err)) from None

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of field ``name``: ``DREX_<NAME>`` or its alias."""
        return _variable(cls.model_fields[name], name)

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line flag of field ``name``: its variable, kebab-cased."""
        return "--" + cls.variable(name).removeprefix(ENV_PREFIX).lower().replace("_", "-")

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir)

    @property
    def learner_path(self) -> Path:
        return learner_dir(self.state_dir, self.learner_dir)


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, not ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        from pydantic_settings.sources.utils import parse_env_vars

        return parse_env_vars(
            self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


def _variable(field: FieldInfo, name: str) -> str:
    alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
    return alias or f"{ENV_PREFIX}{name.upper()}"


def _describe(cls: type[StateLocation], err: ValidationError) -> str:
    """pydantic's errors as one line per bad setting, with its variable and its flag."""
    names = {cls.variable(name): name for name in cls.model_fields}
    out = []
    for e in err.errors():
        message = e["msg"].removeprefix("Value error, ")
        key = e["loc"][0] if e["loc"] else None
        name = names.get(str(key), str(key))
        if name in cls.model_fields:
            where = f"{cls.variable(name)} / {cls.flag(name)}"
            out.append(f"{name} = {e['input']!r} ({where}): {message}")
        else:
            out.append(message)
    return "; ".join(out)


# --- command-line flags from the same fields ------------------------------------------


def add_flags(parser: argparse.ArgumentParser, cls: type[StateLocation]) -> None:
    """One flag per field of ``cls`` (but ``cls.ENV_ONLY``), named after its variable.

    A flag left out is absent from the parsed namespace, so :func:`flag_values` passes
    only the flags given and the environment's or default value stands for the rest. The
    help is the first sentence of the field's docstring, its variable and its default.
    """
    for name, field in cls.model_fields.items():
        if name in cls.ENV_ONLY:
            continue
        kind, choices = _flag_type(field.annotation)
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kwargs.update(action="append", metavar="KEY=VALUE")
        else:
            kwargs.update(type=kind, choices=choices, metavar=None if choices else name.upper())
        default = f"; default {field.default!r}" if field.default not in (None, (), "") else ""
        text = f"{_summary(field.description or '')} ({cls.variable(name)}{default})"
        parser.add_argument(cls.flag(name), help=text.replace("%", "%%"), **kwargs)


def flag_values(args: argparse.Namespace, cls: type[StateLocation]) -> dict[str, Any]:
    """The settings given as flags in ``args`` (other entries, e.g. ``func``, left out)."""
    return {key: value for key, value in vars(args).items() if key in cls.model_fields}


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """(argparse type, choices) of a field: str, int, float, bool, tuple or a Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return str, [str(a) for a in args]
    if origin is typing.Annotated:
        return _flag_type(args[0])
    if origin is tuple:
        return tuple, None
    if args:  # X | None
        return _flag_type(args[0])
    return (annotation if annotation in (bool, int, float) else str), None


def _summary(description: str) -> str:
    """The docstring's first sentence, without the variable's name in front (nor reST's
    double backquotes)."""
    text = " ".join(description.replace("``", "").split())
    text = re.sub(r"^[A-Z_]+:\s*", "", text)
    return re.split(r"\.\s+(?=[A-Z0-9])", text, maxsplit=1)[0].rstrip(".")
