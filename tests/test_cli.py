"""The ``lightning-prune`` console script: YAML in, a pruned model out."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.nn.utils import prune

from lightning_prune import PruningCallback, Rewind
from lightning_prune.cli import build_cli, main
from lightning_prune.demo import DigitsDataModule, ImageClassifier
from lightning_prune.schedules import Polynomial
from tests.custom_methods import FooBarPruningMethod
from tests.tutorial import LitLeNet

ROOT = Path(__file__).resolve().parents[1]

# Lightning's own use of jsonargparse APIs that jsonargparse deprecates.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:lightning.pytorch.cli")

# The YAML of DESIGN.md, verbatim; its names ("fc3.weight") are those of the tutorial's LeNet.
DESIGN_YAML = """\
trainer:
  max_epochs: 10
  callbacks:
    - class_path: lightning_prune.PruningCallback
      init_args:
        method: l1_unstructured
        scope: global
        schedule:
          class_path: lightning_prune.schedules.Polynomial
          init_args: {final_sparsity: 0.9, start_epoch: 0, end_epoch: 7}
        exclude: ["fc3.weight"]
"""

FAST = [
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


@pytest.fixture(autouse=True)
def _argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-prune"])  # not pytest's arguments


def _write(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _pruning(cli) -> PruningCallback:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, PruningCallback)]
    return callback


def _zero_fraction(callback: PruningCallback) -> float:
    zeros = sum(int((t.parameter == 0).sum()) for t in callback.targets)
    return zeros / sum(t.parameter.numel() for t in callback.targets)


def test_console_script_points_at_main():
    entry = re.search(r'^lightning-prune\s*=\s*"([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert entry is not None, "no `lightning-prune` console script in pyproject.toml"
    module, attr = entry.groups()
    assert getattr(importlib.import_module(module), attr) is main


def test_defaults_are_the_builtin_model_and_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--trainer.logger=false", "--model.init_args.lr=0.1", "--data.batch_size=16"], run=False)
    assert type(cli.model) is ImageClassifier and cli.model.hparams.lr == 0.1
    assert type(cli.datamodule) is DigitsDataModule and cli.datamodule.batch_size == 16


def test_any_importable_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["--trainer.logger=false", "--model=tests.tutorial.LitLeNet", "--model.lr=0.2"], run=False)
    assert type(cli.model) is LitLeNet and cli.model.hparams.lr == 0.2


def test_design_yaml_fits_with_rewind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yaml = DESIGN_YAML.replace('exclude: ["fc3.weight"]', 'exclude: ["fc3.weight"]\n        rewind: {epoch: 0}')
    config = _write(tmp_path, yaml + "model: tests.tutorial.LitLeNet\n")
    cli = build_cli(
        ["fit", "--config", config, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}", *FAST]
    )

    callback = _pruning(cli)
    assert isinstance(callback.schedule, Polynomial)
    assert (callback.schedule.final_sparsity, callback.schedule.end_epoch) == (0.9, 7)
    assert callback.rewind == Rewind(epoch=0)
    assert callback.scope == "global"
    assert [t.qualname for t in callback.targets] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    n = sum(t.parameter.numel() for t in callback.targets)
    assert _zero_fraction(callback) == round(callback.schedule.sparsity_at(1) * n) / n  # the event after epoch 1
    assert (cli.model.fc3.weight != 0).all()
    assert not prune.is_pruned(cli.model)  # make_permanent
    assert (tmp_path / "config.yaml").is_file()  # SaveConfigCallback, under default_root_dir


def test_a_fit_without_a_logger_never_writes_over_a_config_yaml(tmp_path, monkeypatch):
    """Lightning saves the resolved config as `config.yaml` in `default_root_dir` when there is no logger: one
    there already (the user's own, given as `--config`, or an earlier run's) stops the fit, untouched."""
    monkeypatch.chdir(tmp_path)
    mine = "# my experiment, do not edit\n" + DESIGN_YAML + "model: tests.tutorial.LitLeNet\n"
    config = tmp_path / "config.yaml"
    config.write_text(mine)
    with pytest.raises(RuntimeError, match="to NOT exist"):
        build_cli(
            ["fit", "--config", str(config), "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", *FAST]
        )
    assert config.read_text() == mine


def test_design_yaml_runs_as_it_is_on_the_builtin_model(tmp_path, monkeypatch):
    """The built-in classifier holds LeNet's layers under LeNet's names: DESIGN.md's `fc3.weight` names one."""
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, DESIGN_YAML)
    cli = build_cli(
        ["fit", "--config", config, "--trainer.max_epochs=2", f"--trainer.default_root_dir={tmp_path}", *FAST]
    )
    assert type(cli.model) is ImageClassifier
    callback = _pruning(cli)
    assert [t.qualname for t in callback.targets] == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    n = sum(t.parameter.numel() for t in callback.targets)
    assert _zero_fraction(callback) == round(callback.schedule.sparsity_at(1) * n) / n
    assert (cli.model.fc3.weight != 0).all()


