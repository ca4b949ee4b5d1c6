from kiln.suggest import closest, did_you_mean


def test_a_near_miss_is_named() -> None:
    assert closest("prdo", ["dev", "staging", "prod"]) == "prod"
    assert did_you_mean("stagign", ["dev", "staging", "prod"]) == " (did you mean staging?)"


def test_nothing_near_says_nothing() -> None:
    assert closest("qa", ["dev", "staging", "prod"]) is None
    assert did_you_mean("qa", ["dev", "staging", "prod"]) == ""
    assert did_you_mean("prod", ["prod"]) == ""
