"""The raw sums of many CPU gradients in one call of a small C kernel (``_native.c``).

It reads each gradient once with independent vector accumulators and takes every tensor
of a step in one call (its threads split the elements), so its cost is close to one
``torch._foreach_norm`` pass over the same memory: on a 1024 x 1024 float32 gradient a
kernel compiled through ``torch.compile`` took about 1.6x the norm's time, plus 60-90 us of
guards and wrappers per tensor per call. It needs no PyTorch headers: the machine's C
compiler builds it in 0.3-0.8 s, at the first recorded step, once per machine and CPU
model (the shared library is kept in :func:`cache_dir`; later processes load it in
milliseconds), and it has no graphs, guards or recompilation limits.

It takes dense float32, float64, bfloat16 and float16 CPU tensors whose rows are blocks of
memory, and their weights where they are alike (:func:`takes`); anything else goes the
other ways. The same library also gives the sums of Adam's state (:func:`adam_sums`) and
the exponent-field counts of the log2 histograms (:func:`exponent_counts`), each one pass
over all the tensors of a step. No C compiler, a failed build or a library that does not load: :func:`library`
is None (:func:`error` says why) and the other ways give the same sums.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: Columns of the C kernel's output, per tensor (see ``_native.c``).
FIELDS = ("sumsq", "sumabs", "maxabs", "zeros", "dead_rows", "w_sumsq")

#: The dtypes the kernel reads, and their codes in ``_native.c``.
DTYPES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_PLAIN = (Tensor, torch.nn.Parameter)

#: Each thread of a call reads at least this many elements (starting a thread costs about as
#: much as reading this many); fewer in all use one thread.
THREAD_MIN_NUMEL = 1 << 17

_SOURCE = Path(__file__).with_name("_native.c")

#: A build that takes longer than this (seconds) is said once, at WARNING: the step it stalled
#: was slow for a reason the user could not guess.
SLOW_BUILD_S = 2.0


def rows_in_blocks(t: Tensor) -> bool:
    """Whether each row of ``t`` (slice along dim 0) is one block of memory, in the order of
    the rows: contiguous, or channels-last (its elements in another order within each row,
    which no sum or maximum minds)."""
    if t.is_contiguous():
        return True
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last)
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def kind_taken(kind: type, dtype: torch.dtype, layout: torch.layout, device: torch.device, numel: int) -> bool:
    """What :func:`takes` asks of a tensor but where its rows are: a plain tensor or parameter
    (a subclass, DTensor or a wrapper, may not hold its data where ``data_ptr`` says), strided,
    on the CPU, of a dtype the kernel reads, not empty."""
    return (kind in _PLAIN and layout == torch.strided and device.type == "cpu" and dtype in DTYPES
            and numel > 0)


def takes(g: Tensor, w: Tensor | None = None) -> bool:
    """Whether the C kernel can read this gradient (and its weight, unless None): a dense CPU
    tensor of float32, float64, bfloat16 or float16 whose rows are blocks of memory (:func:`rows_in_blocks`);
    the weight of the same dtype and shape, and as dense."""
    if not kind_taken(type(g), g.dtype, g.layout, g.device, g.numel()):
        return False
    if not rows_in_blocks(g):  # (a lazily negated tensor is read as stored: every sum here ignores signs)
        return False
    if w is None:
        return True
    return (type(w) in _PLAIN and w.device.type == "cpu" and w.layout == torch.strided and w.dtype == g.dtype
            and w.shape == g.shape and rows_in_blocks(w))


def cache_dir() -> Path:
    """Where the built library is kept: ``$GRADSIGHT_CACHE_DIR``, else ``$XDG_CACHE_HOME/gradsight``,
    else ``~/.cache/gradsight``."""
    root = os.environ.get("GRADSIGHT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gradsight"


def _cpu_key() -> str:
    """What the library built with ``-march=native`` is specific to: the machine and its CPU's features."""
    flags = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    flags += line
    except OSError:
        pass
    return f"{platform.system()}-{platform.machine()}-{flags}"


