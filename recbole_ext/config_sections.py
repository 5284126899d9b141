"""Typed config sections: one reader from the merged config to a settings dataclass.

A *section* is a dataclass of settings (the LLM client's, PPO's, LoRA's, ExpCTR's, TALLRec's,
LR-Recsys' explanation generator's, the LLM reranking's). Its fields carry types, help text and
``__post_init__`` validation, and **no defaults**: every value comes from a yaml under
``recbole_ext/properties/`` that :class:`recbole_ext.config.Config` layers (with presets, the
user's files, dicts and ``--key=value`` on top). The class names where its keys live::

    YAML_PREFIX: ClassVar[str] = "llm_"      # the key of field f is "llm_<f>" ...
    YAML_FILE: ClassVar[str] = "llm.yaml"    # ... declared in recbole_ext/properties/llm.yaml
    enabled: bool = field(metadata={"key": "llm_rerank", "help": ...})  # a key of its own

:func:`read_section` builds the dataclass from a ``Config`` (which must hold every key: the yaml
was layered) or from a plain mapping (a test's, a script's: the keys it lacks are read from the
section's own ``YAML_FILE``, the same file ``Config`` layers); :func:`yaml_section` is the
section as its yaml sets it, with some fields changed. Values are checked against the field
types (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``tuple[str, ...]``) and a key of
the section's prefix that is no field and that no packaged yaml declares (a typo) is refused,
both naming the yaml key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from functools import cache
from logging import getLogger
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recbole_ext.config_checks import ConfigError

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"
T = TypeVar("T")


class ConfigSectionError(ConfigError):
    """A section's key is missing, has the wrong type, is unknown (a typo), or fails the
    section's own validation (the command line prints it as one message, no traceback)."""


def section_keys(cls: type) -> dict[str, str]:
    """``{yaml key: field name}`` of section ``cls``.

    >>> from recbole_ext.llm.rerank_window import RerankConfig
    >>> list(section_keys(RerankConfig))[:3]
    ['llm_rerank', 'rerank_keep_top', 'rerank_window']
    """
    return {
        f.metadata.get("key", cls.YAML_PREFIX + f.name): f.name for f in dataclasses.fields(cls)
    }


def yaml_path(cls: type) -> Path:
    """The yaml that declares the keys of section ``cls``."""
    return PROPERTIES_DIR / cls.YAML_FILE


@cache
def _load_yaml(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    return values if isinstance(values, dict) else {}


@cache
def declared_keys() -> frozenset[str]:
    """Top-level keys of every packaged yaml (model, protocol, preset, llm, rerank, ...)."""
    return frozenset(k for path in PROPERTIES_DIR.rglob("*.yaml") for k in _load_yaml(path))


def read_section(config: Any, cls: type[T]) -> T:
    """Section ``cls`` from a RecBole ``Config`` (or any object with ``final_config_dict``) or a
    plain mapping.

    Raises:
        ConfigSectionError: a ``Config`` lacks a key (its model's yaml does not declare it), a
            value has the wrong type, a ``<prefix>*`` key is no field of the section and no
            packaged yaml declares it (unless ``allow_unknown_keys`` is True: then a warning), or
            the dataclass's own validation fails (a ``ValueError`` in its ``__post_init__`` or
            ``derived``, naming the yaml key and the fix).
    """
    keys = section_keys(cls)
    is_config = hasattr(config, "final_config_dict")
    values: Mapping[str, Any] = config.final_config_dict if is_config else config
    given = {key: values[key] for key in keys if key in values}
    missing = [key for key in keys if key not in given]
    if missing and is_config:
        raise ConfigSectionError(
            f"{cls.__name__} needs {_names(missing)}, which the merged config lacks: "
            f"recbole_ext/properties/{cls.YAML_FILE} declares {'them' if len(missing) > 1 else 'it'}"
            f" for its model. Use that model, add the key{'s' if len(missing) > 1 else ''} to your "
            f"model's yaml, or set {'them' if len(missing) > 1 else 'it'} (--{missing[0]}=...)."
        )
    defaults = _load_yaml(yaml_path(cls))
    given.update({key: defaults[key] for key in missing})
    _check_unknown(values, cls, keys)
    hints = typing.get_type_hints(cls)
    kwargs = {
        keys[key]: _typed(value, hints[keys[key]], key, cls, defaults.get(key))
        for key, value in given.items()
    }
    derive = getattr(cls, "derived", None)
    try:
        if derive is not None:
            kwargs = derive(kwargs, config)
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # the section's own validation: its message names key and fix
        raise ConfigSectionError(str(err)) from err


def yaml_section(cls: type[T], **changes: Any) -> T:
    """Section ``cls`` as its yaml sets it, with ``changes`` (field names) applied.

    >>> from recbole_ext.llm.rerank_window import RerankConfig
    >>> cfg = yaml_section(RerankConfig, keep_top=0)
    >>> (cfg.keep_top, cfg.window)
    (0, 20)

    Raises:
        TypeError: a name in ``changes`` is no field of ``cls``.
    """
    keys = {name: key for key, name in section_keys(cls).items()}
    unknown = sorted(set(changes) - set(keys))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown}; its fields: {sorted(keys)}")
    return read_section({keys[name]: value for name, value in changes.items()}, cls)


