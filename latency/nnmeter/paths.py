"""Where nn-Meter keeps its configs and predictor files, read without importing ``nn_meter``.

Where nn-Meter keeps things (read from nn-Meter 2.0's source)
------------------------------------------------------------
* Config: ``~/.nn_meter/config/predictors.yaml`` (a copy of the packaged
  ``nn_meter/configs/predictors.yaml`` made on first use, plus registered custom predictors)
  and ``~/.nn_meter/config/settings.yaml`` (``data_folder``, default ``~/.nn_meter/data``).
  nn-Meter computes these paths with ``os.path.expanduser`` AT IMPORT TIME
  (``nn_meter/predictor/utils.py``, ``nn_meter/utils/config_manager.py``,
  ``nn_meter/utils/nn_meter_cli/registry.py``: module globals ``__user_config_folder__`` and
  ``__default_user_data_folder__``), so changing ``$HOME`` after ``import nn_meter`` has no
  effect. Every call that takes ``home`` therefore patches those module globals for the
  duration of the call (:func:`latency.nnmeter.session.nnmeter_session`, serialised by a lock);
  the CLI registration path instead runs ``nn-meter register`` in a subprocess with ``HOME`` set.
* Built-in predictor files: ``<data_folder>/predictor/<name>/<kernel>.pkl`` for every kernel
  listed in predictors.yaml, plus ``fusion_rules.json``
  (``nn_meter/predictor/nn_meter_predictor.py: load_latency_predictor`` ->
  ``nn_meter/predictor/utils.py: loading_to_local``). When a ``.pkl`` is missing nn-Meter
  downloads a zip from GitHub with no timeout. QuadraNAS NEVER lets that happen: it checks the
  files first (:func:`missing_predictor_files`) and raises ``PredictorUnavailableError``, and
  while nn-Meter code runs its ``download_from_url`` is replaced by a function that raises.
* Custom predictors: a predictors.yaml entry without ``download`` but with
  ``package_location``; loaded by ``loading_customized_predictor`` (plain ``pickle.load`` of every
  ``*.pkl``; nn-Meter then calls ``.predict(list_of_feature_vectors)`` on each).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from latency.nnmeter.errors import EXTRA_HINT, nnmeter_installed

BUILTIN_PREDICTORS: tuple[str, ...] = (
    "cortexA76cpu_tflite21",
    "adreno640gpu_tflite21",
    "adreno630gpu_tflite21",
    "myriadvpu_openvino2019r2",
)
FUSION_RULES_FILE = "fusion_rules.json"


def home_path(home: str | os.PathLike | None) -> Path:
    """``home`` as an absolute path, or the user's home folder when None."""
    return Path(home).expanduser().absolute() if home is not None else Path.home()


def config_folder(home: str | os.PathLike | None = None) -> Path:
    """nn-Meter's user config folder, ``<home>/.nn_meter/config``."""
    return home_path(home) / ".nn_meter" / "config"


def _packaged_predictors_yaml() -> Path | None:
    """nn-Meter's packaged predictors.yaml, found without importing ``nn_meter``."""
    spec = importlib.util.find_spec("nn_meter")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "configs" / "predictors.yaml"
    return path if path.is_file() else None


def read_yaml(path: Path) -> Any:
    """A YAML file's content."""
    import yaml

    with open(path) as fp:
        return yaml.safe_load(fp)


def predictor_entries(home: str | os.PathLike | None = None) -> list[dict]:
    """The predictors nn-Meter knows under ``home``: the user's predictors.yaml (built-ins plus
    registered custom predictors) or, before nn-Meter's first use there, the packaged list."""
    user = config_folder(home) / "predictors.yaml"
    path = user if user.is_file() else _packaged_predictors_yaml()
    if path is None:
        return []
    return list(read_yaml(path) or [])


def predictor_entry(name: str, home: str | os.PathLike | None = None) -> dict | None:
    """The predictors.yaml entry for ``name`` (latest version, like nn-Meter), or None."""
    entries = [e for e in predictor_entries(home) if e.get("name") == name]
    if not entries:
        return None
    from packaging import version

    return max(entries, key=lambda e: version.parse(str(e.get("version", "0"))))


def data_folder(home: str | os.PathLike | None = None) -> Path:
    """nn-Meter's data folder: ``data_folder`` of settings.yaml, default ``<home>/.nn_meter/data``."""
    settings = config_folder(home) / "settings.yaml"
    if settings.is_file():
        folder = (read_yaml(settings) or {}).get("data_folder")
        if folder:
            return Path(folder)
    return home_path(home) / ".nn_meter" / "data"


def predictor_dir(name: str, home: str | os.PathLike | None = None) -> Path:
    """Folder holding predictor ``name``'s ``<kernel>.pkl`` files and ``fusion_rules.json``:
    ``package_location`` for a registered custom predictor, else
    ``<data_folder>/predictor/<name>`` (where nn-Meter puts the built-ins)."""
    entry = predictor_entry(name, home)
    if entry is not None and "download" not in entry and entry.get("package_location"):
        return Path(entry["package_location"])
    return data_folder(home) / "predictor" / name


def missing_predictor_files(name: str, home: str | os.PathLike | None = None) -> list[str]:
    """Files of predictor ``name`` that are not on disk ([] = complete). Unknown name -> [name]."""
    entry = predictor_entry(name, home)
    if entry is None:
        return [name]
    folder = predictor_dir(name, home)
    wanted = [f"{k}.pkl" for k in entry.get("kernel_predictors", [])] + [FUSION_RULES_FILE]
    return [f for f in wanted if not (folder / f).is_file()]


_warned_not_installed: set[str] = set()


def builtin_available(name: str, home: str | os.PathLike | None = None) -> bool:
    """True if ``name`` is a built-in predictor whose files are all present (nothing downloaded)
    and nn-Meter itself is installed (the ``nnmeter`` extra)."""
    if name not in BUILTIN_PREDICTORS or missing_predictor_files(name, home):
        return False
    if not nnmeter_installed():
        if name not in _warned_not_installed:
            _warned_not_installed.add(name)
            logging.getLogger(__name__).warning(
                "nn-Meter predictor %s has its files in %s, but nn-meter is not installed; %s. "
                "Using the next backend of the profile.", name, predictor_dir(name, home), EXTRA_HINT)
        return False
    return True


def predictor_available(name: str, home: str | os.PathLike | None = None) -> bool:
    """True if ``name`` (built-in or registered custom) can be loaded without any download."""
    return not missing_predictor_files(name, home)


def unavailable_message(name: str, home: str | os.PathLike | None) -> str:
    """Why predictor ``name`` cannot be loaded under ``home``, and what to do instead."""
    entry = predictor_entry(name, home)
    if entry is None:
        known = ", ".join(e.get("name", "?") for e in predictor_entries(home))
        return f"no nn-Meter predictor named {name!r} under {config_folder(home)} (known: {known})"
    missing = missing_predictor_files(name, home)
    folder = predictor_dir(name, home)
    text = (
        f"nn-Meter predictor {name!r} is not available: missing {', '.join(missing)} in {folder}. "
        "QuadraNAS never triggers nn-Meter's download."
    )
    if "download" in entry:
        text += (
            f" Get the files from {entry['download']} yourself and unzip them into "
            f"{folder.parent} (note: the built-in pickles were made with scikit-learn 0.23.1 and do "
            "not load with scikit-learn >= 1.3, nn-Meter issue #131), or use the calibrated stand-in."
        )
    return text
