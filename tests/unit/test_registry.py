"""The registry of variants and the Config's field metadata: everything that
makes a variant, and which settings change what is computed, in one place."""
import dataclasses
import importlib

from pffbench.launch.cli import build_parser
from pffbench.core.config import COMPUTING, INCIDENTAL, Config, case_settings, computing_settings
from pffbench.core.variants import AGREEING, BASELINES, VARIANTS
from pffbench.analysis import analysis


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


def test_the_model_reads_the_registry_its_rank_rules_are_validates():
    """perfmodel keeps no variant list of its own (issue 21): a new registry entry is modelled by the program it
    names, and which p the model draws is what validate accepts, for every variant."""
    import math
    from pffbench.launch.validate import validate
    from pffbench.core.config import UsageError
    from pffbench.perfmodel import links, predict
    from pffbench.perfmodel.calibrate import FFCosts

    for name in VARIANTS:
        for layers in (2, 3, 4):
            for p in (1, 2, 3, 4, 8):
                config = dataclasses.replace(Config(), variant=name, layers=(16,) * layers, epochs=8,
                                             batch_size=64, splits=8 if VARIANTS[name].pff else 0)
                try:
                    validate(config, p)
                    accepted = True
                except UsageError:
                    accepted = False
                assert predict.runs_on(name, p, layers, config.microbatches) == accepted, (name, layers, p)
    twin = dataclasses.replace(VARIANTS["all-layers"], name="all-layers-twin")
    free = links.Link("free", 0.0, math.inf)
    cluster = links.Cluster(64, 64, 1, free, free, free)
    costs = FFCosts(dims=[8, 8, 8], batch=8, threads=1, kind="ff", step=[1e-3, 1e-3], normalize=[0.0, 0.0],
                    forward_row=[0.0, 0.0], data=0.0, inputs_row=0.0, once_row=0.0)
    settings = predict.Settings(num_train=64, epochs=4, splits=4)
    try:
        VARIANTS["all-layers-twin"] = twin
        seconds = predict.predict("all-layers-twin", costs, cluster, 2, settings)
    finally:
        del VARIANTS["all-layers-twin"]
    reference = predict.predict("all-layers", costs, cluster, 2, settings)
    assert seconds.seconds == reference.seconds > 0
