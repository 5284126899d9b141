"""recbole-ext's configuration: RecBole's ``Config`` with the plugin's yaml layers.

Precedence, lowest first (RecBole's rule, with our layers inserted after RecBole's own):

1. RecBole's internal defaults (``recbole/properties``: overall, model, dataset, quick-start presets);
2. ``recbole_ext/properties/overall.yaml`` then ``llm.yaml`` and ``rerank.yaml``;
3. ``recbole_ext/properties/model/<Model>.yaml``;
4. ``recbole_ext/properties/dataset/<dataset>.yaml``;
5. ``recbole_ext/properties/protocol/<eval_protocol>.yaml`` when ``eval_protocol`` is set;
6. ``recbole_ext/properties/preset/<model>_<name>.yaml`` when the model yaml has a
   ``<model>_preset`` key (ExpCTR's ``expctr_preset: tiny | paper``), then
   ``recbole_ext/properties/preset/<preset>.yaml`` when ``preset`` is set (a training recipe,
   e.g. ``--preset=autodisenseq_authors``);
7. user ``config_file_list`` < ``config_dict`` < ``cmd_args`` (``--key=value`` strings; ``~``
   or ``null`` means None there, as in the yaml files).

Unlike RecBole, command-line overrides are passed in explicitly (``cmd_args``) instead of being read
from ``sys.argv``, so library callers (tests, Ray Tune workers, the benchmark) are never affected by
the arguments of whatever process imported them.

Before any data loads, the user's keys (layer 6) are checked (:mod:`recbole_ext.config_checks`):
a key that looks like a credential is refused (secrets come from the environment, named by
``llm_api_key_env``), and so is a key that no yaml declares and no code of the run reads, naming
the closest known keys, unless ``allow_unknown_keys`` is True; so is a value of the wrong kind
where the packaged default is True/False or a number (``--pretrain_epochs=two``), a negative
number of epochs, a value outside the model's or trainer's ``option_choices`` (with the closest
choice), and a ``pre_model_path`` that is no file.
"""

from __future__ import annotations

from logging import getLogger
from pathlib import Path

