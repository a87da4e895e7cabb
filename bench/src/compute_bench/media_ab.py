"""Interleaved A/B of two media plugins' algorithms against their reference, CPU per job.

    uv run python -m compute_bench.media_ab exif [--rounds 8 --per-round 100]
    uv run python -m compute_bench.media_ab hls [--rounds 2] [--video testsrc2|natural]

exif: our `read_tags` (our process + its exiftool's CPU, from /proc) against a bare
`exiftool -stay_open` given the same arguments (the same sum), and a one-shot `exiftool`, on a
4000x3000 JPEG (q92, EXIF); rounds alternate, the median round is reported.

hls: `make_hls` (ffprobe + one ffmpeg: the default ladder, 720p@3500k + 480p@1500k, and the
original copied) against the same with the original copied by a second ffmpeg (the old way), and
the faster x264 presets, with each rendition's SSIM against the source scaled the same way
(ffmpeg's ssim filter), on a 10 s 1080p H.264 + AAC video: ffmpeg's testsrc2, or "natural"
(scikit-image's astronaut, panned and zoomed, with grain). CPU is that of the child processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from compute import deathsignal
from compute.plugins.exif import algorithm as exif
from compute.plugins.hls_streaming.algorithm import X264_PRESETS, make_hls
from compute.plugins.hls_streaming.ladder import Variant, parse_variants
from compute.plugins.video_probe import Source


def _own_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def _children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photo(folder: Path) -> Path:
    """A 4000x3000 JPEG at q92 with EXIF (camera, date, GPS)."""
    import numpy as np
    from PIL import Image

    path = folder / "photo-12mp.jpg"
    if not path.exists():
        rng = np.random.default_rng(1)
        small = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
        tags = Image.Exif()
        tags[0x010F], tags[0x0110], tags[0x0132] = "Canon", "EOS 5D", "2024:01:02 03:04:05"
        gps = tags.get_ifd(0x8825)
        gps[1], gps[2] = "S", (33.0, 51.0, 36.0)
        small.resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=92, exif=tags)
    return path


def video(folder: Path, kind: str) -> Path:
    """10 s of 1080p30 H.264 + AAC."""
    path = folder / f"video-1080p-{kind}.mp4"
    if path.exists():
        return path
    if kind == "testsrc2":
        source = ["-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30"]
        picture = ["-map", "0:v"]
    else:
        from PIL import Image
        from skimage import data

        still = folder / "astronaut.png"
        Image.fromarray(data.astronaut()).save(still)  # type: ignore[no-untyped-call]
        source = ["-loop", "1", "-i", str(still)]
        pan = (
            "[0:v]scale=3840:2160,zoompan=z='min(zoom+0.002,1.6)':x='iw/2-(iw/zoom/2)+40*sin(on/20)'"
            ":y='ih/2-(ih/zoom/2)':d=300:s=1920x1080:fps=30,noise=alls=3:allf=t+u,format=yuv420p[v]"
        )
        picture = ["-filter_complex", pan, "-map", "[v]"]
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    encode = ["-t", "10", "-c:v", "libx264", "-preset", "fast", "-crf", "20", "-pix_fmt", "yuv420p"]
    audio = ["-map", "1:a", "-c:a", "aac", "-b:a", "128k"]
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *source, *tone, *picture, *encode, *audio, str(path)], check=True
    )
    return path


def exif_ab(folder: Path, rounds: int, per_round: int) -> None:
    path = photo(folder)
    bare = subprocess.Popen(
        ["exiftool", "-stay_open", "True", "-@", "-", "-common_args", *exif.COMMON_ARGS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        # At the end of its input exiftool -stay_open waits for more, forever: it must die with us.
        preexec_fn=deathsignal.preexec(signal.SIGKILL),
    )
    assert bare.stdin is not None and bare.stdout is not None

    def ask(n: int) -> None:
        assert bare.stdin is not None and bare.stdout is not None
        bare.stdin.write(f"{path}\n-execute{n}\n".encode())
        bare.stdin.flush()
        answer, mark = b"", f"{{ready{n}}}\n".encode()
        while not answer.endswith(mark):
            answer += os.read(bare.stdout.fileno(), 65536)

    async def ours(n: int) -> None:
        for _ in range(n):
            await exif.read_tags(path, [folder])

    loop = asyncio.new_event_loop()
    loop.run_until_complete(ours(1))
    ask(0)
    pid = exif.shared_exiftool().pid
    assert pid is not None
    figures: dict[str, list[float]] = {"one-shot exiftool": [], "exiftool -stay_open": [], "ours": []}
    count = 1
    for _ in range(rounds):
        own, tool = _own_cpu(), _process_cpu(bare.pid)
        for _ in range(per_round):
            ask(count)
            count += 1
        figures["exiftool -stay_open"].append((_own_cpu() - own + _process_cpu(bare.pid) - tool) / per_round)
        own, tool = _own_cpu(), _process_cpu(pid)
        loop.run_until_complete(ours(per_round))
        figures["ours"].append((_own_cpu() - own + _process_cpu(pid) - tool) / per_round)
        own, kids = _own_cpu(), _children_cpu()
        shots = max(1, per_round // 20)
        for _ in range(shots):
            subprocess.run(["exiftool", *exif.COMMON_ARGS, str(path)], capture_output=True, check=True)
        figures["one-shot exiftool"].append((_own_cpu() - own + _children_cpu() - kids) / shots)
    bare.kill()
    bare.wait()
    loop.close()
    reference = statistics.median(figures["exiftool -stay_open"])
    for name, values in figures.items():
        middle = statistics.median(values)
        rounds_ms = ", ".join(f"{v * 1000:.2f}" for v in values)
        ratio = middle / reference
        print(f"exif {name:20s} {middle * 1000:7.2f} ms/file  ratio {ratio:5.2f}  (rounds: {rounds_ms})")


def hls_ab(folder: Path, rounds: int, kind: str) -> None:
    source = video(folder, kind)
    ladder = parse_variants(None)
    configs = [(X264_PRESETS[0], True), *((preset, False) for preset in X264_PRESETS)]
    cpu: dict[str, list[float]] = {}
    quality: dict[str, str] = {}
    for round_number in range(rounds):
        for preset, two in configs:
            name = f"{preset}{', original by a 2nd ffmpeg' if two else ''}"
            out = Path(tempfile.mkdtemp(dir=folder))
            kids, start = _children_cpu(), time.monotonic()
            asyncio.run(_encode(source, out, ladder, preset, two))
            cpu.setdefault(name, []).append(_children_cpu() - kids)
            if round_number == 0 and not two:
                quality[name] = ", ".join(
                    f"{v.resolution}p SSIM {_ssim(out / f'adaptive-{v.name}.m3u8', source, v.resolution):.4f}"
                    for v in ladder
                )
            print(f"  ({name}: {cpu[name][-1]:.2f} s CPU, {time.monotonic() - start:.1f} s wall)")
            shutil.rmtree(out)
    reference = statistics.median(cpu[X264_PRESETS[0]])
    for name, values in cpu.items():
        middle = statistics.median(values)
        print(f"hls {name:40s} {middle:6.2f} s CPU  ratio {middle / reference:5.2f}  {quality.get(name, '')}")


async def _encode(source: Path, out: Path, ladder: Sequence[Variant], preset: str, two: bool) -> None:
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await make_hls(Source(fd, source.name), out, ladder, not two, lambda _: None, preset=preset)
    finally:
        os.close(fd)
    if two:  # as before: a second ffmpeg copies the original
        hls = ["-f", "hls", "-hls_time", "2", "-hls_playlist_type", "vod", "-hls_list_size", "0"]
        copy = [
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-c",
            "copy",
            *hls,
            "-hls_segment_filename",
            "adaptive-orig-%03d.ts",
        ]
        await asyncio.to_thread(
            subprocess.run,
            ["ffmpeg", "-v", "error", "-y", "-i", str(source), *copy, "adaptive-orig.m3u8"],
            cwd=out,
            check=True,
        )


def _ssim(rendition: Path, source: Path, height: int) -> float:
    graph = f"[1:v]scale=-2:{height},format=yuv420p[ref];[0:v]format=yuv420p[out];[out][ref]ssim"
    said = subprocess.run(
        ["ffmpeg", "-nostats", "-i", str(rendition), "-i", str(source), "-lavfi", graph, "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return float(re.findall(r"All:([\d.]+)", said)[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compute_bench.media_ab", description=__doc__)
    parser.add_argument("plugin", choices=["exif", "hls"])
    parser.add_argument("--rounds", type=int, default=0, help="exif: 8, hls: 2")
    parser.add_argument("--per-round", type=int, default=100, help="exif reads per round")
    parser.add_argument("--video", choices=["testsrc2", "natural"], default="natural")
    parser.add_argument(
        "--inputs", type=Path, help="where the inputs are made once (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="media-ab-") as scratch:
        folder = args.inputs or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if args.plugin == "exif":
            exif_ab(folder, args.rounds or 8, args.per_round)
        else:
            hls_ab(folder, args.rounds or 2, args.video)
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
