"""The plugins section's in-process references: the plain library calls that do a plugin's job,
with nothing of the service around them (issue 19's "fastest way found").

`python -m compute_bench.reference_jobs <name> <input> <output> <repeat> [<width> <height>]`
runs one of them once to warm up (imports, caches: a plugin process pays those once too), then
`repeat` times, and prints one JSON object: per run the CPU (ns, the process's), the wall time
(ns) and the peak RSS growth over the RSS before the run (KiB; stats.start_peak), and
the output's size in bytes. Run in a process of its own, so its memory figures are its own; its
CPU includes what the tools it keeps running (a persistent exiftool) spent meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from compute.deathsignal import preexec
from compute_bench.stats import cpu_ns, peak_kb, start_peak

#: (input, output, (width, height) of the box or output) -> None
Job = Callable[[Path, Path, tuple[int, int]], None]


def thumbnail(source: Path, target: Path, box: tuple[int, int]) -> None:
    """Pillow's draft path: `thumbnail()` asks libjpeg for a reduced decode (2x the box), then
    reduces and resamples, here with LANCZOS as media_thumbnail does (its default, BICUBIC, is
    cheaper and a little softer)."""
    with Image.open(source) as img:
        img.thumbnail(box, Image.Resampling.LANCZOS)
        img.save(target, format="JPEG", quality=90)


def resize(source: Path, target: Path, size: tuple[int, int]) -> None:
    """Pillow's draft path to an output that fits `size`: a reduced decode no smaller than twice
    the output, then LANCZOS."""
    with Image.open(source) as img:
        scale = min(size[0] / img.width, size[1] / img.height)
        out = (round(img.width * scale), round(img.height * scale))
        drafted = img.draft("RGB", (out[0] * 2, out[1] * 2))
        box = drafted[1] if drafted is not None else None
        img.resize(out, Image.Resampling.LANCZOS, box=box).save(target, format="JPEG", quality=90)


def hashes(source: Path, target: Path, _size: tuple[int, int]) -> None:
    """The file's SHA-512, and the four perceptual hashes of its luma decoded at 1/8."""
    import imagehash

    with open(source, "rb") as f:
        digest = hashlib.file_digest(f, "sha512").hexdigest()
    with Image.open(source) as img:
        img.draft("L", (img.width // 8, img.height // 8))
        found = [
            str(imagehash.phash(img)),
            str(imagehash.dhash(img)),
            str(imagehash.average_hash(img)),
            str(imagehash.whash(img)),
        ]
    target.write_text(json.dumps([digest, *found]))


def png(source: Path, target: Path, _size: tuple[int, int]) -> None:
    """A PNG at zlib level 1 (issue 19's fastest Pillow setting), as the picture decoded: RGB."""
    with Image.open(source) as img:
        img.save(target, format="PNG", compress_level=1)


def jpeg(source: Path, target: Path, _size: tuple[int, int]) -> None:
    with Image.open(source) as img:
        img.save(target, format="JPEG", quality=85)


def webp(source: Path, target: Path, _size: tuple[int, int]) -> None:
    with Image.open(source) as img:
        img.save(target, format="WEBP", quality=85)


class _ExifTool:
    """One exiftool -stay_open for the whole run, as a plugin process keeps one."""

    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def ask(cls, args: list[str]) -> bytes:
        if cls.proc is None:
            cls.proc = subprocess.Popen(
                ["exiftool", "-stay_open", "True", "-@", "-"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                # exiftool keeps polling its argument file after end of input: it would outlive
                # us by waiting forever, so it dies with this process, and `close` ends it first.
                preexec_fn=preexec(signal.SIGKILL),
            )
        assert cls.proc.stdin is not None and cls.proc.stdout is not None
        cls.proc.stdin.write("".join(f"{a}\n" for a in [*args, "-execute"]).encode())
        cls.proc.stdin.flush()
        answer = []
        while (line := cls.proc.stdout.readline()) not in (b"{ready}\n", b""):
            answer.append(line)
        return b"".join(answer)

    @classmethod
    def close(cls) -> None:
        if cls.proc is not None:
            assert cls.proc.stdin is not None
            cls.proc.stdin.write(b"-stay_open\nFalse\n")
            cls.proc.stdin.close()
            cls.proc.wait(timeout=10)
            cls.proc = None


def exif_stay_open(source: Path, target: Path, _size: tuple[int, int]) -> None:
    """The file's tags as JSON from an exiftool kept running (`-stay_open`), with the plugin's
    options; its CPU is counted with this process's."""
    target.write_bytes(_ExifTool.ask(["-j", "-n", "--struct", str(source)]))


JOBS: dict[str, Job] = {
    "thumbnail": thumbnail,
    "resize": resize,
    "hashes": hashes,
    "png": png,
    "jpeg": jpeg,
    "webp": webp,
    "exif_stay_open": exif_stay_open,
}


def main(argv: list[str]) -> int:
    name, source, target, repeat = argv[0], Path(argv[1]), Path(argv[2]), int(argv[3])
    size = (int(argv[4]), int(argv[5])) if len(argv) > 5 else (0, 0)
    job = JOBS[name]
    job(source, target, size)  # warm-up
    runs = []
    for _ in range(repeat):
        before = start_peak()
        cpu, wall = cpu_ns(), time.perf_counter_ns()
        job(source, target, size)
        runs.append(
            {
                "cpu_ns": cpu_ns() - cpu,
                "wall_ns": time.perf_counter_ns() - wall,
                "peak_growth_kb": peak_kb() - before,
            }
        )
    _ExifTool.close()
    print(json.dumps({"runs": runs, "output_bytes": target.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