import yaml
from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_ext.compat import apply_compatibility
from recbole_ext.config_checks import (
    ConfigError,
    CredentialError,
    UnknownKeyError,
    choice_error,
    count_problem,
    credential_problem,
    known_keys,
    parse_overrides,
    unknown_keys_message,
    value_type_problem,
    yaml_keys,
)
from recbole_ext.config_sections import preset_names
from recbole_ext.data.atomic_files import interaction_files, read_header
from recbole_ext.utils import get_model, get_trainer

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"
RECBOLE_EXAMPLE_DIR = Path(__import__("recbole").__file__).resolve().parent / "dataset_example"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset name with no local atomic files (RecBole would try to download it)."""


class Config(RecBoleConfig):
    """RecBole ``Config`` that knows recbole-ext's models and yaml files.

    Args:
        model: model name (ours or RecBole's) or class.
        dataset: dataset name; ``ml-100k`` resolves offline to the copy in the recbole wheel unless
            ``<data_path>/ml-100k/ml-100k.inter`` exists.
        config_file_list: user yaml files.
        config_dict: user overrides as a dict.
        cmd_args: ``["--key=value", ...]`` overrides with the highest precedence.
    """

    def __init__(
        self,
        model=None,
        dataset=None,
        config_file_list=None,
        config_dict=None,
        cmd_args: list[str] | None = None,
    ):
        self._cmd_args = list(cmd_args or [])
        self._key_sources: dict[str, str] = {}  # user key -> where it was given (last wins)
        super().__init__(model, dataset, config_file_list, config_dict)

    # --- RecBole hooks -------------------------------------------------------------------------
    def compatibility_settings(self):
        apply_compatibility()

    def _load_config_files(self, file_list):
        values = {}
        for file in file_list or []:
            loaded = super()._load_config_files([file])
            self._key_sources.update(dict.fromkeys(loaded, f"config file {file}"))
            values.update(loaded)
        return values

    def _load_variable_config_dict(self, config_dict):
        self._key_sources.update(dict.fromkeys(config_dict or {}, "config_dict"))
        return super()._load_variable_config_dict(config_dict)

    def _load_cmd_line(self):
        cmd_config_dict = parse_overrides(self._cmd_args)
        self._key_sources.update(dict.fromkeys(cmd_config_dict, "command line"))
        # `~` (or null) is how the yaml files and the docs write None; RecBole's eval keeps it as
        # text
        cmd_config_dict = {
            k: "None" if v in ("~", "null") else v for k, v in cmd_config_dict.items()
        }
        return self._convert_config_dict(cmd_config_dict)

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            if "model" not in self.external_config_dict:
                raise KeyError("no model given: pass --model=NAME (ours or any RecBole model)")
            model = self.external_config_dict["model"]
        if isinstance(model, str):
            model_class = get_model(model)
        else:
            model_class, model = model, model.__name__
        if dataset is None:
            if "dataset" not in self.external_config_dict:
                raise KeyError("no dataset given: pass --dataset=NAME (e.g. ml-100k)")
            dataset = self.external_config_dict["dataset"]
        return model, model_class, dataset

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in (
            PROPERTIES_DIR / "overall.yaml",
            PROPERTIES_DIR / "llm.yaml",
            PROPERTIES_DIR / "rerank.yaml",
            PROPERTIES_DIR / "model" / f"{model}.yaml",
            PROPERTIES_DIR / "dataset" / f"{dataset}.yaml",
        ):
            if file.is_file():
                self._update_internal_config_dict(str(file))
        protocol = self.external_config_dict.get(
            "eval_protocol", self.internal_config_dict["eval_protocol"]
        )
        if protocol:
            file = PROPERTIES_DIR / "protocol" / f"{protocol}.yaml"
            if not file.is_file():
                known = sorted(p.stem for p in (PROPERTIES_DIR / "protocol").glob("*.yaml"))
                raise ConfigError(f"eval_protocol={protocol!r} is unknown; choose one of {known}")
            self._update_internal_config_dict(str(file))
        self._load_model_preset(model)
        self._load_preset()

    def _load_model_preset(self, model: str):
        """Layer ``properties/preset/<model>_<name>.yaml`` for the model's own preset key
        ``<model>_preset: <name>`` (the user's value, else the model yaml's)."""
        key, family = f"{model.lower()}_preset", f"{model.lower()}_"
        name = self.external_config_dict.get(key, self.internal_config_dict.get(key))
        if name:
            file = PROPERTIES_DIR / "preset" / f"{family}{name}.yaml"
            if not file.is_file():
                known = preset_names(model.lower())
                raise ConfigError(f"{key}={name!r} is unknown; choose one of {known}")
            self._update_internal_config_dict(str(file))

    def _load_preset(self):
        """Layer ``properties/preset/<preset>.yaml`` (the user's ``preset``, else a yaml's)."""
        preset = self.external_config_dict.get("preset", self.internal_config_dict.get("preset"))
        if preset:
            file = PROPERTIES_DIR / "preset" / f"{preset}.yaml"
            if not file.is_file():
                known = sorted(p.stem for p in (PROPERTIES_DIR / "preset").glob("*.yaml"))
                raise ConfigError(f"preset={preset!r} is unknown; choose one of {known}")
            check_preset_model(file, self.model)
            self._update_internal_config_dict(str(file))
            self.internal_config_dict.pop("preset_models", None)  # the file's, not a run option

    def _get_final_config_dict(self):
        self._check_user_keys()
        final = super()._get_final_config_dict()
        # RecBole 1.2.1 rejects its own defaults for CE-loss sequential models (SASRec, GRU4Rec,
        # BERT4Rec...): overall.yaml samples a training negative, _set_default_parameters then
        # refuses it. CE needs no negatives, so drop them unless the user asked for some.
        if (
            final["MODEL_TYPE"] == ModelType.SEQUENTIAL
            and final.get("loss_type") == "CE"
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            final["train_neg_sample_args"] = None
        return final

    def _check_user_keys(self):
        """Refuse credentials, unknown keys, and values of the wrong kind among the user's
        (:mod:`~recbole_ext.config_checks`).

        Raises:
            CredentialError: naming the key, where it was given and the environment-variable way;
                never the value.
            UnknownKeyError: naming each unknown key, where it was given and the closest known
                keys (unless ``allow_unknown_keys`` is True).
            ConfigError: a value that is not True/False or not a number where the packaged
                default is one (:func:`~recbole_ext.config_checks.value_type_problem`), or a
                negative or fractional number of epochs (``count_problem``), a value outside
                the model's or trainer's ``option_choices``, a ``pre_model_path`` that is no file.
        """
        try:
            trainer_class = get_trainer(self.internal_config_dict["MODEL_TYPE"], self.model)
        except ImportError:  # an optional package (xgboost, lightgbm) missing: fails later
            trainer_class = None
        known = known_keys(set(self.internal_config_dict), self.model_class, trainer_class)
        # a dataset class of one of our models (ExpCTRDataset: ExpCTR's samples for a baseline)
        # reads that model's keys (expctr_max_samples, ...), declared in the model's yaml
        dataset_class = self.external_config_dict.get(
            "dataset_class", self.internal_config_dict.get("dataset_class")
        )
        if dataset_class and dataset_class.endswith("Dataset"):
            owner = PROPERTIES_DIR / "model" / f"{dataset_class.removesuffix('Dataset')}.yaml"
            if owner.is_file():
                known |= yaml_keys(owner)
        for key, where in self._key_sources.items():
            problem = credential_problem(key, self.external_config_dict[key], known)
            if problem:
                raise CredentialError(f"{where}: {problem}")
        allow = self.external_config_dict.get(
            "allow_unknown_keys", self.internal_config_dict.get("allow_unknown_keys", False)
        )
        if not isinstance(allow, bool):
            raise ConfigError("allow_unknown_keys takes True or False")
        unknown = {key: where for key, where in self._key_sources.items() if key not in known}
        if unknown and not allow:
            raise UnknownKeyError(unknown_keys_message(unknown, known, self.model, self.dataset))
        for owner in (self.model_class, trainer_class):  # their fixed choices, before data loads
            for key, (choices, why) in getattr(owner, "option_choices", {}).items():
                if key in self._key_sources:
                    value = self.external_config_dict[key]
                    if value not in choices:
                        problem = choice_error(key, value, choices, why)
                        raise ConfigError(f"{self._key_sources[key]}: {problem}")
        pre_model = self.external_config_dict.get("pre_model_path")
        if pre_model and not Path(pre_model).is_file():
            raise ConfigError(
                f"{self._key_sources['pre_model_path']}: pre_model_path={pre_model!r}: no such "
                f"file (relative paths start at {Path.cwd()}). Give a model saved by an earlier "
                "run (saved/<run>.pth; for AutoDisenSeq, a run with --epochs=0 saves the "
                "pre-trained, searched model)"
            )
        for key, where in self._key_sources.items():
            value = self.external_config_dict[key]
            problem = value_type_problem(
                key, value, self.internal_config_dict.get(key)
            ) or count_problem(key, value)
            if problem:
                raise ConfigError(f"{where}: {problem}")
        if unknown:
            getLogger().warning(
                f"allow_unknown_keys=True: keys no yaml declares and no code reads are kept: "
                f"{sorted(unknown)}"
            )

    def _set_default_parameters(self):
        user_data_path = self.final_config_dict["data_path"]
        super()._set_default_parameters()
        self.final_config_dict["data_path"] = resolve_data_path(
            self.dataset, user_data_path, self.final_config_dict["benchmark_filename"]
        )
        self._check_interaction_columns()
        self._check_context_label()

    def _load_col_chosen(self) -> bool:
        """Whether ``load_col`` was chosen for this dataset (by the user or a dataset yaml, ours or
        RecBole's) rather than left at RecBole's generic ``{inter: [user_id, item_id]}``."""
        if "load_col" in self.external_config_dict:
            return True
        recbole_yaml = Path(RECBOLE_EXAMPLE_DIR).parent / "properties" / "dataset"
        for file in (PROPERTIES_DIR / "dataset", recbole_yaml):
            path = file / f"{self.dataset}.yaml"
            if path.is_file() and "load_col" in (yaml.safe_load(path.read_text()) or {}):
                return True
        return False

    def _check_interaction_columns(self):
        """Columns of the ``.inter`` file(s) against what the model and the split need.

        - ``load_col`` left at RecBole's generic default (which drops every column but user and
          item): the interaction columns the header declares are loaded (timestamp, rating,
          label...), instead of silently ordering by file row or failing with
          "[timestamp] is not exist".
        - a time-ordered split (``eval_args.order: TO``) or a sequential model building its
          histories needs ``TIME_FIELD`` loaded;
        - a sequential model on pre-split files (``benchmark_filename``) needs each history as an
          ``item_id_list`` column: RecBole builds histories only from one ``.inter`` file.

        Raises:
            ValueError: naming the file, the missing column and the fix.
        """
        final = self.final_config_dict
        parts = final["benchmark_filename"]
        files = interaction_files(Path(final["data_path"]), self.dataset, parts)
        header = {
            file: read_header(
                file, final["field_separator"] or "\t", final.get("encoding") or "utf-8"
            )
            for file in files
        }
        declared = {field: kind for fields in header.values() for field, kind in fields.items()}
        load_col = final["load_col"]
        if isinstance(load_col, dict) and not self._load_col_chosen():
            load_col = {**load_col, "inter": list(dict.fromkeys([*load_col["inter"], *declared]))}
            final["load_col"] = load_col
        loaded = set(declared) if load_col is None else set((load_col or {}).get("inter", []))
        sequential = final["MODEL_TYPE"] == ModelType.SEQUENTIAL
        where = files[0] if len(files) == 1 else f"{files[0].parent}/{self.dataset}.*.inter"

        time_field = final["TIME_FIELD"]
        order = (final["eval_args"] or {}).get("order")
        if not parts and (order == "TO" or sequential):
            why = (
                f"{self.model} builds each user's history in time order"
                if sequential
                else "eval_args.order is TO (time-ordered split)"
            )
            if not time_field or time_field not in declared:
                raise ConfigError(
                    f"{why}, but {where} declares no time column TIME_FIELD={time_field!r} (it "
                    f"declares {list(declared)}). Add a '{time_field or 'timestamp'}:float' "
                    f"column, or set --TIME_FIELD=<your time column>"
                    + ("" if sequential else ", or use --eval_args with order RO (random order)")
                )
            if time_field not in loaded:
                raise ConfigError(
                    f"{why}, but load_col.inter {sorted(loaded)} leaves out {time_field!r}, which "
                    f"{where} declares: add {time_field!r} to load_col.inter (or set load_col "
                    f"to ~ to load every column)"
                )
        if sequential and parts:
            list_field = final["ITEM_ID_FIELD"] + final["LIST_SUFFIX"]
            for file, fields in header.items():
                if list_field not in fields:
                    raise ConfigError(
                        f"{self.model} on pre-split files (benchmark_filename={parts}) reads each "
                        f"user's history from a '{list_field}:token_seq' column, but {file} "
                        f"declares only {list(fields)}. RecBole builds histories only from one "
                        f"file: add the column (the earlier item ids, oldest first, space-"
                        f"separated) to every part, or merge the parts into {self.dataset}.inter "
                        f"(with a timestamp column) and drop benchmark_filename so the histories "
                        f"and the leave-one-out split are built for you."
                    )
            if list_field not in loaded:
                raise ConfigError(
                    f"load_col.inter {sorted(loaded)} leaves out {list_field!r}, which "
                    f"{self.model} needs on pre-split files: add it to load_col.inter"
                )

    def _check_context_label(self):
        """Context-aware (CTR) models need a label; RecBole fails late with ``KeyError: 'label'``."""
        final = self.final_config_dict
        load_col = final["load_col"]
        if (
            final["MODEL_TYPE"] in (ModelType.CONTEXT, ModelType.DECISIONTREE)
            and final["threshold"] is None
            and isinstance(load_col, dict)
            and final["LABEL_FIELD"] not in load_col.get("inter", [])
        ):
            raise ConfigError(
                f"{self.model} is a context-aware (CTR) model and needs a 0/1 label, but dataset "
                f"{self.dataset!r} loads no {final['LABEL_FIELD']!r} column and sets no threshold. "
                f"Use --eval_protocol=ctr (label = rating >= 4), or set "
                f"--threshold=\"{{'rating': 4}}\", or add a {final['LABEL_FIELD']}:float column "
                f"to the .inter file and to load_col."
            )


def resolve_data_path(dataset: str, data_path: str, benchmark_filename=None) -> str:
    """Absolute directory holding the dataset's interaction file(s): the user's copy first, then
    recbole's shipped one. The files are ``<dataset>.inter``, or with ``benchmark_filename`` (
    RecBole's pre-split layout) ``<dataset>.<part>.inter`` for every part.

    Absolute, so that processes started elsewhere (Ray trials run in their own folders) read the
    same files.

    >>> resolve_data_path("ml-100k", "/nonexistent").endswith("dataset_example/ml-100k")
    True

    Raises:
        DatasetNotFoundError: naming every expected file.
    """
    local = (Path(data_path) / dataset).resolve()
    for directory in (local, RECBOLE_EXAMPLE_DIR / dataset):
        if all(f.is_file() for f in interaction_files(directory, dataset, benchmark_filename)):
            return str(directory)
    expected = interaction_files(local, dataset, benchmark_filename)
    missing = [str(f) for f in expected if not f.is_file()]
    layout = (
        f"{dataset}.<part>.inter for each part of benchmark_filename={list(benchmark_filename)}"
        if benchmark_filename
        else f"{dataset}.inter"
    )
    raise DatasetNotFoundError(
        f"dataset {dataset!r} has no local atomic files: expected {', '.join(missing)} "
        f"(and optionally {dataset}.item / {dataset}.user beside it, in RecBole's atomic format, "
        f"see https://recbole.io/atomic_files.html). Put the files there or set --data_path=DIR "
        f"so that DIR/{dataset}/ holds {layout}. recbole-ext never downloads datasets; "
        f"the only built-in one is ml-100k."
    )


def check_preset_model(file: Path, model: str) -> None:
    """Refuse a preset written for other models (its ``preset_models`` list; absent: any model).

    A preset is a set of one model's options; applied to another model its keys would be known
    (they are declared in a yaml) yet read by nothing, so the run would silently not be the recipe
    asked for.

    Raises:
        ConfigError: (a ValueError) naming the preset, its models, the model given and the fix.
    """
    declared = yaml.safe_load(file.read_text()) or {}
    models = declared.get("preset_models")
    if models and model not in models:
        keys = ", ".join(k for k in declared if k not in ("preset", "preset_models"))
        raise ConfigError(
            f"preset={file.stem!r} is a recipe for {', '.join(models)} ({file}: preset_models), "
            f"not for model={model!r}: its options ({keys}) would not make {model} that recipe. "
            f"Use --model={models[0]}, or drop --preset and set the options {model} reads."
        )
