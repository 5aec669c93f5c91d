"""The allocator the server runs jobs on (`service.memory`): glibc's settings, tcmalloc preloaded,
and memory handed back after a job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import toolchain

from service import memory

ROOT = Path(__file__).resolve().parents[2]
HOW = "scripts/install-system-deps.sh installs it (Debian: libtcmalloc-minimal4)"

# A worker thread allocates and frees blocks of the given sizes in MiB (a 256 px job's activations
# are 8-24 MiB, a 512 px job's first block 64 MiB), ten times over after one warm-up round, and
# reports the page faults those rounds took. numpy's huge pages are turned off (PyTorch asks for
# none), so every 4 KiB page that comes fresh from the kernel counts.
PROGRAM = """
import resource, sys, threading
import numpy as np
from numpy._core import multiarray
from service import memory
multiarray._set_madvise_hugepage(False)  # as PyTorch's tensors: 4 KiB pages
if sys.argv[1] == "tuned":
    memory.tune()
sizes = [int(s) for s in sys.argv[2].split(",")]
faults = []
def work():
    blocks = []
    for size in sizes:
        blocks.append(np.ones(size << 18, dtype=np.float32))
    blocks.clear()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        for size in sizes:
            blocks.append(np.ones(size << 18, dtype=np.float32))
        blocks.clear()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(faults[0])
"""
SMALL = "16,24,8,16,24"


def _faults(mode: str, sizes: str = SMALL, allocator: memory.Allocator = "system") -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode, sizes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=memory.environment(allocator),
    )
    return int(done.stdout.strip())


def test_tuned_allocator_reuses_freed_activations_without_page_faults() -> None:
    """Untuned, glibc gives such blocks back to the kernel as they are freed and every round
    faults them in again (about 12,000 faults measured); tuned, the heap keeps them."""
    untuned, tuned = _faults("default"), _faults("tuned")
    assert untuned > 2000
    assert tuned < untuned / 20


def test_tcmalloc_reuses_what_glibc_faults_in_afresh() -> None:
    """glibc maps blocks over 32 MiB on their own, so a 512 px job's 64 MiB activations fault in
    on every round however it is tuned (16,384 faults a block with 4 KiB pages); tcmalloc, which
    the server preloads, keeps them."""
    toolchain.require_library(memory.TCMALLOC, HOW)
    sizes = "64,16,64"
    tuned, tcmalloc = _faults("tuned", sizes), _faults("tuned", sizes, "tcmalloc")
    print(f"faults over ten rounds: glibc tuned {tuned}, tcmalloc {tcmalloc}")
    assert tuned > 10 * 2 * 16_384 / 2
    assert tcmalloc < tuned / 20


RUNNING = "from service import memory; memory.preload(sys.argv[1]); print(memory.running())"


@pytest.mark.parametrize(("choice", "expected"), [("tcmalloc", "tcmalloc"), ("system", "glibc")])
def test_preload_starts_the_program_again_on_the_chosen_allocator(choice: str, expected: str) -> None:
    toolchain.require_library(memory.TCMALLOC, HOW)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; " + RUNNING, choice],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=memory.environment("system"),
    )
    assert done.stdout.split() == [expected]


def test_preload_without_the_library_goes_on_with_glibc(tmp_path: Path) -> None:
    """A library that will not load must not make the program start over and over: it tries once
    (the loader says why on stderr) and runs on glibc."""
    env = memory.environment("system")
    env["LD_PRELOAD"] = str(tmp_path / "missing.so")
    program = (
        "import sys; from service import memory; memory.library = lambda c: str(sys.argv[2]); "
        + RUNNING.split("; ", 1)[1]
    )
    done = subprocess.run(
        [sys.executable, "-c", program, "tcmalloc", str(tmp_path / "libtcmalloc_minimal.so.4")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["glibc"]


def test_environment_adds_or_removes_only_tcmalloc() -> None:
    other = "/opt/lib/libother.so"
    found = memory.library("tcmalloc")
    chosen = memory.environment("tcmalloc", {"LD_PRELOAD": other, "PATH": "/bin"})
    assert chosen["PATH"] == "/bin"
    assert chosen["LD_PRELOAD"].split() == ([found] if found else []) + [other]
    plain = memory.environment("system", {"LD_PRELOAD": f"/usr/lib/libtcmalloc_minimal.so.4 {other}"})
    assert plain["LD_PRELOAD"] == other
    assert "LD_PRELOAD" not in memory.environment("system", {"LD_PRELOAD": "libtcmalloc_minimal.so.4"})


# Allocates 512 MiB in 64 MiB blocks, frees them, and reports the resident MiB and what the
# allocator says it holds free, before and after `memory.release`.
RELEASE = """
import numpy as np
from pathlib import Path
from service import memory
def rss():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS"))
    return int(line.split()[1]) / 1024
blocks = [np.ones(16 << 20, dtype=np.float32) for _ in range(8)]
blocks.clear()
held, free = rss(), memory.free_bytes() / 2**20
memory.release()
print(memory.running(), held, free, rss())
"""


def test_release_hands_tcmallocs_free_memory_back() -> None:
    """tcmalloc keeps freed blocks resident (what makes it fast) until the job's end, when the
    server's `release` asks it to return them."""
    toolchain.require_library(memory.TCMALLOC, HOW)
    done = subprocess.run(
        [sys.executable, "-c", RELEASE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=memory.environment("tcmalloc"),
    )
    name, held, free, after = done.stdout.split()
    assert name == "tcmalloc"
    assert float(free) > 400
    assert float(held) - float(after) > 400


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, "tcmalloc"),
        (["--port", "0"], {"STYLETRANSFER_ALLOCATOR": "system"}, "system"),
        (["--allocator", "system"], {}, "system"),
        (["--allocator=system", "--port", "0"], {}, "system"),
        (["--allocator", "tcmalloc"], {"STYLETRANSFER_ALLOCATOR": "system"}, "tcmalloc"),  # a flag wins
        (["--allocator", "jemalloc"], {}, "system"),  # preloads nothing; the settings refuse it
    ],
)
def test_requested_reads_the_flag_then_the_environment(
    argv: list[str], environ: dict[str, str], expected: str
) -> None:
    assert memory.requested(argv, environ) == expected
