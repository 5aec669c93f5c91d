"""The allocator jobs run on, and giving freed memory back to the operating system, so that a
finished job's RSS goes away.

glibc raises its mmap threshold each time a large block is freed, after which big tensors come
from the heap and stay in the process after a job ends: the pod looks as if it leaked. A trim
after each job hands back what the heap holds free (tcmalloc is asked to release its free
spans instead; elsewhere it is a no-op).

The garbage collector gets the same care. Once the server has loaded torch, TensorFlow, the
weights and run its warm-up, `settle` moves every object alive then into the collector's
permanent generation: a full collection (after each job, and whenever Python decides to run one
in the middle of a job) then walks only what jobs allocate. Measured with both frameworks
loaded: 310 ms per full collection before, under 1 ms after, which is most of what a job through
the service used to cost over a direct backend call.

During a job the opposite is wanted: every iteration allocates and frees the same activations,
and each block that goes back to the kernel comes back as fresh page faults. `tune` keeps blocks
of up to 32 MiB (glibc's ceiling for the threshold) in the heap and keeps the heap's free top
(up to 1 GiB) between iterations, in one arena for all threads (a job's worker thread would
otherwise get an arena whose 64 MiB heaps are unmapped as they empty). The trim after the job
still hands it all back. Measured at 256 px on the 2-core CPU: 207 against 218 ms an iteration
on the main thread, 210 against 216-226 ms on a worker thread. Pinning the threshold low instead
(every block of 1 MiB or more mapped on its own) made jobs about 1.45x slower.

glibc still faults large activations in afresh on every iteration, whatever the settings:
blocks over 32 MiB (a 512 px job's first-block activations are 64 MiB) are always mapped on
their own and unmapped when freed, and a freed block is not reused by the next aligned
allocation of its size (PyTorch aligns every tensor to 64 bytes; glibc 2.36 carves each such
block from the top of the heap instead), so its pages are new each time. tcmalloc
(gperftools) keeps freed spans and hands them out again. The server therefore runs on
tcmalloc where the system has it (`preload`, which starts the program again with the library
preloaded; `--allocator system` keeps glibc): measured on the 2-core AVX-512 CPU, a 512 px job
1.16-1.27x faster an iteration (1308-1337 against 1547-1659 ms, glibc tuned as above) at a
lower peak (1973 against 2105-2161 MiB), a 256 px job about 6 % faster at 1441 against
1556-1571 MiB. `release` then asks tcmalloc to return its free spans; `tune` leaves it alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

Allocator = Literal["tcmalloc", "system"]

# gperftools' tcmalloc without its heap profiler (Debian: libtcmalloc-minimal4).
TCMALLOC = "tcmalloc_minimal"
# Set in the environment of the program `preload` starts again: it tries once, never loops.
_PRELOADED = "STYLETRANSFER_ALLOCATOR_PRELOADED"

_libc = None
_name = ctypes.util.find_library("c")
if _name:
    try:
        _libc = ctypes.CDLL(_name)
        _libc.malloc_trim  # noqa: B018 - present on glibc only
    except (OSError, AttributeError):
        _libc = None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


def _tcmalloc() -> ctypes.CDLL | None:
    """The process's own symbols when tcmalloc is its allocator (preloaded or linked), else None."""
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    return process if hasattr(process, "MallocExtension_ReleaseFreeMemory") else None


def running() -> str:
    """The allocator this process runs on: "tcmalloc", "glibc" or "other"."""
    if _tcmalloc() is not None:
        return "tcmalloc"
    return "glibc" if _libc is not None else "other"


def library(choice: Allocator) -> str | None:
    """The shared library that provides `choice`, as the dynamic loader finds it; None for the
    system's allocator or where the library is not installed."""
    return ctypes.util.find_library(TCMALLOC) if choice == "tcmalloc" else None


def environment(choice: Allocator, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) for a program that should run on `choice`:
    the library added to LD_PRELOAD, or any tcmalloc there taken out for "system"."""
    env = dict(os.environ if base is None else base)
    kept = [entry for entry in env.get("LD_PRELOAD", "").split() if TCMALLOC not in entry]
    found = library(choice)
    if found is not None:
        kept.insert(0, found)
    if kept:
        env["LD_PRELOAD"] = " ".join(kept)
    else:
        env.pop("LD_PRELOAD", None)
    env.pop(_PRELOADED, None)
    return env


def requested(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> Allocator:
    """The allocator a server command line asks for, read before its settings are (so that
    `preload` can run before anything heavy loads): `--allocator NAME` or `--allocator=NAME`,
    else STYLETRANSFER_ALLOCATOR, else tcmalloc. A name other than tcmalloc preloads nothing;
    the settings refuse one that is not an allocator."""
    value = (os.environ if environ is None else environ).get("STYLETRANSFER_ALLOCATOR", "tcmalloc")
    for index, arg in enumerate(argv):
        if arg == "--allocator" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--allocator="):
            value = arg.partition("=")[2]
    return "tcmalloc" if value == "tcmalloc" else "system"


def preload(choice: Allocator) -> None:
    """Make this program run on `choice`: for tcmalloc, when the library is installed and not
    loaded yet, start the program again (same process, same arguments) with it preloaded. Call
    it first thing, before any thread or framework starts; it returns when nothing needs doing
    or the library is missing (the program goes on with glibc; `running` tells)."""
    if choice != "tcmalloc" or running() == "tcmalloc" or os.environ.get(_PRELOADED):
        return
    if library(choice) is None:
        return
    env = environment(choice)
    env[_PRELOADED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)  # noqa: S606 - this program, again


def tune() -> None:
    """Keep freed tensor memory in the heap between iterations (glibc only; see above). Call it
    before the threads that run jobs start."""
    if _libc is None or not hasattr(_libc, "mallopt") or _tcmalloc() is not None:
        return
    _libc.mallopt(_M_ARENA_MAX, 1)
    _libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    _libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)


def settle() -> None:
    """Collect once, then exempt everything alive from later collections (`gc.freeze`)."""
    gc.collect()
    gc.freeze()


def release() -> None:
    """Collect reference cycles (a job's closures and optimizer state form some), then return
    free heap memory to the operating system."""
    gc.collect()
    tcmalloc = _tcmalloc()
    if tcmalloc is not None:
        tcmalloc.MallocExtension_ReleaseFreeMemory()
    elif _libc is not None:
        _libc.malloc_trim(0)


def free_bytes() -> int | None:
    """Bytes the allocator holds free for reuse (resident until released); None where it cannot
    say (glibc before 2.33, other allocators)."""
    tcmalloc = _tcmalloc()
    if tcmalloc is not None:
        total = 0
        for name in (
            "tcmalloc.pageheap_free_bytes",
            "tcmalloc.central_cache_free_bytes",
            "tcmalloc.transfer_cache_free_bytes",
            "tcmalloc.thread_cache_free_bytes",
        ):
            value = ctypes.c_size_t()
            if tcmalloc.MallocExtension_GetNumericProperty(name.encode(), ctypes.byref(value)):
                total += value.value
        return total
    mallinfo2 = getattr(_libc, "mallinfo2", None) if _libc is not None else None
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]
