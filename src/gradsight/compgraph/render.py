"""Render DOT text with Graphviz's ``dot`` binary, or write the ``.dot`` file when it is missing."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from gradsight._files import write_bytes, write_text

log = logging.getLogger(__name__)

#: Output formats passed to ``dot -T``.
FORMATS = ("svg", "png", "pdf")
#: How long one ``dot`` call may take (seconds).
TIMEOUT_S = 120

INSTALL_HINT = "install Graphviz (apt-get install graphviz, brew install graphviz or conda install graphviz)"


class GraphvizMissing(RuntimeError):
    """The ``dot`` binary is not on PATH."""


def dot_binary() -> str | None:
    """Path of Graphviz's ``dot`` binary, or None."""
    return shutil.which("dot")


def run_dot(dot_text: str, fmt: str = "svg") -> bytes:
    """``dot -T<fmt>`` on ``dot_text``; raises :class:`GraphvizMissing` without the binary."""
    binary = dot_binary()
    if binary is None:
        raise GraphvizMissing(f"the Graphviz 'dot' program was not found: {INSTALL_HINT}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    proc = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True,
                          timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"dot failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def dot_to_svg(dot_text: str) -> str | None:
    """SVG text of ``dot_text``, or None when Graphviz is not installed."""
    try:
        return run_dot(dot_text, "svg").decode("utf-8")
    except GraphvizMissing:
        return None


def render(dot_text: str, path: str | Path, *, fmt: str | None = None) -> Path:
    """Write ``dot_text`` rendered to ``path``.

    The format comes from ``fmt`` or the suffix of ``path`` (``.svg``, ``.png``,
    ``.pdf``; ``.dot``/``.gv`` writes the DOT text itself). Without the ``dot``
    binary, the DOT text goes to ``path`` with the suffix ``.dot`` and a warning
    says how to render it.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".") or "svg").lower()
    if fmt in ("dot", "gv"):
        return write_text(path, dot_text)
    if fmt not in FORMATS:
        raise ValueError(f"cannot render to .{fmt}: use .svg, .png, .pdf or .dot")
    if dot_binary() is None:
        dot_path = path.with_suffix(".dot")
        write_text(dot_path, dot_text)
        log.warning("Graphviz 'dot' not found; wrote %s instead. Render it with: dot -T%s %s -o %s (%s)",
                    dot_path, fmt, dot_path, path, INSTALL_HINT)
        return dot_path
    return write_bytes(path, run_dot(dot_text, fmt))