def _compiler() -> str | None:
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split() or ["cc"]  # ("gcc -pthread")
    for name in (cc[0], "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


class _Library:
    """The loaded kernel, built on first use (on the caller's thread: 0.3-0.8 s once per
    machine; a file lock is not needed, the library is written under a temporary name and
    renamed into place)."""

    def __init__(self) -> None:
        self._lib: ctypes.CDLL | None = None
        self._tried = False
        self._lock = threading.Lock()
        self.error: str | None = None

    def get(self) -> ctypes.CDLL | None:
        if self._tried:
            return self._lib
        with self._lock:
            if not self._tried:
                try:
                    self._lib = self._load()
                except Exception as exc:  # noqa: BLE001 - any failure: the other ways give the same sums
                    self.error = str(exc)
                    log.info("gradsight: the native statistics kernel is unavailable (%s); using the other kernels",
                             exc)
                self._tried = True
        return self._lib

    def _load(self) -> ctypes.CDLL:
        if os.environ.get("GRADSIGHT_NATIVE", "1") == "0":
            raise RuntimeError("GRADSIGHT_NATIVE=0")
        source = _SOURCE.read_bytes()
        runtime = openmp_runtime()
        identity = source + _cpu_key().encode() + sys.version.encode() + str(runtime).encode()
        key = hashlib.sha256(identity).hexdigest()[:20]
        suffix = ".dll" if sys.platform == "win32" else ".so"
        name = f"native-{key}{suffix}"
        places = [cache_dir() / name, _fallback_dir() / name]  # (the second where the first is not writable)
        path = next((p for p in places if p.exists()), None)
        if path is None:
            start = time.perf_counter()
            try:
                path = places[0]
                _build(path, runtime)
            except OSError:
                path = places[1]
                _build(path, runtime)
            took = time.perf_counter() - start
            if took > SLOW_BUILD_S:  # (0.3-0.8 s usually: nothing said)
                log.warning("gradsight: building the statistics kernel took %.1f s "
                            "(once per machine: it is kept in %s)", took, path.parent)
        lib = ctypes.CDLL(str(path))
        fn = lib.gs_raw_sums
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
        fn = lib.gs_exponent_counts
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
        fn = lib.gs_adam_sums
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
        lib.gs_openmp.restype = ctypes.c_int
        lib.gs_openmp.argtypes = []
        return lib


def _fallback_dir() -> Path:
    """Where the library is built when :func:`cache_dir` cannot be written: a folder of this
    user's in the temporary directory."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"gradsight-{user}"


def openmp_runtime() -> Path | None:
    """The OpenMP runtime PyTorch loaded into this process (libgomp, LLVM's libomp or Intel's
    libiomp5), which the kernel's threads are taken from; None where none is found (then they
    are POSIX threads of its own). Linux only (read from ``/proc/self/maps``)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[-1].strip() for line in f if ".so" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if re.fullmatch(r"lib(gomp|omp|iomp5)([-.][^/]*)?\.so(\.[0-9]+)*", Path(p).name))
    return Path(found[0]) if found else None


def _build(path: Path, runtime: Path | None) -> None:
    """Compile :data:`_SOURCE` into ``path``: with OpenMP where ``runtime`` (the one PyTorch
    loaded) is given and the compiler takes ``-fopenmp``, linked against that very file (so
    that the process has one runtime, one pool of threads), else with POSIX threads; for the
    native instruction set where the compiler knows it, else the default one."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    arch = ["-mcpu=native"] if platform.machine() in ("arm64", "aarch64") and sys.platform == "darwin" else [
        "-march=native"]
    tries = [(arch, runtime), (arch, None), ([], runtime), ([], None)]
    for flags, omp in dict.fromkeys((tuple(f), o) for f, o in tries if runtime is not None or o is None):
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            out, obj = Path(tmp) / path.name, Path(tmp) / "native.o"
            common = [cc, "-O3", "-fno-math-errno", *flags, "-fPIC", "-pthread"]
            if omp is None:
                steps = [[*common, "-shared", str(_SOURCE), "-o", str(out), "-lm"]]
            else:  # (compiled with -fopenmp, linked without it: against PyTorch's runtime, not the compiler's)
                steps = [[*common, "-fopenmp", "-c", str(_SOURCE), "-o", str(obj)],
                         [cc, "-shared", "-pthread", str(obj), str(omp), "-o", str(out), "-lm"]]
            for cmd in steps:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
                if done.returncode != 0:
                    errors.append(done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"])
                    break
            else:
                if omp is not None:  # (a runtime that lacks what the compiler's code calls: the next try)
                    try:
                        ctypes.CDLL(str(out))
                    except OSError as exc:
                        errors.append([str(exc)])
                        continue
                os.replace(out, path)
                return
    raise RuntimeError(f"{cc} failed: {errors[-1][0]}")


def uses_openmp() -> bool:
    """Whether the kernel's threads are the OpenMP runtime's that PyTorch uses (False without the kernel)."""
    lib = library()
    return bool(lib is not None and lib.gs_openmp())


_LIBRARY = _Library()


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it if need be; None where it cannot be had."""
    return _LIBRARY.get()


def error() -> str | None:
    """Why :func:`library` is None (None before it was looked for, or where it loaded)."""
    return _LIBRARY.error


def _pointers(tensors: Sequence[Tensor]) -> np.ndarray:
    return np.fromiter(map(Tensor.data_ptr, tensors), dtype=np.uintp, count=len(tensors))


