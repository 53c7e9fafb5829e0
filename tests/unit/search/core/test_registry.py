"""``search.core.registry.Registry``: the one way techniques, targets and samplers are named."""

from __future__ import annotations

import pytest

from search.core.errors import UserError
from search.core.registry import Registry


@pytest.fixture
def colours() -> Registry[type]:
    reg: Registry[type] = Registry("colour")

    @reg.register("teal")
    class Teal:
        pass

    @reg.register("red")
    class Red:
        pass

    reg.register("tan")(str)
    return reg


def test_register_returns_the_object_unchanged_and_get_finds_it():
    reg: Registry[object] = Registry("thing")

    def factory() -> int:
        return 7

    assert reg.register("seven")(factory) is factory
    assert reg.get("seven") is factory
    assert reg.get("seven")() == 7


def test_names_and_iteration_are_sorted(colours):
    assert colours.names() == ["red", "tan", "teal"]
    assert list(colours) == ["red", "tan", "teal"]
    assert colours.get("tan") is str
    assert colours.get("teal").__name__ == "Teal"


def test_contains(colours):
    assert "red" in colours
    assert "blue" not in colours
    assert 3 not in colours  # any object may be asked about
    assert "RED" not in colours  # names are exact


def test_registering_a_name_twice_is_a_value_error_and_keeps_the_first(colours):
    with pytest.raises(ValueError, match=r"^colour 'red' is registered twice$"):
        colours.register("red")(int)
    assert colours.get("red").__name__ == "Red"
    assert colours.names() == ["red", "tan", "teal"]


def test_an_unknown_name_is_a_user_error_with_close_matches(colours):
    with pytest.raises(UserError) as err:
        colours.get("tea")
    assert str(err.value) == "unknown colour 'tea'; did you mean teal, tan? (known: red, tan, teal)"


def test_an_unknown_name_without_close_matches_lists_the_known_ones(colours):
    with pytest.raises(UserError) as err:
        colours.get("ultraviolet")
    assert str(err.value) == "unknown colour 'ultraviolet' (known: red, tan, teal)"
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no KeyError chained


def test_an_empty_registry():
    reg: Registry[object] = Registry("widget")
    assert reg.names() == [] and list(reg) == []
    with pytest.raises(UserError, match=r"^unknown widget 'x' \(known: \)$"):
        reg.get("x")


def test_the_projects_registries_are_registries():
    import spaces
    import targets
    from search.study.samplers import SAMPLERS

    for registry, kind, member in (
        (SAMPLERS, "sampler", "tpe"),
        (targets.TARGETS, "target", "host"),
        (spaces.TECHNIQUES, "technique", "prune"),
    ):
        assert isinstance(registry, Registry)
        assert registry.kind == kind
        assert member in registry
        with pytest.raises(UserError, match=rf"^unknown {kind} 'no-such-{kind}'"):
            registry.get(f"no-such-{kind}")
