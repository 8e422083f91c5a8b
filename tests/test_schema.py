"""Schema roles and cell parsing."""

import math

import pytest
from pydantic import ValidationError

from synthgen.data.schema import ColumnSpec, Schema, dump_schema, normalise_covariate, parse_value

BASE = {"id": {"role": "id"}, "image": {"role": "image"}}


def schema(**columns) -> Schema:
    return Schema.model_validate({"columns": {**BASE, **columns}})


def test_issue_example_schema_is_valid_and_round_trips():
    import yaml

    s = schema(
        lesion_mask={"role": "mask", "labels": {1: "nodule"}},
        report={"role": "text"},
        nodule={"role": "label", "levels": [0, 1]},
        sex={"role": "covariate", "levels": ["F", "M"]},
        age={"role": "covariate", "range": [20, 90]},
    )
    assert s.image_column == "image" and s.id_column == "id"
    assert s.columns["nodule"].levels == ("0", "1")
    assert s.categorical_covariates() == ["sex"]
    assert Schema.model_validate(yaml.safe_load(dump_schema(s))) == s


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"nodule": {"role": "label"}}, "needs `levels`"),
        ({"m": {"role": "mask"}}, "needs `labels`"),
        ({"m": {"role": "mask", "labels": {0: "bg"}}}, "positive integers"),
        ({"age": {"role": "covariate"}}, "exactly one of"),
        ({"age": {"role": "covariate", "range": [90, 20]}}, "low < high"),
        ({"r": {"role": "text", "levels": ["a"]}}, "does not apply"),
        ({"x": {"role": "label", "levels": [1, 1]}}, "distinct"),
        ({"x": {"role": "weird"}}, "role"),
        ({"image2": {"role": "image"}}, "exactly one column with role image"),
    ],
)
def test_invalid_schemas_are_refused(columns, message):
    with pytest.raises(ValidationError, match=message):
        schema(**columns)


def test_parse_value_levels_ranges_and_missing():
    label = ColumnSpec(role="label", levels=[0, 1])
    age = ColumnSpec(role="covariate", range=(20, 90))
    optional_age = ColumnSpec(role="covariate", range=(20, 90), optional=True)
    assert parse_value(label, "1") == "1"
    assert parse_value(age, "63.5") == 63.5
    assert parse_value(optional_age, "") is None
    for spec, raw, reason in [
        (label, "2", "unknown level '2'"),
        (age, "150", "outside range"),
        (age, "nan", "outside range"),
        (age, "old", "not a number"),
        (age, "", "missing value"),
        (ColumnSpec(role="split"), "holdout", "unknown level"),
    ]:
        with pytest.raises(ValueError, match=reason):
            parse_value(spec, raw)


def test_normalise_covariate():
    sex = ColumnSpec(role="covariate", levels=["F", "M"])
    age = ColumnSpec(role="covariate", range=(20, 90))
    assert normalise_covariate(sex, "M") == 1.0
    assert normalise_covariate(age, 55.0) == pytest.approx(0.5)
    assert math.isnan(normalise_covariate(age, None))