def _numels(tensors: Sequence[Tensor]) -> np.ndarray:
    return np.fromiter(map(Tensor.numel, tensors), dtype=np.int64, count=len(tensors))


def _codes(tensors: Sequence[Tensor]) -> np.ndarray:
    return np.fromiter((DTYPES[t.dtype] for t in tensors), dtype=np.int32, count=len(tensors))


def _run(name: str, fields: int, numel: np.ndarray, *arrays: np.ndarray | None) -> np.ndarray:
    """``[len(numel), fields]`` float64 from the kernel's ``name(*arrays, n, threads, out)``
    (``numel``: the tensors' element counts, which set the threads; an array None is passed as
    NULL). Raises RuntimeError where :func:`library` is None."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native statistics kernel is unavailable: {_LIBRARY.error}")
    n = len(numel)
    out = np.empty((n, fields), dtype=np.float64)
    if n == 0:
        return out
    threads = max(1, min(torch.get_num_threads(), int(numel.sum()) // max(THREAD_MIN_NUMEL, 1), 64))
    status = getattr(lib, name)(*(None if a is None else a.ctypes.data for a in arrays), n, threads, out.ctypes.data)
    if status != 0:
        raise MemoryError("the native statistics kernel could not allocate its threads' sums")
    return out


def raw_sums(grads: Sequence[Tensor], weights: Sequence[Tensor] | None, numel: np.ndarray | None = None,
             rows: np.ndarray | None = None, dtypes: np.ndarray | None = None) -> np.ndarray:
    """``[len(grads), 6]`` float64 sums, columns :data:`FIELDS`, of tensors that :func:`takes`
    (``weights`` None: ``w_sumsq`` is 0). ``numel``, ``rows`` (``shape[0]``, 0 for fewer than two
    dims) and ``dtypes`` (:data:`DTYPES` codes) may be given, as int64, int64 and int32 arrays,
    when the caller knows them. Raises RuntimeError where :func:`library` is None."""
    if numel is None:
        numel = _numels(grads)
    if rows is None:
        rows = np.fromiter((g.shape[0] if g.dim() >= 2 else 0 for g in grads), dtype=np.int64, count=len(grads))
    return _run("gs_raw_sums", len(FIELDS), numel, _pointers(grads), None if weights is None else _pointers(weights),
                rows, numel, _codes(grads) if dtypes is None else dtypes)


#: Columns of :func:`adam_sums` (see ``gs_adam_sums`` in ``_native.c``).
ADAM_FIELDS = ("v_sum", "eps_count", "u_sq", "active")


def adam_takes(m: Tensor, v: Tensor) -> bool:
    """Whether the C kernel can read this pair of Adam states: both dense CPU tensors of one
    dtype it reads, laid out alike (their elements pair up in memory order)."""
    return (type(m) in _PLAIN and type(v) in _PLAIN and m.device.type == "cpu" and v.device.type == "cpu"
            and m.layout == torch.strided and v.layout == torch.strided and m.dtype == v.dtype
            and m.dtype in DTYPES and m.shape == v.shape and m.numel() > 0 and m.stride() == v.stride()
            and rows_in_blocks(m))


def adam_sums(ms: Sequence[Tensor], vs: Sequence[Tensor], coefficients: np.ndarray) -> np.ndarray:
    """``[len(ms), 4]`` float64 sums, columns :data:`ADAM_FIELDS`, of pairs of Adam states that
    :func:`adam_takes` (``coefficients``: ``[len(ms), 3]`` float64 ``bc1, bc2, eps``: the bias
    corrections of each one's step and its ``eps``). Raises RuntimeError where :func:`library` is None."""
    numel = _numels(ms)
    return _run("gs_adam_sums", len(ADAM_FIELDS), numel, _pointers(ms), _pointers(vs), numel, _codes(ms),
                np.ascontiguousarray(coefficients, dtype=np.float64))


#: The dtypes :func:`exponent_counts` reads (as float32).
HIST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def exponent_counts(tensors: Sequence[Tensor], scale: float | None, tie_mask: int, tie_pattern: int) -> np.ndarray:
    """``[len(tensors), 513]`` float64 counts of dense CPU float32/bfloat16/float16 tensors
    (any dense layout: counts ignore the order), each element read as float32 and multiplied
    by ``scale`` (in float32) first: per exponent field of the float32 bits (either sign), then
    per field those whose ``bits & tie_mask == tie_pattern``, then the zeros. Raises
    RuntimeError where :func:`library` is None."""
    numel = _numels(tensors)
    c = np.array([1.0 if scale is None else float(np.float32(scale)), float(tie_mask), float(tie_pattern)])
    return _run("gs_exponent_counts", 513, numel, _pointers(tensors), numel, _codes(tensors), c)
