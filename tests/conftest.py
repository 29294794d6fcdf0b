import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep every test's cache (toy-world sets, stats, unit images) out of ~/.cache."""
    old = os.environ.get("DISSECT_CACHE")
    os.environ["DISSECT_CACHE"] = str(tmp_path_factory.mktemp("dissect-cache"))
    yield
    if old is None:
        os.environ.pop("DISSECT_CACHE", None)
    else:
        os.environ["DISSECT_CACHE"] = old


@pytest.fixture(scope="session")
def toyworld_small(tmp_path_factory):
    """200 toy-world scenes at 64 px, in Broden format (shared by the tests)."""
    from dissect.data.toyworld_probe import write_toyworld
    return write_toyworld(tmp_path_factory.mktemp("tw") / "toyworld", n=200, seed=7,
                          image_size=64, progress=False)
