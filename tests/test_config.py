"""Configuration validation: every mistake gets a one-line error naming the fix."""

from __future__ import annotations

import pytest

from bench.config import PRESETS, parse_init, resolve
from bench.errors import FrameBenchError


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_resolves(preset):
    model, train = resolve(preset, {}, {})
    assert model == PRESETS[preset].model and train == PRESETS[preset].train


def test_presets_match_the_seeds():
    assert PRESETS["seed000"].model.output_activation == "softmax" and not PRESETS["seed000"].train.shuffle
    assert PRESETS["seed001"].train.loss == "mse" and PRESETS["seed001"].model.output_activation == "relu"
    seed002 = PRESETS["seed002"].train
    assert (seed002.sampling, seed002.steps_per_epoch, seed002.batch_size, seed002.epochs) == ("with_replacement", 600, 100, 17)
    assert PRESETS["seed003"].dataset == "fashion-mnist" and PRESETS["seed003"].train.batch_size == 32
    assert PRESETS["seed004"].model.init == "torch_default" and PRESETS["seed004"].model.hidden == (128, 256)


@pytest.mark.parametrize(
    "model, train, message",
    [
        ({"hidden": (0,)}, {}, "hidden sizes must be positive"),
        ({"hidden_activation": "gelu"}, {}, "--hidden-activation takes one of: relu, sigmoid, tanh"),
        ({"output_activation": "sigmoid"}, {}, "--output-activation"),
        ({"dropout": 1.0}, {}, r"dropout must be in \[0, 1\)"),
        ({"init": "xavier"}, {}, "unknown weight init 'xavier'"),
        ({"init": "normal"}, {}, "normal takes 1 parameter"),
        ({"init": "uniform(a, b)"}, {}, "non-numeric"),
        ({}, {"optimizer": "rmsprop"}, "--optimizer takes one of"),
        ({}, {"lr": 0.0}, "lr must be positive"),
        ({}, {"batch_size": 0}, "batch_size must be positive"),
        ({}, {"beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
        ({}, {"sampling": "with_replacement"}, "--steps-per-epoch"),
        ({"output_activation": "relu"}, {"loss": "cross_entropy"}, "cross_entropy needs output activation"),
    ],
)
def test_invalid_configs_are_rejected(model, train, message):
    with pytest.raises(FrameBenchError, match=message):
        resolve("mlp", model, train)


def test_unknown_preset():
    with pytest.raises(FrameBenchError, match="unknown preset 'seed999'; choose one of: mlp"):
        resolve("seed999", {}, {})


def test_parse_init_forms():
    assert parse_init("uniform(0, 0.1)") == ("uniform", (0.0, 0.1))
    assert parse_init("normal(0.01)") == ("normal", (0.01,))
    assert parse_init("he_normal") == ("he_normal", ())
