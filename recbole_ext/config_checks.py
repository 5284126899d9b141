"""Checks of the keys a user passes: no credentials, no unknown keys.

Every config value is written somewhere: the console, RecBole's log file (``log/``), the
TensorBoard event file (``log_tensorboard/``), the ``--output`` JSON, checkpoints, Ray's trial
records. So :class:`recbole_ext.config.Config` refuses, before any data loads:

- a key that looks like a credential (:func:`looks_like_credential`: ``api_key``, ``token``,
  ``secret``, ``password``...): a secret comes from the environment, named by an ``*_env`` key
  (``llm_api_key_env: OPENAI_API_KEY``), whose value must be a variable name (:func:`is_env_name`);
- a key that nothing declares or reads (a typo such as ``learning_rat``), naming the closest
  known keys; ``allow_unknown_keys: True`` accepts it (research code reading its own keys).

The known keys of a run are derived from the sources, never listed by hand
(:func:`known_keys`): the yaml layers the run applies (RecBole's overall, model, dataset and
quick-start files, ours), every quick-start, protocol and preset yaml, RecBole's argument lists,
and the keys code reads by a literal name (:func:`keys_read`) in the code every run shares (both
packages outside ``model/`` and ``trainer/``), in the files of the model's classes and the model
modules they import, and in the files of its trainer's classes.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import numbers
import re
import sys
from functools import cache
from pathlib import Path

PACKAGES = ("recbole", "recbole_ext")
# Variables that hold a RecBole ``Config`` (or its final dict) in both packages' code.
CONFIG_NAMES = frozenset({"config", "final_config_dict"})
# ``config.<attribute>`` reads that are the Config object's own, not config keys.
CONFIG_ATTRIBUTES = frozenset(
    {
        "final_config_dict",
        "internal_config_dict",
        "external_config_dict",
        "file_config_dict",
        "variable_config_dict",
        "cmd_config_dict",
        "parameters",
        "yaml_loader",
        "model_class",
        *dir(dict),
    }
)

# Credential-looking names: any of these inside the name, or any of these words in it.
CREDENTIAL_PARTS = ("api_key", "apikey", "access_key", "secret_key", "private_key")
CREDENTIAL_WORDS = frozenset(
    {"token", "secret", "secrets", "password", "passwd", "credential", "credentials", "auth"}
    | {"authorization", "bearer"}
)
ENV_SUFFIX = "_env"
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
_URL_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")  # scheme://user:password@host


class ConfigError(ValueError):
    """An option or input file the run cannot use; the message names it and how to fix it (the
    command line prints it without a traceback)."""


class CredentialError(ConfigError):
    """A config key holds (or looks like it holds) a secret; the message never shows the value."""


class UnknownKeyError(ConfigError):
    """A config key that no yaml declares and no code reads (a typo, most often)."""


def choice_error(key: str, value, choices, why: str = "") -> ConfigError:
    """The error for an option ``key`` whose ``value`` is none of ``choices``: names the key,
    the choices and the closest one (a misspelling), then ``why`` (what the choices mean).

    >>> str(choice_error("intent_similarity", "cosin", ("cosine", "dot")))
    "intent_similarity='cosin': choose one of ('cosine', 'dot') (did you mean 'cosine'?)"
    """
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{key}={value!r}: choose one of {tuple(choices)}{hint}{why}")


def check_choices(option_choices: dict, values) -> None:
    """Refuse the first option of ``option_choices`` (``{key: (choices, what they mean)}``, a
    model's or trainer's) whose value in ``values`` (a RecBole ``Config`` or a mapping; absent
    keys are skipped) is none of its choices.

    >>> check_choices({"s2i_negatives": (("batch", "all"), "")}, {"s2i_negatives": "al"})
    Traceback (most recent call last):
    ...
    recbole_ext.config_checks.ConfigError: s2i_negatives='al': choose one of ('batch', 'all') (did you mean 'all'?)

    Raises:
        ConfigError: from :func:`choice_error`.
    """
    for key, (choices, why) in option_choices.items():
        if key in values and values[key] not in choices:
            raise choice_error(key, values[key], choices, why)


KINDS = {str: "text", int: "a whole number", float: "a number", list: "a list", dict: "a mapping"}


def value_type_problem(key: str, value, default):
    """Why a user's ``value`` cannot stand where the packaged ``default`` is a bool or a number
    (``--pretrain_epochs=two``, ``--disentangle=yes``), or ``None``. ``~`` (None) always passes,
    and so does any value of a key whose default is text, a list, a mapping or ``~``.

    >>> value_type_problem("pretrain_epochs", "two", 300)
    "pretrain_epochs='two' is text: it takes a number, like its default 300 (--pretrain_epochs=300; ~ for none where the option allows it)"
    >>> value_type_problem("disentangle", 1, True)
    'disentangle=1 is a whole number: it takes True or False, like its default True (--disentangle=True)'
    >>> [value_type_problem("learning_rate", v, 0.001) for v in (1, 0.01, None)]
    [None, None, None]
    """
    if value is None or default is None:
        return None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return None
        wanted, none = "True or False", ""
    elif isinstance(default, numbers.Real):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return None
        wanted, none = "a number", "; ~ for none where the option allows it"
    else:
        return None
    kind = KINDS.get(type(value), f"a {type(value).__name__}")
    return (
        f"{key}={value!r} is {kind}: it takes {wanted}, like its default {default!r} "
        f"(--{key}={default!r}{none})"
    )


def count_problem(key: str, value):
    """Why ``value`` cannot be the number of epochs ``key`` names (any key ending in ``epochs``:
    RecBole's ``epochs``, ``pretrain_epochs``, ``expctr_lc_epochs``...), or ``None``.

    >>> count_problem("epochs", -1)
    'epochs=-1: a number of epochs is a whole number ≥ 0 (0: no training in that stage)'
    >>> count_problem("epochs", 0) is None, count_problem("learning_rate", -1) is None
    (True, True)
    """
    if not key.endswith("epochs") or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, bool) or value < 0 or value != int(value):
        return (
            f"{key}={value!r}: a number of epochs is a whole number ≥ 0 (0: no training in "
            "that stage)"
        )
    return None


# --------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------
def _words(key: str) -> list[str]:
    """``"hfToken"`` → ``["hf", "token"]``; ``"llm_api_key"`` → ``["llm", "api", "key"]``."""
    return re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower())


def looks_like_credential(key: str) -> bool:
    """Whether ``key`` names a secret: an API key, a token, a secret, a password.

    ``*_env`` keys name an environment variable instead (checked by :func:`is_env_name`);
    plural ``tokens`` are counts or vocabulary words (``llm_max_tokens``), not secrets.

    >>> [looks_like_credential(k) for k in ("llm_api_key", "hf_token", "apiKey", "db_password")]
    [True, True, True, True]
    >>> [looks_like_credential(k) for k in ("llm_api_key_env", "llm_max_tokens", "tokenizer")]
    [False, False, False]
    """
    if key.endswith(ENV_SUFFIX):
        return False
    words = _words(key)
    joined = "_".join(words)
    return any(part in joined or part in "".join(words) for part in CREDENTIAL_PARTS) or bool(
        CREDENTIAL_WORDS & set(words)
    )


def is_env_name(value) -> bool:
    """Whether ``value`` is an environment variable's name (capitals, digits, ``_``), as an
    ``*_env`` key must hold; an API key pasted there by mistake is not one.

    >>> is_env_name("OPENAI_API_KEY"), is_env_name("sk-proj-abc123"), is_env_name("hf_aBcD12")
    (True, False, False)
    """
    return isinstance(value, str) and _ENV_NAME.fullmatch(value) is not None


ENV_WAY = (
    "recbole-ext never takes a secret as a config value (every value is written to the "
    "console, log/, log_tensorboard/, the --output JSON, checkpoints and Ray's trial records). "
    "Put the secret in an environment variable and name the variable: `export "
    "OPENAI_API_KEY=...` (the LLM client reads the variable named by llm_api_key_env, "
    "OPENAI_API_KEY by default; --llm_api_key_env=MY_KEY_VARIABLE reads another one)."
)


def credential_problem(key: str, value, declared: set[str] | frozenset[str] = frozenset()):
    """Why ``key: value`` may hold a secret, or ``None``. The text never contains ``value``.

    Refused: a credential-looking key that the sources do not declare (``declared``; the
    declared ones are counts and flags such as ``token_num_threshold``), an ``*_env`` key whose
    value is not a variable name, a URL with a password in it, and the same inside dict values.

    >>> credential_problem("llm_api_key", "sk-123")[:40]
    '`llm_api_key` looks like a credential: r'
    >>> credential_problem("llm_api_key_env", "sk-123")[:52]
    '`llm_api_key_env` takes the NAME of an environment v'
    >>> credential_problem("token_num_threshold", 5, {"token_num_threshold"}) is None
    True
    """
    if key.endswith(ENV_SUFFIX):
        if value is None or is_env_name(value):
            return None
        return (
            f"`{key}` takes the NAME of an environment variable (capitals, digits and _, e.g. "
            f"OPENAI_API_KEY), and the value given is not one (it is not shown). {ENV_WAY}"
        )
    if looks_like_credential(key) and key not in declared:
        return f"`{key}` looks like a credential: refused (its value is not shown). {ENV_WAY}"
    if isinstance(value, str) and _URL_PASSWORD.search(value):
        return (
            f"`{key}` holds a URL with a password in it (scheme://user:password@host): refused "
            f"(its value is not shown). {ENV_WAY}"
        )
    if isinstance(value, dict):
        for inner_key, inner in value.items():
            problem = credential_problem(str(inner_key), inner)
            if problem:
                return f"in `{key}`: {problem}"
    if isinstance(value, list | tuple):
        for inner in value:
            problem = credential_problem(key, inner, declared | {key})
            if problem:
                return problem
    return None


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--epochs=5"]`` → ``{"epochs": "5"}`` (values stay strings; RecBole converts them).

    Errors name the argument by its key or position, never by a value: ``--llm_api_key sk-...``
    (a space instead of ``=``) must not print the key it carries.

    >>> parse_overrides(["--epochs=5", "--metrics=['NDCG']"])
    {'epochs': '5', 'metrics': "['NDCG']"}

    Raises:
        CredentialError: ``--<credential-looking key>`` without ``=`` (its value follows it).
        ValueError: an argument that is not ``--key=value``, or a key given twice differently.
    """
    values: dict[str, str] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            key, value = arg[2:].split("=", 1)
            if key in values and values[key] != value:
                raise ValueError(f"--{key} is given twice with different values")
            values[key] = value
        elif arg.startswith("--"):
            if looks_like_credential(arg[2:]):
                raise CredentialError(f"command line: {credential_problem(arg[2:], None)}")
            raise ValueError(
                f"command-line override `{arg}` has no value: overrides look like --key=value "
                f"(write {arg}=VALUE, one argument)"
            )
        else:
            raise ValueError(
                f"command-line argument {index + 1} of the overrides is not --key=value (it is "
                f"not shown, in case it is a secret): write each override as one --key=value"
            )
    return values


# --------------------------------------------------------------------------------------------
# Keys code reads
# --------------------------------------------------------------------------------------------
def _is_config(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in CONFIG_NAMES
    return isinstance(node, ast.Attribute) and node.attr in CONFIG_NAMES


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keys_read(source: str, attributes: bool = True) -> set[str]:
    """Config keys that Python ``source`` reads or sets by a literal name: ``config["k"]``,
    ``self.config['k']``, ``config.final_config_dict["k"]``, ``config.get("k")``,
    ``"k" in config`` and, with ``attributes``, ``config.k`` (RecBole's ``Config.__getattr__``).

    >>> src = 'a = self.config["a"]; b = config.get("b"); c = "c" in config; d = config.d.x'
    >>> sorted(keys_read(src)), sorted(keys_read(src, attributes=False))
    (['a', 'b', 'c', 'd'], ['a', 'b', 'c'])
    """
    keys = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Subscript) and _is_config(node.value):
            keys.add(_literal(node.slice))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _is_config(node.func.value)
            and node.args
        ):
            keys.add(_literal(node.args[0]))
        elif (
            isinstance(node, ast.Compare)
            and isinstance(node.ops[0], ast.In | ast.NotIn)
            and _is_config(node.comparators[0])
        ):
            keys.add(_literal(node.left))
        elif (
            attributes
            and isinstance(node, ast.Attribute)
            and _is_config(node.value)
            and not node.attr.startswith("_")
            and node.attr not in CONFIG_ATTRIBUTES
        ):
            keys.add(node.attr)
    keys.discard(None)
    return keys


