"""The registry of variants and the Config's field metadata: everything that
makes a variant, and which settings change what is computed, in one place."""
import dataclasses
import importlib

from pffbench.core.cli import build_parser
from pffbench.core.config import COMPUTING, INCIDENTAL, Config, case_settings, computing_settings
from pffbench.core.variants import AGREEING, BASELINES, VARIANTS
from pffbench.study import analysis


def test_every_variant_names_a_train_function_and_is_a_cli_choice():
    choices = next(a.choices for a in build_parser()._actions if a.dest == "variant")
    assert tuple(choices) == tuple(VARIANTS)
    for variant in VARIANTS.values():
        assert callable(importlib.import_module(variant.module).train)


def test_lists_derive_from_the_registry():
    assert BASELINES == ("backprop", "dp-backprop", "ddp", "gpipe", "1f1b") == analysis.BASELINES
    assert AGREEING == ("pipeline", "single-layer", "all-layers", "federated", "perf-opt", *BASELINES)
    assert all(v.checkpointable for v in VARIANTS.values())
    assert [name for name, v in VARIANTS.items() if v.microbatched] == ["gpipe", "1f1b"]
    assert {v.family for v in VARIANTS.values()} == {"pipeline", "pff", "backprop"}
    assert all(v.traced for v in VARIANTS.values())


def test_one_list_of_settings_that_change_what_is_computed():
    names = {f.name for f in dataclasses.fields(Config)}
    assert set(COMPUTING) | set(INCIDENTAL) == names and not set(COMPUTING) & set(INCIDENTAL)
    assert {"layers", "lr", "seed", "variant", "neg", "splits"} <= set(COMPUTING)
    assert {"out", "threads", "device", "transport", "trace", "peer_timeout", "checkpoint_dir"} <= set(INCIDENTAL)
    config = dataclasses.asdict(Config())
    assert computing_settings(config).keys() == set(COMPUTING)
    # a case: what is computed, plus what changes the times (device, transport), threads a key of its own
    case = case_settings({**config, "unknown_future_flag": 1})
    assert {"device", "transport", "unknown_future_flag"} <= case.keys()
    assert not {"threads", "out", "trace", "eval_every", "peer_timeout", "checkpoint_dir", "resume",
                "eval_every_steps", "target_accuracy"} & case.keys()
    assert "microbatches" in COMPUTING and "stop_at_target" in case.keys()  # a run stopped early is its own case


def test_a_run_stored_before_norm_existed_is_a_case_of_the_default_norm():
    config = dataclasses.asdict(Config())
    assert "norm" in COMPUTING
    older = {k: v for k, v in config.items() if k != "norm"}
    assert case_settings(older) == case_settings(config)
    assert case_settings(older) != case_settings({**config, "norm": "length"})
