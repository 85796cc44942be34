"""Mutated NIfTI files and hostile DICOM tags against the reading path of preprocess and predict:
every input is read into a valid volume or refused in one line naming the file, never a crash.

A fixed number of examples with a fixed seed (``derandomize``); ``bench/fuzz.py`` runs longer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pancreas.testing.fuzz import (
    DICOM_TAGS,
    DICOM_VALUES,
    FIELDS,
    FLOAT_VALUES,
    INT_VALUES,
    Mutation,
    dicom_series,
    mutate_nifti,
    nifti_bytes,
    try_read,
)

BASE = {suffix: nifti_bytes(suffix) for suffix in (".nii", ".nii.gz")}
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


def field_mutation():
    def value_for(name):
        ints = FIELDS[name][1] != "<f"
        return st.sampled_from(INT_VALUES if ints else FLOAT_VALUES) | (
            st.integers(-40000, 40000) if ints else st.floats(allow_nan=True, allow_infinity=True, width=32)
        )

    return st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: value_for(name).map(lambda v: Mutation("field", field=name, value=float(v)))
    )


MUTATIONS = st.one_of(
    field_mutation(),
    st.builds(Mutation, st.just("bytes"), offset=st.integers(0, 2000), data=st.binary(min_size=1, max_size=8)),
    st.builds(Mutation, st.just("truncate"), offset=st.integers(0, 30000)),
    st.builds(Mutation, st.just("gzip-bytes"), offset=st.integers(0, 5000), data=st.binary(min_size=1, max_size=4)),
    st.builds(Mutation, st.just("gzip-truncate"), offset=st.integers(0, 5000)),
)


def test_the_unmutated_files_are_read():
    with tempfile.TemporaryDirectory() as tmp:
        for suffix, data in BASE.items():
            path = Path(tmp) / f"case{suffix}"
            path.write_bytes(data)
            assert try_read(path).kind == "read"


NAN = float("nan")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@FUZZ
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
# the defects bench/fuzz.py found (2026-12-03), each a crash before its fix
@example(mutations=[Mutation("field", field="srow_x0", value=NAN)])  # NaN direction: ValueError
@example(mutations=[Mutation("field", field="srow_z3", value=NAN)])  # NaN origin: TypeError in Resample
@example(mutations=[Mutation("field", field="vox_offset", value=float("inf"))])  # OverflowError
@example(  # ITK's header reader never returned (a hang, not a crash)
    mutations=[
        Mutation("field", field="srow_z2", value=-float("inf")),
        Mutation("field", field="quatern_d", value=3.4e38),
    ]
)
@example(mutations=[Mutation("gzip-bytes", offset=1701, data=b"\xa8\xe0\xce")])  # zlib.error, not an OSError
def test_a_mutated_nifti_is_read_or_refused_in_one_line(suffix, mutations):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"case{suffix}"
        path.write_bytes(mutate_nifti(BASE[suffix], suffix == ".nii.gz", mutations))
        outcome = try_read(path)
    assert not outcome.defect, f"{mutations}: {outcome.kind}: {outcome.detail}"


@settings(max_examples=40, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tags=st.dictionaries(
        st.sampled_from(DICOM_TAGS) | st.sampled_from([f"{k}:{t}" for k in range(4) for t in DICOM_TAGS[:2]]),
        st.sampled_from(DICOM_VALUES),
        min_size=1,
        max_size=3,
    )
)
@example(tags={"0:0020|0032": "nan"})  # read as a regular grid, then refused without naming the series
def test_a_dicom_series_with_hostile_tags_is_read_or_refused_in_one_line(tags):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            folder = dicom_series(Path(tmp) / "series", tags)
        except RuntimeError:  # GDCM's writer refuses some values itself (an orientation that is no rotation)
            assume(False)
        outcome = try_read(folder)
    assert not outcome.defect, f"{tags}: {outcome.kind}: {outcome.detail}"