@cache
def _keys_read_in(path: Path, mtime_ns: int) -> frozenset[str]:
    # attribute reads only in RecBole: our code names dataclass settings ``config`` too
    # (LLMConfig.api_key), and reads RecBole keys by subscript
    in_recbole = _package_root("recbole") in path.parents
    return frozenset(keys_read(path.read_text(encoding="utf-8"), attributes=in_recbole))


def keys_read_in(path: Path) -> frozenset[str]:
    """:func:`keys_read` of one file (cached until the file changes)."""
    path = Path(path).resolve()
    return _keys_read_in(path, path.stat().st_mtime_ns)


@cache
def _package_root(package: str) -> Path:
    return Path(importlib.util.find_spec(package).origin).resolve().parent


def shared_sources() -> list[Path]:
    """Files every run may execute: both packages outside their ``model/`` and ``trainer/``
    folders (config, data, sampler, evaluator, utils, quick start; our llm, rl, harness)."""
    files = []
    for package in PACKAGES:
        root = _package_root(package)
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).parts
            if parts[0] not in ("model", "trainer") and "properties" not in parts:
                files.append(path)
    return files


def _module_file(name: str) -> Path | None:
    if not name.startswith(tuple(f"{p}." for p in PACKAGES)) and name not in PACKAGES:
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).resolve()


