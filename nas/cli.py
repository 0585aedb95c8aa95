"""Command-line glue shared by the entry points (``nas.search``, ``nas.retrain``, ``nas.train``, ``nas.evaluate``).

:func:`run_cli` turns the errors a user can fix into one ``error: ...`` line on stderr and an exit
code (2 for bad input or a write the system refused, 1 when training diverged) instead of a traceback.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from nas.checkpoint import CheckpointError
from nas.data import DatasetNotFoundError
from nas.loops import TrainingDiverged, finish_distributed
from search_spaces.arch import ArchError

USAGE_ERRORS = (ValueError, ArchError, DatasetNotFoundError, CheckpointError, FileNotFoundError)


def run_cli(fn: Callable[[], object]) -> int:
    """Run an entry point's work; ``error: ...`` on stderr and exit code 2 (1 if training diverged)."""
    ok = False
    try:
        fn()
        ok = True
    except TrainingDiverged as e:
        print(f"error: training diverged: {e}", file=sys.stderr)
        return 1
    except USAGE_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk: writes are atomic, so nothing is half-written
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}; files already written are intact: fix it and rerun in the same "
              "run folder to resume", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory; lower train.batch_size, dataset.limit or threads", file=sys.stderr)
        return 2
    finally:
        finish_distributed(ok)
    return 0


def hydra_run_dir() -> Path:
    """The run folder Hydra made for this invocation (``hydra.run.dir``)."""
    from hydra.core.hydra_config import HydraConfig
    return Path(HydraConfig.get().runtime.output_dir)


_HYDRA_SPECIAL = re.compile(r"[=,\[\]{}()'\"\s\\:$*?]")  # characters Hydra's override grammar reads


def override_arg(key: str, value: object) -> str:
    """``key=value`` as one shell word that Hydra reads back as that value (a sweep's folder holds ``=`` and
    ``,``, which Hydra would parse: such a value is quoted for Hydra, then the word for the shell)."""
    text = str(value)
    if not _HYDRA_SPECIAL.search(text):
        return f"{key}={text}"
    if not re.search(r"['\"$`\\!]", text):
        return f"\"{key}='{text}'\""  # e.g. "arch='outputs/multirun/T/latency=25ms,seed=1/arch.json'"
    return shlex.quote(f"{key}='{text}'" if "'" not in text else f'{key}="{text}"')

