"""Fetching MNIST-style IDX files with torchvision, the last resort of ``load_dataset``."""

from __future__ import annotations

import os
import socket
from pathlib import Path

CACHE_DIR_ENV = "GRADSIGHT_CACHE_DIR"
_NETWORK_TIMEOUT_S = 30.0


class DownloadFailed(Exception):
    """torchvision is missing or could not fetch the files; the message says why, in one line."""


def default_cache_dir() -> Path:
    """Where downloads go: ``$GRADSIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradsight``,
    else ``~/.cache/gradsight``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "gradsight"


def download_with_torchvision(dataset_class: str, root: Path) -> None:
    """Download ``torchvision.datasets.<dataset_class>`` (e.g. "MNIST") into ``root``.

    torchvision verifies checksums and leaves the uncompressed IDX files in
    ``root/<dataset_class>/raw/``. Raises ``DownloadFailed`` on any failure.
    """
    try:
        import torchvision.datasets
    except ImportError as error:
        raise DownloadFailed(f"torchvision is not importable ({error})") from error

    # torchvision's urlopen has no timeout; without one a firewalled machine can hang for minutes.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_NETWORK_TIMEOUT_S)
    try:
        # train=False: download() fetches all four files, and only the small test split is parsed.
        getattr(torchvision.datasets, dataset_class)(root=str(root), train=False, download=True)
    except Exception as error:  # network, DNS, HTTP, checksum, disk: all mean "not downloaded"
        one_line = " ".join(str(error).split())
        if len(one_line) > 300:
            one_line = one_line[:297] + "..."
        raise DownloadFailed(f"{type(error).__name__}: {one_line}") from error
    finally:
        socket.setdefaulttimeout(previous_timeout)
