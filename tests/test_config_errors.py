"""Every config validates on construction and names its field; the CLI shows the flag instead."""

from __future__ import annotations

import pytest
from memloc.cli.flags import cli_message
from memloc.core.errors import ConfigError, MemlocError, UnsafePickleError
from memloc.core.training.train import TrainConfig
from memloc.edit.corpus import GenerationConfig
from memloc.edit.editors import EditPlan
from memloc.edit.evaluate import EvalConfig
from memloc.edit.kn_edit import KNEditConfig
from memloc.edit.memit import MemitConfig
from memloc.edit.monitor import MonitorConfig
from memloc.edit.rome import RomeConfig
from memloc.edit.stats import StatsConfig
from memloc.edit.targets import TargetConfig
from memloc.edit.templates import TemplateConfig
from memloc.locate.classifier.layers import LayersConfig
from memloc.locate.classifier.rewinding import RetrainConfig, RewindConfig
from memloc.locate.classifier.scores import CurvatureConfig
from memloc.locate.classifier.unit_search import FlipConfig
from memloc.locate.lm.interventions import InterventionConfig
from memloc.locate.lm.knowledge_neurons import KNConfig
from memloc.locate.lm.tracing import TraceConfig

BAD = [
    (lambda: TrainConfig(data="digits", arch="mlp", epochs=0), "epochs"),
    (lambda: TrainConfig(data="digits", arch="mlp", lr=0.0), "lr"),
    (lambda: TraceConfig(samples=0), "samples"),
    (lambda: TraceConfig(method="slow"), "method"),
    (lambda: InterventionConfig(controls=-1), "controls"),
    (lambda: KNConfig(share=1.5), "share"),
    (lambda: KNConfig(layers=()), "layers"),
    (lambda: LayersConfig(retrain_epochs=0), "retrain_epochs"),
    (lambda: CurvatureConfig(samples=0), "samples"),
    (lambda: FlipConfig(holdout_size=0), "holdout_size"),
    (lambda: RewindConfig(epochs=()), "epochs"),
    (lambda: RetrainConfig(lr=-1.0), "lr"),
    (lambda: MonitorConfig(tokens=0), "tokens"),
    (lambda: StatsConfig(dtype="float16"), "dtype"),
    (lambda: TargetConfig(steps=0), "steps"),
    (lambda: TargetConfig(kl_prompt="no slot"), "kl_prompt"),
    (lambda: MemitConfig(layers=()), "layers"),
    (lambda: EvalConfig(generation_tokens=0), "generation_tokens"),
    (lambda: RomeConfig(layer=-1), "layer"),
    (lambda: GenerationConfig(top_k=0), "top_k"),
    (lambda: TemplateConfig(counts=((3, -1),)), "counts"),
    (lambda: KNEditConfig(lambda_new=-1.0), "lambda_new"),
    (lambda: EditPlan(method="finetune"), "method"),
]


@pytest.mark.parametrize(("make", "field"), BAD)
def test_bad_config_fails_on_construction_naming_its_field(make, field):
    with pytest.raises(ConfigError) as caught:
        make()
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field} ") and "--" not in str(caught.value)


def test_cli_names_the_flag_of_the_command():
    with pytest.raises(ConfigError) as flip:
        FlipConfig(batch_size=0)
    with pytest.raises(ConfigError) as stats:
        StatsConfig(batch_size=0)
    assert cli_message(flip.value) == "--batch must be at least 1, got 0"
    assert cli_message(stats.value) == "--batch-size must be at least 1, got 0"


def test_cli_message_leaves_paths_and_unknown_fields_alone():
    error = MemlocError("/runs/out/x already exists; choose another out or remove it", field="out")
    assert cli_message(error) == "/runs/out/x already exists; choose another --out or remove it"
    pickle = UnsafePickleError("a.pt runs code; pass trust_pickle if you trust it", field="trust_pickle")
    assert cli_message(pickle) == "a.pt runs code; pass --trust-pickle if you trust it"
    with pytest.raises(ConfigError) as unexposed:
        FlipConfig(reference_size=0)
    assert cli_message(unexposed.value) == str(unexposed.value)
    assert cli_message(MemlocError("no field here")) == "no field here"