# -- checks ------------------------------------------------------------------------------------
def _names(keys: list[str]) -> str:
    return ", ".join(f"`{k}`" for k in keys)


def _check_unknown(values: Mapping[str, Any], cls: type, keys: dict[str, str]) -> None:
    prefix = cls.YAML_PREFIX
    known = declared_keys() | set(keys)
    unknown = [k for k in values if isinstance(k, str) and k.startswith(prefix) and k not in known]
    if not unknown:
        return
    lines = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(keys), n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(f'`{k}`' for k in close)}?" if close else "no close key"
        lines.append(f"`{key}`: {hint}")
    message = (
        f"{'; '.join(lines)} -- {'these keys are' if len(unknown) > 1 else 'this key is'} no "
        f"setting of {cls.__name__} (keys {prefix}*, recbole_ext/properties/{cls.YAML_FILE}) and "
        f"no yaml declares {'them' if len(unknown) > 1 else 'it'}. Fix the spelling, or set "
        f"allow_unknown_keys=True to keep a key your own code reads."
    )
    if values.get("allow_unknown_keys") is True:
        getLogger().warning(f"allow_unknown_keys=True: {message}")
        return
    raise ConfigSectionError(message)


def _describe(annotation) -> str:
    if _optional_of(annotation) is not None:
        return f"{_describe(_optional_of(annotation))} or ~ (None)"
    if typing.get_origin(annotation) is tuple:
        return "a list of strings"
    return {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[
        annotation
    ]


def _optional_of(annotation):
    """``X`` of ``X | None``, else None."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0]
    return None


def _typed(value: Any, annotation, key: str, cls: type, example: Any) -> Any:
    """``value`` checked against the field type (an int is a valid float; a list becomes the
    tuple of a ``tuple[str, ...]`` field)."""
    inner = _optional_of(annotation)
    if inner is not None:
        return None if value is None else _typed(value, inner, key, cls, example)
    ok = False
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif annotation is str:
        ok = isinstance(value, str)
    elif typing.get_origin(annotation) is tuple:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        raise TypeError(f"{cls.__name__}.{key}: unsupported field type {annotation}")
    if not ok:
        shown = "~" if example is None else example
        raise ConfigSectionError(
            f"`{key}` takes {_describe(annotation)}, not a {type(value).__name__}: set e.g. "
            f"--{key}={shown!s} (recbole_ext/properties/{cls.YAML_FILE} has {shown!r})."
        )
    return value


def preset_names(family: str) -> list[str]:
    """The presets ``<name>`` of ``properties/preset/<family>_<name>.yaml`` (a model's presets,
    layered by ``<family>_preset: <name>``).

    >>> preset_names("expctr")
    ['paper', 'tiny']
    """
    prefix = f"{family}_"
    return sorted(
        p.stem.removeprefix(prefix) for p in (PROPERTIES_DIR / "preset").glob(f"{prefix}*.yaml")
    )
