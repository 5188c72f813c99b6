"""Shared helpers of the scripts/bench_*.py benchmarks: machine description, timing, tables, docs/BENCHMARKS.md.

Each benchmark owns one section of docs/BENCHMARKS.md between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
markers and rewrites only that section (under a file lock, atomically), so the scripts never clobber each other.
Tables are always generated here from measured numbers, never typed by hand.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "docs" / "BENCHMARKS.md"
SHARED = REPO.parent / "shared"
DOC_HEADER = """# Benchmarks

Every table below is written by a script in `scripts/` (`bench_generator.py`, `bench_e2e.py`, `bench_memory.py`,
`bench_blend.py`, `bench_train.py`,
`bench_convert.py`, `bench_geometry.py`); re-run a script to refresh its own section (it rewrites only the text between
its markers). Each section names the command, the machine, its load average when the run started and how much CPU
other processes used during the run. Ratios compare numbers measured side by side in the same run.

Other work on the machine slows the timings; each section states how much CPU it took during the run. Generators
are randomly initialised or partly trained files of the real size: speed does not depend on the weight values.

Goals and where to read them:
- bulk `convert` >= 2x the paper's test loop per generated image: "Generator and bulk convert", column "vs reference";
- `process` on d18.mp4 >= 1.0x real time with efficiency >= 0.8: "End to end", first table;
- peak RSS on d6.mp4 / d18.mp4 <= 1.15: "Memory";
- what the faster settings (`--fast`, bf16, detector size and interval) cost in output quality: "Presets";
- `convert --engine ray` >= 0.8 of `--engine local`'s photos/s on one node: "Convert engines";
- the warp costs <= 10% of the generator's time per face: "Geometry", second table;
- blend ms per face and training iterations/s (no goal): "Blend", "Training".
"""


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() where that file is missing)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def total_ram_gib() -> float:
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        return kib / 2**20
    except (OSError, StopIteration):
        return float("nan")


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def package_versions() -> str:
    import cv2
    import onnxruntime
    import torch

    return (f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
            f"OpenCV {cv2.__version__}")


def machine_lines(load_at_start: tuple[float, float, float], note: str = "") -> list[str]:
    """Markdown bullet lines: CPU, cores, RAM, GPU, package versions, load average at start, note."""
    gpu = gpu_name()
    lines = [
        f"- machine: {cpu_model()}, {os.cpu_count()} cores, {total_ram_gib():.0f} GiB RAM, "
        f"{'GPU ' + gpu if gpu else 'no GPU'}",
        f"- software: {package_versions()}",
        f"- load average at start (1/5/15 min): {load_at_start[0]:.2f} / {load_at_start[1]:.2f} / "
        f"{load_at_start[2]:.2f}",
    ]
    return lines + ([f"- note: {note}"] if note else [])


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (user + nice + system + irq), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (benchmark workers, CLI runs)."""
    import resource

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class RunClock:
    """Load average at the start, and how many cores this benchmark and everything else kept busy during it."""

    def __init__(self) -> None:
        self.load = load_average()
        self.started = time.perf_counter()
        self.machine = busy_cpu_seconds()
        self.own = own_cpu_seconds()

    def usage_line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        machine = (busy_cpu_seconds() - self.machine) / elapsed
        own = (own_cpu_seconds() - self.own) / elapsed
        return (f"- CPU use during the run (of {os.cpu_count()} cores): this benchmark {own:.2f}, "
                f"other processes {max(machine - own, 0.0):.2f} (from /proc/stat; other load slows the multi-threaded "
                "pipeline more than the single-threaded isolated stages)")


# ---------------------------------------------------------------- timing


def best_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """The fastest of `repeats` calls after `warmup` untimed ones: the run least disturbed by other processes."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def interleaved_best(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best seconds of each fn over `rounds` rounds that run them in turn, so slow spells hit all of them alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def interleaved_times(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 0) -> dict[str, list[float]]:
    """Seconds of every call of each fn over `rounds` rounds that run them in turn (after `warmup` untimed rounds),
    round by round: index i of every list comes from the same round, for medians and per-round ratios."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------- markdown


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats keep the precision the caller formatted them with (pass strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def replace_section(document: str, name: str, body: str) -> str:
    """document with section `name` replaced by body (appended at the end when the section is new)."""
    start, end = section_markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return document.rstrip() + "\n\n" + block + "\n"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on path + '.lock' (two benchmarks finishing together must not lose a section)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Rewrite section `name` of docs/BENCHMARKS.md (created with its header when missing), atomically."""
    from usgan.files import atomic_write

    with locked(path):
        document = path.read_text(encoding="utf-8") if path.is_file() else DOC_HEADER
        text = replace_section(document, name, body)
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    Path(path.with_name(path.name + ".lock")).unlink(missing_ok=True)


def section(title: str, command: str, clock: RunClock, parts: Sequence[str], note: str = "") -> str:
    """A benchmark section: heading, the command that produced it, the machine and its load, then tables and notes."""
    head = [f"## {title}", "", f"`{command}`", "", *machine_lines(clock.load, note), clock.usage_line(), ""]
    return "\n".join(head) + "\n" + "\n\n".join(part.strip() for part in parts) + "\n"


def command_line() -> str:
    """How this script was run, relative to the repo root (for the section's heading)."""
    import shlex

    script = Path(sys.argv[0]).resolve()
    try:
        script_name = str(script.relative_to(REPO))
    except ValueError:
        script_name = str(script)
    home = str(Path.home())
    return shlex.join([".venv/bin/python", script_name, *sys.argv[1:]]).replace(home, "~")


# ---------------------------------------------------------------- inputs


def shared_clip(name: str) -> Path:
    """../shared/media/video/NAME; a clear exit when the shared data is not there."""
    path = SHARED / "media" / "video" / name
    if not path.is_file():
        raise SystemExit(f"{path}: shared clip missing (benchmarks read ../shared/media/video)")
    return path


def random_generator_file(folder: Path, image_size: int, seed: int = 0) -> Path:
    """A randomly initialised generator of the real (paper) size saved like shipped weights; speed is the same."""
    import torch

    from usgan.checkpoint import WeightsInfo, save_generator
    from usgan.model import Generator

    path = Path(folder) / f"random_g{image_size}.safetensors"
    if not path.is_file():
        torch.manual_seed(seed)
        save_generator(path, Generator(), WeightsInfo(image_size=image_size, dataset="random init (benchmark)"))
    return path


def default_weights(folder: Path) -> Path:
    """The shipped generator, else a random-init one of its size (128²) saved in folder: the speed is the same."""
    shipped = REPO / "weights" / "usgan_tfeid.safetensors"
    return shipped if shipped.is_file() else random_generator_file(folder, 128)


def openblas_threads() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """Get and set numpy's bundled OpenBLAS thread count (numpy has no API for it); None where it is not found."""
    import numpy as np

    found = sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas*.so"))
    library = ctypes.CDLL(str(found[0])) if found else None
    names = ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_")
    if library is None or not all(hasattr(library, name) for name in names):
        return None
    return getattr(library, names[0]), getattr(library, names[1])


@contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """numpy's OpenBLAS on `count` threads inside the block (its threads spin for a core on a busy machine)."""
    access = openblas_threads()
    previous = access[0]() if access else 0
    if access:
        access[1](count)
    try:
        yield
    finally:
        if access:
            access[1](previous)
