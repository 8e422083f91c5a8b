"""Config loading: every shipped config parses; overrides, unknown keys and bad types are caught."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from synthgen.config import (
    DEMO_CONFIG,
    AETrainConfig,
    DemoConfig,
    DiffusionStage,
    DiffusionTrainConfig,
    EditConfig,
    EvalConfig,
    PhantomConfig,
    ReleaseConfig,
    SampleConfig,
    apply_overrides,
    dump_config,
    load_config,
)
from synthgen.errors import InputError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_configs_folder_is_not_empty():
    assert CONFIGS, "configs/ must hold the ready run configs"


# The command configs leave each run's own paths to the command line.
COMMANDS: dict[str, tuple[type, list[str]]] = {
    "sample": (SampleConfig, ["checkpoint=run", "out=synth"]),
    "edit": (EditConfig, ["checkpoint=run", "manifest=m.csv", "out=edits"]),
    "eval": (EvalConfig, ["real=m.csv", "synthetic=synth", "out=report"]),
    "release": (ReleaseConfig, ["samples=synth", "report=report", "out=rel", "name=x"]),
}


def model_for(path: Path) -> tuple[type, list[str]]:
    """Command configs are named after their command; run configs name their stage; the
    others are demo configs."""
    if path.stem in COMMANDS:
        return COMMANDS[path.stem]
    stage = (yaml.safe_load(path.read_text()) or {}).get("stage")
    diffusion = DiffusionTrainConfig
    return {"ae": AETrainConfig, "ldm": diffusion, "inpaint": diffusion, None: DemoConfig}[
        stage
    ], []


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    model, required = model_for(path)
    cfg = load_config(model, path, required)
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(model, again) == cfg


def test_every_command_has_an_example_config():
    assert set(COMMANDS) <= {p.stem for p in CONFIGS}


def test_the_demo_recipe_is_one_file_that_the_package_carries():
    """configs/demo.yaml is the packaged recipe itself (a link), not a copy to keep equal."""
    shipped = CONFIGS[0].parent / "demo.yaml"
    assert shipped.resolve() == DEMO_CONFIG.resolve()
    with pytest.raises(ValidationError, match="datasets"):
        DemoConfig()  # no recipe hidden in Python defaults


def test_the_demo_generator_is_the_shipped_pixel32_config():
    shipped = load_config(DiffusionTrainConfig, CONFIGS[0].parent / "inpaint-chest2d-pixel32.yaml")
    stage = load_config(DemoConfig, DEMO_CONFIG).generators["chest2d-32"]
    assert DiffusionStage(**shipped.model_dump(exclude={"data", "out"})) == stage


def test_overrides_set_nested_values_with_yaml_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("datasets:\n  a: {kind: chest2d, n: 5}\n")
    cfg = load_config(
        DemoConfig,
        path,
        ["datasets.a.n=7", "datasets.a.shortcut=0.9", "datasets.a.write_clean=true"],
    )
    a = cfg.datasets["a"]
    assert (a.n, a.shortcut, a.write_clean) == (7, 0.9, True)


def test_overrides_do_not_modify_the_input():
    data = {"datasets": {"a": {"kind": "chest2d"}}}
    apply_overrides(data, ["datasets.a.n=3"])
    assert data == {"datasets": {"a": {"kind": "chest2d"}}}


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("datasets: {a: {kind: chest2d, nn: 3}}", [], "datasets.a.nn: unknown key"),
        ("datasets: {a: {kind: chest2d}}", ["datasets.a.bogus=1"], "datasets.a.bogus: unknown key"),
        (
            "datasets: {a: {kind: chest2d}}",
            ["datasets.a.n=abc"],
            "datasets.a.n: Input should be a valid integer",
        ),
        ("datasets: {a: {n: 3}}", [], "datasets.a.kind: missing required value"),
        ("datasets: {a: {kind: lung}}", [], "datasets.a.kind"),
        ("datasets: {a: {kind: chest2d, shortcut: 1.5}}", [], "datasets.a.shortcut"),
        (
            "datasets: {a: {kind: chest2d}}",
            ["datasets.a.kind.x=1"],
            "datasets.a.kind is not a section",
        ),
        ("datasets: {a: {kind: chest2d}}", ["novalue"], "expected key=value"),
        ("datasets: [1, 2", [], "malformed YAML at line"),
        ("- just\n- a list\n", [], "expected a mapping"),
    ],
)
def test_bad_configs_give_one_line_naming_the_key(tmp_path, text, overrides, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(DemoConfig, path, overrides)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: file not found"):
        load_config(DemoConfig, tmp_path / "nope.yaml")


def test_phantom_config_is_immutable():
    cfg = PhantomConfig(kind="chest2d")
    with pytest.raises(ValidationError, match="frozen"):
        cfg.n = 3  # type: ignore[misc]


def test_perceptual_loss_needs_local_weights(tmp_path):
    path = tmp_path / "ae.yaml"
    path.write_text(
        "stage: ae\ndata: {manifest: m.csv}\nout: run\nloss: {perceptual_weight: 0.1}\n"
    )
    with pytest.raises(InputError, match="perceptual_weights: a local weights file"):
        load_config(AETrainConfig, path)


def test_the_demo_budget_scales_every_training_stage_by_one_factor():
    from synthgen.demo import fit_budget

    cfg = load_config(DemoConfig, DEMO_CONFIG)
    planned = {k: v.train.max_minutes for k, v in {**cfg.autoencoders, **cfg.generators}.items()}
    fitted = fit_budget(cfg.model_copy(update={"minutes": 30.0, "overhead_minutes": 10.0}))
    got = {k: v.train.max_minutes for k, v in {**fitted.autoencoders, **fitted.generators}.items()}
    factor = 20.0 / sum(planned.values())
    assert got == {k: round(v * factor, 2) for k, v in planned.items()}
    assert fit_budget(cfg.model_copy(update={"minutes": 500.0})) == cfg.model_copy(
        update={"minutes": 500.0}
    )  # never scaled up
    assert fit_budget(cfg.model_copy(update={"minutes": None})).generators == cfg.generators
