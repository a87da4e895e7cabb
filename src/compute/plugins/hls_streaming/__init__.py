"""hls_streaming: a video as adaptive HLS (H.264/AAC variants, 2 s segments) under `output/adaptive.m3u8`."""
