"""The corruption table: kinds, parameters at each severity, interpolation and bad names/severities."""

from __future__ import annotations

import math

import pytest

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.params import (
    CORRUPTIONS,
    check_severity,
    get_corruption,
    list_corruptions,
    parameter_at,
    table_frame,
)

STUDY_KINDS = ["brightness", "contrast", "blur", "resolution", "saturation", "hue", "markup"]


def test_the_seven_study_corruptions_in_order() -> None:
    assert list_corruptions() == STUDY_KINDS
    for kind in STUDY_KINDS:
        spec = CORRUPTIONS[kind]
        assert len(spec.values) == 4 and spec.description and spec.source and spec.parameter


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("contrast", [1.0, 0.4, 0.3, 0.2, 0.1]),  # ImageNet-C contrast
        ("blur", [0.0, 1.0, 2.0, 3.0, 4.0]),  # ImageNet-C gaussian_blur sigma
        ("resolution", [1.0, 0.6, 0.5, 0.4, 0.3]),  # ImageNet-C pixelate factor
        ("brightness", [0.0, 0.05, 0.10, 0.15, 0.20]),
        ("saturation", [0.0, 0.05, 0.10, 0.15, 0.20]),
        ("hue", [0.0, 0.05, 0.10, 0.15, 0.20]),
    ],
)
def test_parameter_at_integer_severities_matches_the_references(kind: str, expected: list[float]) -> None:
    assert [parameter_at(kind, s) for s in range(5)] == pytest.approx(expected)


def test_fractional_severity_interpolates_linearly() -> None:
    assert parameter_at("blur", 2.5) == pytest.approx(2.5)
    assert parameter_at("contrast", 0.5) == pytest.approx(0.7)
    assert parameter_at("resolution", 3.25) == pytest.approx(0.375)
    assert parameter_at("markup", 3.5) == pytest.approx((0.20 + 0.35) / 2)


def test_aliases_and_case_are_accepted() -> None:
    assert get_corruption("Gaussian_Blur").name == "blur"
    assert get_corruption("pixelate").name == "resolution"
    assert get_corruption(" HUE ").name == "hue"


def test_unknown_kind_lists_the_kinds() -> None:
    with pytest.raises(InputError) as err:
        get_corruption("fog")
    for kind in STUDY_KINDS:
        assert kind in str(err.value)
    with pytest.raises(InputError):
        get_corruption(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, 4.01, math.nan, math.inf, True, "2", None])
def test_severity_outside_0_to_4_is_refused(bad: object) -> None:
    with pytest.raises(InputError, match="severity"):
        check_severity(bad)  # type: ignore[arg-type]


def test_table_frame_has_one_row_per_kind() -> None:
    frame = table_frame()
    assert list(frame["kind"]) == STUDY_KINDS
    assert {"severity 0", "severity 4", "source", "description"} <= set(frame.columns)
