"""The plug-in registries: lookup errors and the test hook that registers for a block."""

import pytest

from vaeood.infra.registry import Registry


def test_registered_adds_for_the_block_and_restores_what_was_there():
    reg = Registry("thing")
    reg.register("a")("original")
    with reg.registered("a", "stand-in"), reg.registered("b", "new"):
        assert reg.get("a") == "stand-in" and reg.get("b") == "new"
    assert reg.get("a") == "original" and "b" not in reg


def test_registered_restores_even_when_the_block_fails():
    reg = Registry("thing")
    with pytest.raises(RuntimeError), reg.registered("b", "new"):
        raise RuntimeError("boom")
    assert "b" not in reg


def test_unknown_name_is_refused_with_a_suggestion():
    reg = Registry("estimator")
    reg.register("iwae")(object())
    with pytest.raises(KeyError, match="did you mean 'iwae'"):
        reg.get("iwea")
