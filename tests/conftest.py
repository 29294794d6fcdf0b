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


@pytest.fixture(scope="session")
def tiny_clip_arch(tmp_path_factory):
    """A tiny open_clip model config (random weights only), added with open_clip's own
    ``add_model_config``: ``openclip:dissect-tiny-clip`` with ``--weights none``."""
    open_clip = pytest.importorskip("open_clip")
    import json
    folder = tmp_path_factory.mktemp("openclip_cfg")
    (folder / "dissect-tiny-clip.json").write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    open_clip.add_model_config(folder)
    return "dissect-tiny-clip"


# ------------------------------------------------------------------ devices
# The device-sensitive tests take the ``device`` fixture: they run on the CPU, and on CUDA
# too where there is one (marked ``cuda``: ``pytest -m cuda`` runs those alone). Without a
# GPU the CUDA runs are skipped at no cost; with ``DISSECT_TEST_DEVICE=cuda`` a missing GPU
# fails them instead, so that a GPU check that found none cannot pass silently.
TEST_DEVICE = os.environ.get("DISSECT_TEST_DEVICE", "cpu").strip().lower() or "cpu"


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """``"cpu"`` or ``"cuda"`` (skipped, or failed under ``DISSECT_TEST_DEVICE=cuda``, where
    no CUDA device is available). On CUDA, TF32 is off for the test, so that float32 means
    float32 as on the CPU."""
    import torch
    if TEST_DEVICE not in ("cpu", "cuda"):
        pytest.fail(f"DISSECT_TEST_DEVICE must be cpu or cuda, not {TEST_DEVICE!r}", pytrace=False)
    if request.param == "cpu":
        yield "cpu"
        return
    if not torch.cuda.is_available():
        if TEST_DEVICE == "cuda":
            pytest.fail("DISSECT_TEST_DEVICE=cuda, but torch sees no CUDA device", pytrace=False)
        pytest.skip("no CUDA device (DISSECT_TEST_DEVICE=cuda on a GPU machine runs these)")
    from dissect.inference import float32_exact
    with float32_exact():
        yield "cuda"
