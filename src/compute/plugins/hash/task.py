"""The hash task a worker runs."""

from __future__ import annotations

import json
from typing import Any, Literal

from compute.plugins.hash.algorithm import file_digests, perceptual_hashes
from compute.plugins.media import DECODABLE_IMAGES, sniff
from compute.plugins.plugin_task import JobFiles, PluginTask, Progress, TaskParams

Algorithm = Literal["sha512", "md5"]

#: Share of the progress bar the digest takes; decoding for perceptual hashes takes the rest.
DIGEST_SHARE = 60


class HashParams(TaskParams):
    algorithm: Algorithm = "sha512"


class HashTask(PluginTask):
    name = "hash"
    params = HashParams

    async def run(self, files: JobFiles, params: HashParams, progress: Progress) -> dict[str, Any]:
        source = files.path(params.input_path)
        kind = sniff(source)
        digests = file_digests(
            source,
            [params.algorithm, "sha512"],
            lambda done, total: progress(done * DIGEST_SHARE // max(total, 1)),
        )
        output: dict[str, Any] = {
            "media_type": kind.family if kind is not None else "other",
            "algorithm": params.algorithm,
            "hash_value": digests[params.algorithm],
            "sha512": digests["sha512"],
        }
        if kind in DECODABLE_IMAGES:
            output.update(perceptual_hashes(source))
        files.output(params.output_path).write_text(json.dumps(output, indent=2))
        progress(100)
        return output
