"""Radiometry: EuroSAT's scaling at its edges, what auto decides from a file, the choices and no-data."""

import numpy as np
import pytest

import hostile_files as hf
from eurosat.radiometry import (EUROSAT_DN_WHITE, RadiometryError, Reading, check_choice, decide, dn_to_grey,
                                to_rgb8)


@pytest.fixture(scope="module")
def forest_dn() -> np.ndarray:
    """A real Forest tile as the L1C digital numbers (3, 64, 64) that EuroSAT's scaling turns back into it."""
    return np.moveaxis(hf.digital_numbers(np.asarray(hf.example("Forest"))), -1, 0).astype(np.uint16)


def test_fixed_scaling_of_edge_values():
    values = np.array([0.0, -5.0, np.nan, np.inf, 1.0, 2750.0, 9000.0, 1375.0])
    assert dn_to_grey(values).tolist() == [0, 0, 0, 0, 1, 255, 255, 128]
    assert EUROSAT_DN_WHITE == 2750


def test_auto_reads_what_the_file_says(forest_dn):
    u16 = np.dtype(np.uint16)
    assert decide("auto", u16, forest_dn).kind == "eurosat-l1c"  # forest digital numbers well below 1000
    offset = decide("auto", u16, forest_dn + 1000)
    assert offset.kind == "baseline-04" and f"the least being {int(forest_dn[forest_dn > 0].min()) + 1000}" in offset.why
    # Metadata wins over the values, in both directions.
    assert decide("auto", u16, forest_dn + 1000, {"RADIO_ADD_OFFSET": "0"}).kind == "eurosat-l1c"
    stated = decide("auto", u16, forest_dn, {"BOA_ADD_OFFSET_B04": "-1000"})
    assert stated == Reading("baseline-04", "the file's BOA_ADD_OFFSET_B04 is -1000")
    assert decide("auto", u16, forest_dn, {"PROCESSING_BASELINE": "04.00"}).kind == "baseline-04"
    assert decide("auto", u16, forest_dn + 1000, {"PROCESSING_BASELINE": "N0209"}).kind == "eurosat-l1c"
    # Floats up to 2 are reflectance fractions, larger ones digital numbers; 8-bit values are true colour.
    assert decide("auto", np.dtype(np.float32), forest_dn / 10000).kind == "reflectance"
    assert decide("auto", np.dtype(np.float32), forest_dn.astype(np.float32)).kind == "eurosat-l1c"
    assert decide("auto", np.dtype(np.uint8), np.zeros((3, 2, 2), np.uint8)).kind == "8bit"
    assert decide("auto", u16, np.full((3, 2, 2), 200, np.uint16)).kind == "8bit"  # 8-bit values stored as 16
    # A little dark water just below the offset still reads as offset data; much more does not.
    dipped = forest_dn + 1000
    dipped[0, 0, :2] = 995
    assert decide("auto", u16, dipped).kind == "baseline-04"
    dipped[0, :8] = 995
    assert decide("auto", u16, dipped).kind == "eurosat-l1c"


def test_a_stated_choice_is_kept_or_refused_when_it_cannot_fit(forest_dn):
    assert decide("baseline-04", np.dtype(np.uint16), forest_dn) == Reading("baseline-04", "as chosen")
    with pytest.raises(RadiometryError, match="This image holds 8-bit values .* choose auto or 8-bit"):
        decide("eurosat-l1c", np.dtype(np.uint8), np.zeros((3, 1, 1), np.uint8))
    assert check_choice(None) == check_choice("") == "auto"
    assert check_choice(" Baseline-04 ") == "baseline-04"
    assert check_choice("8-bit true colour, as is") == "8bit"  # the menu's label, as the page sends it
    with pytest.raises(RadiometryError, match="Unknown radiometry 'L2A': choose one of auto, eurosat-l1c"):
        check_choice("L2A")


def test_each_reading_gives_the_eurosat_grey_levels_and_no_data(forest_dn):
    forest = np.asarray(hf.example("Forest"))
    for values, kind in ((forest_dn, "eurosat-l1c"), (forest_dn + 1000, "baseline-04"),
                         (forest_dn / 10000, "reflectance"), (np.moveaxis(forest, -1, 0), "8bit")):
        rgb, valid = to_rgb8(values, Reading(kind, "test"))
        assert rgb.dtype == np.uint8 and valid.all() and np.abs(rgb.astype(int) - forest).max() <= 1, kind
    holed = forest_dn + 1000
    holed[:, 0, 0] = 0  # Sentinel-2's no-data in all three bands
    holed[0, 0, 1] = 0  # one band at 0 is a dark value, not a hole
    holed[:, 0, 2] = 1000  # zero reflectance after the offset: valid, the darkest grey
    rgb, valid = to_rgb8(holed.astype(np.float64), Reading("baseline-04", "test"))
    assert not valid[0, 0] and valid[0, 1] and valid[0, 2] and (rgb[0, 0] == 0).all() and (rgb[0, 2] == 1).all()
    # A declared nodata counts instead of 0; 8-bit pixels have no-data only when the file declares it.
    rgb, valid = to_rgb8(np.full((3, 1, 2), 7, np.uint8), Reading("8bit", "test"), nodata=7)
    assert not valid.any() and (rgb == 0).all()
    assert to_rgb8(np.zeros((3, 1, 1), np.uint8), Reading("8bit", "test"))[1].all()
    rgb, valid = to_rgb8(np.array([[[np.nan]], [[0.1]], [[0.1]]]), Reading("reflectance", "test"))
    assert not valid.any() and (rgb == 0).all()
