import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Latency tables go to a per-session cache, never the user's."""
    old = os.environ.get("QUADRANAS_CACHE")
    os.environ["QUADRANAS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("QUADRANAS_CACHE", None)
    else:
        os.environ["QUADRANAS_CACHE"] = old