@cache
def _imported_model_modules(path: Path, module: str, mtime_ns: int) -> frozenset[str]:
    """Names of the ``<package>.model...`` modules that the file of ``module`` imports."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level + (node.module or "")) if node.level else node.module
            try:
                base = importlib.util.resolve_name(base, package) if node.level else base
            except (ImportError, ValueError):
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(n for n in names if n.startswith(tuple(f"{p}.model" for p in PACKAGES)))


def class_sources(cls: type, follow_model_imports: bool = True) -> list[Path]:
    """Files of ``cls`` and its base classes within RecBole and recbole-ext, and (for models)
    the ``model`` modules they import, transitively (layers, losses, the NAS package)."""
    files: dict[Path, None] = {}
    pending = []
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        path = Path(module.__file__).resolve() if getattr(module, "__file__", None) else None
        if path is not None and klass.__module__.split(".")[0] in PACKAGES:
            files[path] = None
            pending.append((path, klass.__module__))
    while follow_model_imports and pending:
        path, module = pending.pop()
        for name in _imported_model_modules(path, module, path.stat().st_mtime_ns):
            found = _module_file(name)
            if found is not None and found not in files:
                files[found] = None
                pending.append((found, name))
    return list(files)


# --------------------------------------------------------------------------------------------
# Known keys
# --------------------------------------------------------------------------------------------
def yaml_keys(path: Path) -> frozenset[str]:
    """Top-level keys of a yaml file (cached until the file changes)."""
    path = Path(path).resolve()
    return _yaml_keys(path, path.stat().st_mtime_ns)


@cache
def _yaml_keys(path: Path, mtime_ns: int) -> frozenset[str]:
    import yaml

    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return frozenset(values) if isinstance(values, dict) else frozenset()


def preset_yamls() -> list[Path]:
    """Yaml layers a run may apply besides its model's and dataset's: RecBole's quick-start
    presets (chosen by model type), our protocols (``eval_protocol``) and presets (``preset``)."""
    recbole_quick = _package_root("recbole") / "properties" / "quick_start_config"
    ours = _package_root("recbole_ext") / "properties"
    return [
        *sorted(recbole_quick.glob("*.yaml")),
        *sorted((ours / "protocol").rglob("*.yaml")),
        *sorted((ours / "preset").rglob("*.yaml")),
    ]


@cache
def argument_list_keys() -> frozenset[str]:
    """RecBole's documented arguments (``recbole/utils/argument_list.py``)."""
    from recbole.utils import argument_list

    return frozenset(
        key
        for name, values in vars(argument_list).items()
        if name.endswith("_arguments")
        for key in values
    )


