"""The one exception the dataset layer raises for anything the user can fix."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset name is unknown, or its files are missing, truncated or corrupt.

    The message is meant to be shown to the user as is; the CLI turns it into exit status 2.
    """
