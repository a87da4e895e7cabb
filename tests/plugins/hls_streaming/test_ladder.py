"""The `variants` field: what is accepted, what is refused with a reason, and fitting to the source."""

from __future__ import annotations

import pytest

from compute.plugins.hls_streaming.ladder import BadVariants, Variant, fit_to_source, parse_variants


def test_default_ladder_is_upstreams() -> None:
    assert parse_variants(None) == parse_variants("") == [Variant(720, 3500), Variant(480, 1500)]


def test_tallest_first_and_repeats_dropped() -> None:
    raw = (
        '[{"resolution": 240, "bitrate": 400}, {"resolution": 1080, "bitrate": 6000},'
        ' {"resolution": 240, "bitrate": 400}]'
    )
    assert parse_variants(raw) == [Variant(1080, 6000), Variant(240, 400)]
    assert Variant(720, 3500).name == "720p-3500"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not valid JSON"),
        ("[]", "non-empty JSON list"),
        ('{"resolution": 720}', "non-empty JSON list"),
        ('[{"resolution": 720}]', "'bitrate' must be a whole number"),
        ('[{"resolution": "720", "bitrate": 3500}]', "'resolution' must be a whole number"),
        ('[{"resolution": 721, "bitrate": 3500}]', "must be even"),
        ('[{"resolution": 9000, "bitrate": 3500}]', "from 32 to 4320"),
        ('[{"resolution": 720, "bitrate": true}]', "'bitrate' must be a whole number"),
        ("[" + ",".join(['{"resolution": 240, "bitrate": 300}'] * 9) + "]", "at most 8"),
    ],
)
def test_bad_variants_say_why(raw: str, reason: str) -> None:
    with pytest.raises(BadVariants, match=reason):
        parse_variants(raw)


def test_variants_taller_than_the_source_are_dropped() -> None:
    assert fit_to_source([Variant(720, 3500), Variant(480, 1500)], 600) == [Variant(480, 1500)]
    assert fit_to_source([Variant(720, 3500), Variant(480, 1500)], 720) == [
        Variant(720, 3500),
        Variant(480, 1500),
    ]


def test_a_source_shorter_than_every_variant_gets_one_at_its_own_height() -> None:
    # 240 is half of 480: a quarter of the area, a quarter of the bitrate.
    assert fit_to_source([Variant(720, 3500), Variant(480, 1500)], 240) == [Variant(240, 375)]
    # Odd heights round down to even; tiny sources keep a usable floor.
    assert fit_to_source([Variant(480, 1500)], 121) == [Variant(120, 200)]
