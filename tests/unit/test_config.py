"""Hyper-parameter defaults: per-method defaults apply only to fields the caller left unset."""

from __future__ import annotations

import argparse

import pytest

from training.cli import register
from training.config import METHOD_DEFAULTS, DistillConfig, OptimConfig


@pytest.mark.parametrize("method", ["none", "rd", "cd", "rrd", "unkd"])
def test_method_defaults_fill_unset_fields_only(method: str) -> None:
    cfg = DistillConfig(method=method)
    own = METHOD_DEFAULTS.get(method, {})
    assert cfg.decay == own.get("decay", OptimConfig.model_fields["decay"].default)
    assert cfg.lambda_kd == own.get("lambda_kd", DistillConfig.model_fields["lambda_kd"].default)
    explicit = DistillConfig(method=method, decay=0.05, lambda_kd=0.5)
    assert (explicit.decay, explicit.lambda_kd) == (0.05, 0.5)


def test_a_config_round_trips_through_json() -> None:
    cfg = DistillConfig(method="unkd", dim=12)
    again = DistillConfig.model_validate(cfg.model_dump(mode="json"))
    assert again == cfg


def test_cli_leaves_unset_flags_to_the_method_defaults() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    from training.cli import _optim_values

    a = parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--method", "unkd"])
    assert _optim_values(a) == {} and a.lambda_kd is None
    a = parser.parse_args(["distill", "data", "--teacher", "t", "--out", "o", "--decay", "0.2"])
    assert _optim_values(a) == {"decay": 0.2}
