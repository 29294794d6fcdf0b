"""What the libraries of prefixed model names share: their optional extras and the Hugging
Face hub's cache.

``timm:``, ``hf:`` and ``openclip:`` names (:mod:`dissect.models.zoo.timm_models`,
:mod:`~dissect.models.zoo.huggingface`, :mod:`~dissect.models.zoo.openclip`) each need one
optional library, imported only when such a name is used (:func:`require`: without it, one
line names the extra to install). Their pretrained weights live on the Hugging Face hub and
are kept in the hub's own cache (``HF_HUB_CACHE``, by default ``$HF_HOME/hub``, i.e.
``~/.cache/huggingface/hub``), where ``huggingface_hub`` puts them: :func:`hf_remote_file` describes
one such file as a :class:`~dissect.download.RemoteFile` whose presence is the cache's answer
and whose download is ``huggingface_hub``'s, so that ``dissect fetch`` gets it and an offline
report (``DISSECT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) names it before any work.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

from dissect.download import RemoteFile
from dissect.errors import DissectError

#: extra -> what ``pip install`` it names (the import package each one provides)
EXTRAS = {"timm": "timm", "hf": "transformers", "clip": "open_clip"}


def require(extra: str, what: str) -> ModuleType:
    """The library of ``extra`` (imported now), or a one-line :class:`DissectError` naming the
    extra to install; ``what``: who needs it ("model timm:resnet50")."""
    package = EXTRAS[extra]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise DissectError(f"{what} needs the {package} package: pip install 'dissect[{extra}]'") from None


def hub_cache_dir() -> Path:
    """The Hugging Face hub's cache folder, as ``huggingface_hub`` finds it (``HF_HUB_CACHE``,
    ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def repo_folder(repo_id: str) -> Path:
    """Where the hub's cache keeps the files of model ``repo_id``."""
    return hub_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def cached_hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """``filename`` of ``repo_id`` in the hub's cache, None when it is not there (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    return Path(found) if isinstance(found, str) else None


def hf_remote_file(repo_id: str, filename: str, what: str, instead: str = "", revision: str | None = None,
             size: int | None = None) -> RemoteFile:
    """``filename`` of hub model ``repo_id`` as a :class:`RemoteFile`: present when the hub's
    cache holds it, downloaded by ``huggingface_hub`` into that cache."""

    def fetch(progress: bool) -> Path:
        from huggingface_hub import hf_hub_download
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=hub_cache_dir()))
        except Exception as exc:   # the hub's errors (offline, not found, gated) in one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DissectError(f"cannot download {filename} of {repo_id} from the Hugging Face hub ({first})") from None

    return RemoteFile(what=what, url=f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}",
                      dest=repo_folder(repo_id) / filename, size=size, instead=instead,
                      present=lambda: cached_hub_file(repo_id, filename, revision) is not None,
                      fetcher=fetch, offline_env="HF_HUB_OFFLINE",
                      where=f"huggingface_hub keeps it in {repo_folder(repo_id)} (set HF_HOME or HF_HUB_CACHE "
                            f"to use another cache; `dissect fetch` or `hf download {repo_id} {filename}` puts it there)")
