"""bs_ref.protocol.cli: the command line built from dataclasses, presets, method specs, one message for all problems.

- flags come from the experiment's dataclass, the CLI fields of UnlearnConfig and the shared method
  hyper-parameters, each declared once; booleans are switches; each default is printed once; the preset help
  says what each preset sets;
- errors name the flag (``--lr -1.0``) or the method spec (``bs_t:lam=1.5``), and every problem is reported
  in one message, the data source first;
- method labels and folder names stay as they were (``bs_t:lam=0.6,temperature=2``, ``bs_t__lam-0.6_...``);
- the flags users had keep working (``--progress false``, ``--cache_dir``) or have a replacement.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bs_ref.methods import BSS, BST, NPO, SimNPO, hyperparameters
from bs_ref.protocol import cli
from bs_ref.protocol.store import method_dirname
from bs_ref.unlearn import UnlearnConfig

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "tofu.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("tofu_experiment_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


tofu = _load_script()


@dataclass
class Inner:
    """A library config: two command-line fields and one the experiment sets itself."""

    rate: float = dataclasses.field(default=0.5, metadata={"help": "a rate"})
    size: int | None = dataclasses.field(default=None, metadata={"help": "a size (None: all)"})
    internal: str = dataclasses.field(default="x", metadata={"cli": False})


@dataclass
class Outer:
    name: str = cli.arg("run", "the run's name")
    quiet: bool = cli.arg(False, "say less")
    colour: bool = cli.arg(True, "colour the output", negative="plain output")
    tags: list[str] = cli.arg(help="tags", factory=lambda: ["a", "b"])
    inner: Inner = cli.section(lambda: Inner(rate=0.25), "inner settings")
    hyper: dict = cli.method_settings("method settings")


PRESETS = {"default": {}, "fast": {"rate": 0.9, "quiet": True, "lam": 0.4}}


def test_flags_from_the_dataclasses_and_presets():
    line = cli.CommandLine(Outer, PRESETS)
    args = line.parse([])
    assert args.inner.rate == 0.25 and args.inner.internal == "x" and args.tags == ["a", "b"]
    assert args.hyper["lam"] == 0.2 and not args.quiet and args.colour
    args = line.parse(["--preset", "fast", "--rate", "0.1", "--size", "none", "--no-colour", "--tags", "z"])
    assert (args.inner.rate, args.inner.size, args.quiet, args.colour, args.tags) == (0.1, None, True, False, ["z"])
    assert args.hyper["lam"] == 0.4  # a preset sets a run-wide method hyper-parameter by its flag name
    flat = line.flat(args)
    assert flat["rate"] == 0.1 and flat["top_k"] == 20 and "internal" not in flat
    assert line.build(flat) == args
    with pytest.raises(cli.Problems, match="unknown --preset 'slow'; choose one of default, fast"):
        line.parse(["--preset", "slow"])
    with pytest.raises(TypeError, match="unknown flags"):
        cli.CommandLine(Outer, {"bad": {"no_such_flag": 1}})


def test_booleans_are_switches_and_old_spellings_still_work():
    line = cli.CommandLine(Outer, PRESETS)
    assert line.parse(["--quiet"]).quiet and not line.parse(["--quiet", "false"]).quiet
    assert not line.parse(["--colour", "false"]).colour and line.parse(["--colour", "yes"]).colour
    with pytest.raises(SystemExit):
        line.parse(["--quiet", "maybe"])
    args = tofu.parse_args(["--progress", "false", "--cache_dir", "/c", "--overwrite", "--bf16"])
    assert not args.progress and args.models.cache_dir == "/c" and args.overwrite and args.models.bf16
    assert not tofu.parse_args(["--no-progress"]).progress and tofu.parse_args([]).progress


def test_help_shows_switches_each_default_once_and_what_presets_set():
    text = tofu.COMMAND_LINE.parser().format_help()
    assert "[OVERWRITE]" not in text and "[PROGRESS]" not in text
    assert "  --overwrite " in text and "--no-progress         hide progress bars" in text
    assert "show progress bars" not in text  # the help of --no-progress says what it does
    assert "--progress " not in text.replace("--no-progress", "")  # the old spelling works but is not shown
    for line in text.splitlines():
        assert line.count("default:") <= 1, line
    assert text.count("(default: 0.001)") == 1  # --lr: the experiment's default, not UnlearnConfig's 1e-5
    assert "(default: 1.0)" in text.split("--max-grad-norm")[1].split("--max-steps")[0]
    preset = text.split("--preset PRESET")[1].split("--out OUT")[0]
    for name, values in tofu.PRESETS.items():
        assert f"{name}:" in preset
        for key in values:
            assert cli.flag(key) in preset, (name, key)
    assert "--precision bf16" in preset and "--model-preset smoke" in preset


def test_config_and_method_flags_are_declared_once():
    flags = {x.name for group in tofu.COMMAND_LINE.groups.values() for x in group}
    cli_fields = {f.name for f in dataclasses.fields(UnlearnConfig) if cli._is_cli(f)}
    assert cli_fields <= flags and not {"template", "seed", "log_path", "method"} & cli_fields
    shared = {n for n, e in hyperparameters().items() if e["shared"]}
    assert shared <= flags and {"lam", "top_k", "temperature", "base", "lam_bss", "n_beliefs", "delta"} <= shared
    assert not {"beta", "gamma", "npo_beta", "simnpo_beta", "wga_beta", "bs_s_base"} & flags
    assert len(tofu.TofuArgs.__dataclass_fields__) < 20  # the experiment's own settings, plus the configs it holds


def test_the_identity_is_every_setting_not_marked_identity_false():
    """What a rerun may change and still resume is declared on the field (``arg(..., identity=False)``); the set is
    the one every earlier run directory was written with, so they all still resume."""
    args = tofu.parse_args(["--preset", "smoke"])
    flat, identity = tofu.COMMAND_LINE.flat(args), tofu.COMMAND_LINE.identity(args)
    assert set(flat) - set(identity) == {
        *("out", "overwrite", "methods", "seeds", "pair_seeds", "grid", "ablation", "progress", "eval_batch_size"),
        *("device", "cache_dir", "match_target_drop", "match_fact_leak", "bf16", "attacks", "attack_at"),
        *("attack_lr", "attack_epochs", "executor", "ray_address", "workers"),
        *("relearn_steps", "relearn_lr", "relearn_samples"),  # the dose-response: kept with the attacks' identity
    }
    assert identity == {k: v for k, v in flat.items() if k in identity}  # same values, same order
    assert identity["lr"] == 3e-3 and identity["preset"] == "smoke" and "lam" in identity


def test_problems_name_the_flag_and_are_collected():
    messages = cli.config_problems(UnlearnConfig(lr=-1.0, epochs=0, schedule="zigzag"))
    assert messages == [
        "--lr -1.0 is invalid: must be a positive number (e.g. 1e-5)",
        "--epochs 0 is invalid: must be an integer >= 1",
        "--schedule zigzag is invalid: choose one of linear, constant, cosine",
    ]
    error = cli.Problems(["a", "b", "a"])
    assert str(error) == "2 problems with the arguments:\n  - a\n  - b" and isinstance(error, ValueError)
    assert str(cli.Problems(["only one"])) == "only one"


def test_method_problems_name_the_flag_or_the_spec():
    _, problems = cli.resolve_methods(["bs_t", "ga_scaled", "bs_s"], {"lam": 1.5})
    assert problems == ["--lam 1.5 is invalid: must lie in [0, 1]"]  # once, though three methods use it
    _, problems = cli.resolve_methods(["bs_t:lam=1.5,top_k=0", "bs_s:n=0"], {})
    assert problems == [
        "bs_t:lam=1.5 is invalid: must lie in [0, 1]",
        "bs_t:top_k=0 is invalid: must be an integer >= 1 (and at most the vocabulary size)",
        "bs_s:n_beliefs=0 is invalid: must be an integer >= 1",
    ]
    _, problems = cli.resolve_methods(["original:lam=1", "magic", "bs_t:warp=2"], {}, ("original", "retrain"))
    assert "takes no hyper-parameters" in problems[0] and problems[1].startswith("unknown method 'magic'")
    assert "bad hyper-parameter 'warp=2'" in problems[2]
    assert cli.resolve_methods([], {})[1] == ["--methods is empty; name at least one method"]


def test_labels_folders_and_run_wide_settings():
    specs = ["bs_t", "bs_t:lam=0.2", "bs_t:tau=2,lambda=0.6", "npo:beta=0.2", "bs_s:base=npo,base_beta=0.3", "simnpo"]
    plan, problems = cli.resolve_methods(specs, {"temperature": 1.0, "delta": 0.5})
    assert not problems
    labels = [label for label, _ in plan]
    assert labels == ["bs_t", "bs_t:lam=0.6,temperature=2", "npo:beta=0.2", "bs_s:base=npo,base_beta=0.3", "simnpo"]
    methods = dict(plan)
    assert methods["bs_t:lam=0.6,temperature=2"] == BST(lam=0.6, temperature=2.0)
    assert methods["npo:beta=0.2"] == NPO(beta=0.2)
    assert methods["bs_s:base=npo,base_beta=0.3"].base_method == NPO(beta=0.3)
    assert methods["simnpo"] == SimNPO(delta=0.5)  # a run-wide flag reaches every method that has the field
    # a spec value equal to the run-wide setting drops out of the label
    assert cli.resolve_methods(["bs_t:lam=0.6"], {"lam": 0.6})[0] == [("bs_t", BST(lam=0.6))]
    assert cli.resolve_methods(["bs_s"], {"base": "ga"})[0][0][1] == BSS(base="ga")
    assert method_dirname("bs_t:lam=0.6,temperature=2") == "bs_t__lam-0.6_temperature-2"


def test_grid_and_presets_of_the_experiment():
    paper = tofu.parse_args(["--preset", "paper"])
    u = paper.unlearn
    assert (u.lr, u.epochs, u.batch_size * u.grad_accum, u.weight_decay, u.warmup) == (1e-5, 10, 32, 0.01, 1.0)
    assert paper.models.precision_name == "bf16" and paper.data.template == "chat"
    assert paper.hyper["belief_max_new_tokens"] == 128
    assert tofu.parse_args(["--preset", "paper", "--lr", "3e-5"]).unlearn.lr == 3e-5  # flags beat the preset
    args = tofu.parse_args(["--grid", "--methods", "bs_t", "ga_scaled"])
    names = [name for name, _ in tofu.check(args)]
    assert names[:2] == ["bs_t", "ga_scaled"] and "bs_t:temperature=1" not in names
    assert {"bs_t:lam=0.6", "bs_t:temperature=4", "bs_t:lam=0.6,temperature=2", "ga_scaled:lam=0.6"} <= set(names)
    assert len(names) == len(set(names)) == 2 + 5 + 1  # τ×λ = 6 BS-T variants (one is bs_t), GA×(1−λ) at λ=0.6


def test_data_source_is_checked_first_and_all_problems_at_once(tmp_path):
    args = tofu.parse_args(
        ["--data", str(tmp_path / "nonexistent"), "--lr", "-1", "--seeds", "1", "1", "--pair-seeds", "0", "1"]
    )
    with pytest.raises(cli.Problems) as error:
        tofu.check(args)
    problems = error.value.problems
    assert problems[0].startswith(f"--data {tmp_path / 'nonexistent'} does not exist")
    assert any(p.startswith("--lr -1.0 is invalid") for p in problems)
    assert any("--seeds 1 1" in p for p in problems) and any("--model" in p for p in problems)
    assert any(p.startswith("--pair-seeds 0 1: a real-data run (--model) has one model pair") for p in problems)
    assert str(error.value).startswith(f"{len(problems)} problems with the arguments:")


def test_no_progress_silences_a_tqdm_imported_before_it():
    """tqdm reads TQDM_DISABLE only when it is imported; --no-progress must still silence bars created later
    (e.g. transformers' GGUF conversion), and leave tqdm as it was afterwards."""
    from tqdm.auto import tqdm

    from bs_ref.protocol.cli import progress_bars

    with progress_bars(False):
        assert tqdm(range(2)).disable
    assert not tqdm(range(2), file=open(os.devnull, "w")).disable
    with progress_bars(True):
        assert not tqdm(range(2), file=open(os.devnull, "w")).disable