def test_bad_scope_fails_while_parsing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, DESIGN_YAML.replace("scope: global", "scope: galaxy"))
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", config, f"--trainer.default_root_dir={tmp_path}", *FAST])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "scope" in err and "galaxy" in err and "'layer', 'global'" in err
    assert not (tmp_path / "config.yaml").exists()  # nothing ran


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            ("final_sparsity: 0.9", "final_sparsity: 1.2"),
            "Expected `final_sparsity` in [0, 1], got 1.2",
            id="schedule",
        ),
        pytest.param(
            ("method: l1_unstructured", "method: l2_unstructured"), "Expected `method` to be one of", id="method"
        ),
        pytest.param(
            ("scope: global", "scope: global\n        rewind: {epoch: -1}"),
            "Expected `Rewind.epoch` to be an int >= 0, got -1",
            id="rewind",
        ),
    ],
)
def test_a_value_a_class_refuses_is_a_parser_error_with_its_message(tmp_path, monkeypatch, capsys, edit, message):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, DESIGN_YAML.replace(*edit))
    with pytest.raises(SystemExit) as exit_info:
        build_cli(["fit", "--config", config, f"--trainer.default_root_dir={tmp_path}", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err


USER_CLASSES = """
from lightning_prune.demo.module import ImageClassifier
from lightning_prune.schedules import Linear

class WrapNet(ImageClassifier):
    def __init__(self, final: float = 0.5):
        try:
            Linear(final, 0, 3)
        except ValueError as err:
            raise ValueError(f"WrapNet: `final` must suit the ramp, got {final}") from err
        super().__init__()

class CallsPackage(ImageClassifier):
    def __init__(self, final: float = 0.5):
        self.ramp = Linear(final, 0, 3)
        super().__init__()
"""


@pytest.mark.parametrize(
    ("cls", "match"),
    [
        # the user's own error, raised from one of this package's: its message is the one
        pytest.param("WrapNet", r"WrapNet: `final` must suit the ramp, got 1.5", id="own-error"),
        # this package's error, called from the user's class: the argument it names is not the CLI's
        pytest.param("CallsPackage", r"final_sparsity", id="package-error-inside"),
    ],
)
def test_an_error_from_a_users_class_keeps_the_usual_report(tmp_path, monkeypatch, cls, match):
    (tmp_path / "usernet.py").write_text(USER_CLASSES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        build_cli([f"--model=usernet.{cls}", "--model.final=1.5", "--trainer.logger=false"], run=False)


def _fit_with_method(tmp_path, monkeypatch, method: str, target: str, norm: str = "null"):
    """One epoch of the demo with one PruningCallback of `method` on `target`, its masks kept."""
    monkeypatch.chdir(tmp_path)
    config = _write(
        tmp_path,
        f"""\
        trainer:
          callbacks:
            - class_path: lightning_prune.PruningCallback
              init_args:
                method: {method}
                targets: ["{target}"]
                schedule: 0.5
                norm: {norm}
                make_permanent: false
        """,
    )
    return build_cli(
        ["fit", "--config", config, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", *FAST]
    )


def test_custom_method_by_import_path(tmp_path, monkeypatch):
    cli = _fit_with_method(tmp_path, monkeypatch, "tests.custom_methods.FooBarPruningMethod", "fc3.bias")
    reference = nn.Linear(84, 10)
    FooBarPruningMethod.apply(reference, "bias")  # the tutorial's own call
    mask = cli.model.fc3.bias_mask
    assert mask.dtype == torch.bool
    assert torch.equal(mask, reference.bias_mask.bool())  # tensor([0., 1., 0., 1., ...]) in the tutorial


def test_custom_method_keeps_its_own_dim(tmp_path, monkeypatch):
    """YAML that gives no `dim` leaves torch's `LnStructured` its `dim=-1` (columns), as torch would."""
    cli = _fit_with_method(tmp_path, monkeypatch, "torch.nn.utils.prune.LnStructured", "fc3.weight")
    mask = cli.model.fc3.weight_mask
    assert int((~mask).all(0).sum()) == mask.shape[1] // 2 and not (~mask).all(1).any()


def test_an_int_norm_in_yaml_reaches_a_custom_method_as_an_int(tmp_path, monkeypatch):
    """`tests.test_methods._EveryNth` slices by its `n`, which a float would break."""
    cli = _fit_with_method(tmp_path, monkeypatch, "tests.test_methods._EveryNth", "fc3.bias", norm="4")
    assert cli.model.fc3.bias_mask.tolist() == [i % 4 != 0 for i in range(10)]


def test_console_script_finds_modules_in_the_current_directory(tmp_path, monkeypatch):
    """A console script's `sys.path` starts with its own folder, not the current one: `main` adds the
    current one, so `method: my_methods.X` finds a `my_methods.py` beside the YAML."""
    (tmp_path / "beside_the_yaml.py").write_text("from tests.custom_methods import FooBarPruningMethod as EveryOther\n")
    config = _write(
        tmp_path,
        """\
        trainer:
          callbacks:
            - class_path: lightning_prune.PruningCallback
              init_args: {method: beside_the_yaml.EveryOther, targets: ["fc3.bias"], schedule: 0.5}
        """,
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "beside_the_yaml", raising=False)
    main(["fit", "--config", config, "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", *FAST])
    assert sys.path[-1] == str(tmp_path), "after the installed packages: a local `sklearn.py` must not shadow them"


def test_console_script_exits_zero_after_fit(tmp_path):
    """A console script's return value becomes its exit status: `main` must return None."""
    assert main(["fit", "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}", *FAST]) is None


def test_python_dash_m(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lightning_prune.cli", "fit", "--print_config"],
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["model"]["class_path"].rpartition(".")[2] == "ImageClassifier"
    assert config["data"]["class_path"].rpartition(".")[2] == "DigitsDataModule"


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("{2.7: 0.5}", "got 2.7"),
        ("{-0.5: 0.5}", "got -0.5"),
        ("{true: 0.5}", "got True"),
        ("{0: 0.2, 0.9: 0.5}", "got 0.9"),
        ("{'1': 0.5, 1: 0.7}", "epoch 1 twice"),
        ("{'\uff11': 0.5}", "got '\uff11'"),
    ],
)
def test_explicit_epochs_from_yaml_are_checked_as_given(keys, message, capsys):
    """The parser hands `Explicit` its keys as written: an epoch that is no whole number is refused, not cut
    to one (`int(2.7)`), and two keys for one epoch are refused, not merged."""
    args = [
        "--trainer.logger=false",
        "--trainer.callbacks+=lightning_prune.PruningCallback",
        "--trainer.callbacks.schedule=lightning_prune.schedules.Explicit",
        f"--trainer.callbacks.schedule.sparsities={keys}",
    ]
    with pytest.raises(SystemExit):
        build_cli(args, run=False)
    err = capsys.readouterr().err
    assert "`sparsities" in err and message in err
