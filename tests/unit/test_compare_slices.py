"""The slice predicate language: operators, nesting, missing features, mismatched types."""

import pytest

from shadowd.compare.slices import SliceMatcher
from shadowd.config import SliceConfig


def matcher(**wheres):
    return SliceMatcher([SliceConfig.model_validate({"name": n, "where": w}) for n, w in wheres.items()])


def cond(field, op, value=None):
    return {"field": field, "op": op, "value": value}


@pytest.mark.parametrize(
    "op,value,feature,expected",
    [
        ("eq", "de", "de", True),
        ("eq", "de", "fr", False),
        ("ne", "de", "fr", True),
        ("ne", "de", "de", False),
        ("lt", 0.3, 0.1, True),
        ("lt", 0.3, 0.3, False),
        ("le", 0.3, 0.3, True),
        ("gt", 10, 11, True),
        ("gt", 10, 10, False),
        ("ge", 10, 10.0, True),
        ("in", ["a", "b"], "b", True),
        ("in", ["a", "b"], "c", False),
        ("not_in", ["a", "b"], "c", True),
        ("not_in", ["a", "b"], "a", False),
        ("eq", 3, 3.0, True),  # int and float are one kind: numbers
        ("exists", None, 0, True),
        ("missing", None, 0, False),
    ],
)
def test_each_operator(op, value, feature, expected):
    m = matcher(s=cond("f", op, value))
    assert m.match({"f": feature}) == (["s"] if expected else [])


@pytest.mark.parametrize(
    "op,value", [("eq", "x"), ("ne", "x"), ("lt", 1), ("in", ["x"]), ("not_in", ["x"]), ("exists", None)]
)
def test_missing_feature_is_false_for_every_op_but_missing(op, value):
    m = matcher(s=cond("f", op, value), gone=cond("f", "missing"))
    assert m.match({"other": 1}) == ["gone"]
    assert m.match({"f": None}) == ["gone"]  # JSON null counts as missing
    assert m.match({}) == ["gone"]


@pytest.mark.parametrize(
    "op,value,feature",
    [
        ("lt", 0.3, "dark"),  # string vs number
        ("gt", 1, [2]),  # list vs number
        ("ge", 0, {"a": 1}),
        ("eq", "1", 1),  # number vs string
        ("ne", "1", 1),  # mismatch is false for ne too
        ("eq", 1, True),  # bool is not a number here
        ("eq", True, 1),
        ("in", [1, 2], "1"),
        ("not_in", [1, 2], "1"),
        ("lt", 1, float("nan")),
        ("gt", 1, float("nan")),
    ],
)
def test_type_mismatch_is_false_never_an_exception(op, value, feature):
    m = matcher(s=cond("f", op, value))
    assert m.match({"f": feature}) == []


def test_bool_equality_and_mixed_lists():
    m = matcher(flag=cond("f", "eq", True), some=cond("f", "in", [True, "yes", 1]))
    assert m.match({"f": True}) == ["flag", "some"]
    assert m.match({"f": 1}) == ["some"]
    assert m.match({"f": "yes"}) == ["some"]
    assert m.match({"f": False}) == []


def test_nested_all_any_not():
    where = {
        "all": [
            {"any": [cond("country", "eq", "de"), cond("country", "eq", "at")]},
            {"not": {"any": [cond("brightness", "ge", 0.3), cond("brightness", "missing")]}},
        ]
    }
    m = matcher(dark_dach=where)
    assert m.match({"country": "de", "brightness": 0.1}) == ["dark_dach"]
    assert m.match({"country": "at", "brightness": 0.29}) == ["dark_dach"]
    assert m.match({"country": "fr", "brightness": 0.1}) == []
    assert m.match({"country": "de", "brightness": 0.5}) == []
    assert m.match({"country": "de"}) == []  # missing brightness excluded explicitly
    # "low" is not a number: ge is false and missing is false, so the not(...) is true
    assert m.match({"country": "de", "brightness": "low"}) == ["dark_dach"]


def test_not_of_a_mismatch_is_true():
    # A mismatched condition is false, so its negation is true: documented, and
    # why 'missing' exists for excluding absent features explicitly.
    m = matcher(bright_or_unknown={"not": cond("brightness", "lt", 0.3)})
    assert m.match({"brightness": "low"}) == ["bright_or_unknown"]
    assert m.match({}) == ["bright_or_unknown"]
    assert m.match({"brightness": 0.1}) == []


def test_several_slices_in_config_order_and_bad_features():
    m = matcher(b=cond("x", "gt", 0), a=cond("x", "lt", 10), c=cond("y", "exists"))
    assert m.names == ["b", "a", "c"]
    assert m.match({"x": 5}) == ["b", "a"]
    assert m.match(None) == []
    assert m.match(["not", "a", "mapping"]) == []
