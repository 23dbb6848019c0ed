"""Configuration validation: every mistake gets a one-line error naming the fix."""

from __future__ import annotations

import dataclasses

import pytest

from framebench.cli import build_parser
from framebench.core.config import PRESETS, ModelConfig, Sweep, TrainConfig, field_comments, parse_init, resolve
from framebench.driver.request import RunRequest
from framebench.errors import FrameBenchError


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_resolves(preset):
    model, train = resolve(preset, {}, {})
    assert model == PRESETS[preset].model and train == PRESETS[preset].train


def test_presets_match_the_tutorials():
    assert PRESETS["tutorial000"].model.output_activation == "softmax" and not PRESETS["tutorial000"].train.shuffle
    assert PRESETS["tutorial001"].train.loss == "mse" and PRESETS["tutorial001"].model.output_activation == "relu"
    tutorial002 = PRESETS["tutorial002"].train
    assert (tutorial002.sampling, tutorial002.steps_per_epoch, tutorial002.batch_size, tutorial002.epochs) == (
        "with_replacement",
        600,
        100,
        17,
    )
    assert PRESETS["tutorial003"].dataset == "fashion-mnist" and PRESETS["tutorial003"].train.batch_size == 32
    assert PRESETS["tutorial004"].model.init == "torch_default" and PRESETS["tutorial004"].model.hidden == (128, 256)


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
        ({}, {"lr": 0.0}, "lr must be a finite number > 0"),
        ({}, {"lr": float("inf")}, "lr must be a finite number > 0"),
        ({}, {"adam_eps": float("nan")}, "adam_eps must be a finite number > 0"),
        ({"dropout": float("nan")}, {}, r"dropout must be in \[0, 1\)"),
        ({"init": "normal(-1)"}, {}, "standard deviation must be > 0"),
        ({"init": "truncated_normal(0)"}, {}, "standard deviation must be > 0"),
        ({"init": "uniform(1, 0)"}, {}, "needs low < high"),
        ({"init": "uniform(0, inf)"}, {}, "not finite"),
        ({}, {"steps_per_epoch": 5}, "--steps-per-epoch applies only with --sampling with_replacement"),
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


def test_every_field_has_the_comment_its_flag_shows():
    for cls in (ModelConfig, TrainConfig, RunRequest):
        comments = field_comments(cls)
        assert set(comments) == {f.name for f in dataclasses.fields(cls)}, cls
        assert all(len(text) > 10 for text in comments.values())


def test_run_help_shows_comments_and_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert field_comments(TrainConfig)["steps_per_epoch"] in text
    assert "(one of: sgd, momentum, adam)" in text and "(one of: local, ray)" in text


@pytest.mark.parametrize(
    "text, field, values",
    [
        ("batch_size=16,64,256", "batch_size", ("16", "64", "256")),
        ("hidden=512,256;1024", "hidden", ("512,256", "1024")),
        ("threads=1,2", "threads", ("1", "2")),
        (None, "", ("",)),
    ],
)
def test_sweeps_parse_in_order(text, field, values):
    assert Sweep.parse(text) == Sweep(field, values)


def test_a_sweep_value_applies_to_its_field_only():
    model, train = resolve("mlp", {}, {})
    assert Sweep.parse("hidden=64;32,16").apply(model, train, 2, "32,16")[0].hidden == (32, 16)
    assert Sweep.parse("lr=0.1").apply(model, train, 2, "0.1")[1].lr == 0.1
    assert Sweep.parse("threads=1,2").apply(model, train, 2, "1") == (model, train, 1)
    with pytest.raises(FrameBenchError, match="dropout must be in"):
        Sweep.parse("dropout=0.5,1.5").apply(model, train, 2, "1.5")


def test_parse_init_forms():
    assert parse_init("uniform(0, 0.1)") == ("uniform", (0.0, 0.1))
    assert parse_init("normal(0.01)") == ("normal", (0.01,))
    assert parse_init("he_normal") == ("he_normal", ())
