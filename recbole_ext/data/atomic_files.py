"""RecBole atomic files as RecBole reads them: which files a dataset needs and what their headers
declare. Pure functions (no recbole-ext imports), used by ``Config`` to check a dataset before any
data loads.

Layout (https://recbole.io/docs/user_guide/data/atomic_files.html): ``<dir>/<name>.inter`` with a
header of ``field:type`` entries (``user_id:token  item_id:token  timestamp:float``), or, with
``benchmark_filename: [part1, part2, ...]``, the pre-split ``<dir>/<name>.<part>.inter`` files.
"""

from __future__ import annotations

from pathlib import Path

from recbole_ext.config_checks import ConfigError


def interaction_files(directory: Path, dataset: str, benchmark_filename=None) -> list[Path]:
    """The ``.inter`` file(s) RecBole loads for ``dataset`` from ``directory``.

    >>> [p.name for p in interaction_files(Path("d"), "shop", ["train", "test"])]
    ['shop.train.inter', 'shop.test.inter']
    >>> [p.name for p in interaction_files(Path("d"), "shop")]
    ['shop.inter']
    """
    if benchmark_filename:
        return [directory / f"{dataset}.{part}.inter" for part in benchmark_filename]
    return [directory / f"{dataset}.inter"]


def parse_header(line: str, separator: str = "\t") -> dict[str, str]:
    """``{field: type}`` of an atomic file's header line, in file order.

    >>> parse_header("user_id:token\\titem_id:token\\ttimestamp:float\\n")
    {'user_id': 'token', 'item_id': 'token', 'timestamp': 'float'}

    Raises:
        ValueError: an entry without ``:type`` (RecBole needs the type of every column).
    """
    fields = {}
    for entry in line.rstrip("\r\n").split(separator):
        name, colon, kind = entry.strip().partition(":")
        if not colon or not name or not kind:
            raise ValueError(
                f"header entry {entry!r} is not 'name:type' (type: token, token_seq, float, "
                f"float_seq); the header line is {line.strip()!r}"
            )
        fields[name] = kind
    return fields


def read_header(path: Path, separator: str = "\t", encoding: str = "utf-8") -> dict[str, str]:
    """``{field: type}`` declared by the first line of the atomic file ``path`` (read as RecBole
    does: ``field_separator``, ``encoding``).

    Raises:
        ConfigError: (a ValueError) naming the file, when its header is malformed.
    """
    with open(path, encoding=encoding) as handle:
        line = handle.readline()
    try:
        return parse_header(line, separator)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