def known_keys(layered: set[str], model_class: type, trainer_class: type | None) -> set[str]:
    """Every key a run of ``model_class`` knows.

    Args:
        layered: the keys of the yaml layers the run applied (``Config.internal_config_dict``).
        model_class: the model's class.
        trainer_class: its trainer's class (``None`` if it cannot be imported).
    """
    known = set(layered) | argument_list_keys()
    for path in preset_yamls():
        known |= yaml_keys(path)
    files = shared_sources() + class_sources(model_class)
    if trainer_class is not None:
        files += class_sources(trainer_class, follow_model_imports=False)
    for path in files:
        known |= keys_read_in(path)
    return known


def closest_keys(key: str, known, n: int = 3) -> list[str]:
    """The known keys nearest to ``key`` in spelling (difflib), best first.

    >>> closest_keys("learning_rat", ["learning_rate", "learner", "epochs"])
    ['learning_rate', 'learner']
    """
    found = difflib.get_close_matches(key, sorted(known), n=n, cutoff=0.6)
    if not found:  # a different case: Max_Item_List_Length
        lower = {k.lower(): k for k in known}
        found = [lower[k] for k in difflib.get_close_matches(key.lower(), sorted(lower), n=n)]
    return found


def unknown_keys_message(unknown: dict[str, str], known, model: str, dataset: str) -> str:
    """The refusal of ``unknown`` (key → where it was given), one line per key."""
    lines = []
    for key, where in unknown.items():
        close = closest_keys(key, known)
        hint = f"did you mean {' or '.join(f'`{k}`' for k in close)}?" if close else "no close key"
        lines.append(f"  `{key}` ({where}): {hint}")
    plural = "s" if len(unknown) > 1 else ""
    return (
        f"unknown config key{plural} for model {model} on dataset {dataset}:\n"
        + "\n".join(lines)
        + f"\nNo yaml of RecBole or recbole-ext (overall, model/{model}.yaml, dataset/"
        f"{dataset}.yaml, quick-start and protocol presets) declares {'them' if plural else 'it'}"
        f" and no code of the run reads {'them' if plural else 'it'}, so the run would ignore "
        f"{'them' if plural else 'it'}. Fix the spelling, or pass --allow_unknown_keys=True "
        f"(allow_unknown_keys: True in a yaml) to accept keys your own code reads."
    )
