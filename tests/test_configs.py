"""The shipped configs: each runs through the real CLI, keeps its values, and stacks its fragments.

Suite files (configs/suites/) are not Lightning configs and are tested with the suite; the
fragments of configs/recipes/ are stacked by the configs (``extends``), not run alone.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import memnet
from memnet.cli import configs as C
from memnet.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
CONFIGS = [CONFIG_DIR / f"{name}.yaml" for name in C.config_names(CONFIG_DIR)]
# Each config's values (its YAML, as the CLI reads it) before configs stacked fragments: a
# config keeps its path and, with its fragments stacked, exactly these values. A config whose
# values change on purpose (or a new one) records them with
#   PYTHONPATH=. python -c "import tests.test_configs as t; t.update_snapshot('ntm/copy.yaml')"
SNAPSHOT_FILE = Path(__file__).parent / "fixtures" / "config_values.json"
SNAPSHOT = json.loads(SNAPSHOT_FILE.read_text())


def update_snapshot(*names: str) -> None:
    """Record the resolved values of ``names`` (``ntm/copy.yaml``) as they are now."""
    snapshot = json.loads(SNAPSHOT_FILE.read_text())
    for name in names:
        snapshot[name] = C.load_config(CONFIG_DIR / name)
    SNAPSHOT_FILE.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")

CALLBACK = {"class_path": "pytorch_lightning.callbacks.LearningRateMonitor"}


def test_configs_exist():
    names = {str(p.relative_to(CONFIG_DIR)) for p in CONFIGS}
    assert {"ntm/copy.yaml", "lstm/copy.yaml", "ntm/copy_small.yaml"} <= names
    assert not any(name.startswith(("recipes/", "suites/")) for name in names)


def _needs_data(config: Path) -> Any:
    """A config that trains on bAbI, marked so that a clone without the data skips it (tests/conftest.py)."""
    return pytest.param(config, marks=pytest.mark.babi_data) if "babi" in str(config.relative_to(CONFIG_DIR)) else config


@pytest.mark.parametrize("config", [_needs_data(config) for config in CONFIGS],
                         ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_runs_with_fast_dev_run(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(config), "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_config_keeps_its_path_and_values(name):
    assert (CONFIG_DIR / name).is_file(), f"configs/{name} moved or was removed"
    assert C.load_config(CONFIG_DIR / name) == SNAPSHOT[name]


def test_recipes_are_stacked_not_repeated():
    """The copy recipe and the memory-access callback live in one file each."""
    copy_users = [p for p in CONFIGS if "recipes/copy.yaml" in p.read_text()]
    assert len(copy_users) >= 12
    for path in CONFIGS:
        text = path.read_text()
        assert "OneCycleLR" not in text and "MemoryAccessPlot" not in text, f"{path} repeats a recipe"


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, root)
    return root


def test_a_callback_added_to_the_memory_fragment_reaches_every_ntm_and_dnc_config(tmp_path):
    root = _tree(tmp_path)
    fragment = root / "recipes" / "memory_callbacks.yaml"
    shared = yaml.safe_load(fragment.read_text())["trainer"]["callbacks"]
    fragment.write_text(yaml.safe_dump({"trainer": {"callbacks": [*shared, CALLBACK]}}))
    algorithmic = [n for n in C.config_names(root) if n.split("/")[0] in ("ntm", "dnc") and "babi" not in n]
    assert len(algorithmic) == 23
    replacing = []
    for name in algorithmic:
        before = SNAPSHOT[f"{name}.yaml"]["trainer"].get("callbacks", [])
        # the fragment's callbacks come first, in its order (a config may replace one's settings: replace: true)
        assert [c["class_path"] for c in before[: len(shared)]] == [c["class_path"] for c in shared], name
        if before[: len(shared)] != shared:
            replacing.append(name)
        expected = [*before[: len(shared)], CALLBACK, *before[len(shared):]]
        assert C.load_config(root / f"{name}.yaml")["trainer"]["callbacks"] == expected, name
    assert replacing == ["ntm/repeat_copy", "ntm/repeat_copy_ffn", "ntm/repeat_copy_loose",
                         "ntm/repeat_copy_loose_decay10", "ntm/repeat_copy_loose_restore"]  # recipes/repeat_copy_ntm.yaml: an earlier decay
    assert "callbacks" not in C.load_config(root / "lstm" / "copy.yaml")["trainer"]


def test_a_copy_recipe_change_is_one_file(tmp_path):
    root = _tree(tmp_path)
    recipe = root / "recipes" / "copy.yaml"
    recipe.write_text(recipe.read_text().replace("lr: 0.003", "lr: 0.002"))
    changed = [n for n in C.config_names(root) if C.load_config(root / f"{n}.yaml") != SNAPSHOT[f"{n}.yaml"]]
    assert "ntm/copy" in changed and "dnc/priority_sort" in changed and len(changed) >= 12
    for name in changed:
        assert C.load_config(root / f"{name}.yaml")["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.002


# --- the stacking rules ---------------------------------------------------------------------


def _write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def test_merge_rules_mappings_merge_callbacks_append_other_lists_and_scalars_replace(tmp_path):
    _write(tmp_path / "frags" / "a.yaml", {
        "trainer": {"max_steps": 10, "gradient_clip_val": 1.0, "callbacks": [{"class_path": "A"}]},
        "data": {"init_args": {"val_lengths": [20, 40], "seed": 0}},
    })
    _write(tmp_path / "frags" / "b.yaml", {"extends": "a.yaml", "trainer": {"callbacks": [{"class_path": "B"}]}})
    top = _write(tmp_path / "cfg" / "top.yaml", {
        "extends": ["../frags/b.yaml"],
        "trainer": {"max_steps": 30, "callbacks": [{"class_path": "C"}]},
        "data": {"init_args": {"val_lengths": [5]}},
    })
    assert C.load_config(top) == {
        "trainer": {"max_steps": 30, "gradient_clip_val": 1.0,
                    "callbacks": [{"class_path": "A"}, {"class_path": "B"}, {"class_path": "C"}]},
        "data": {"init_args": {"val_lengths": [5], "seed": 0}},
    }


def test_a_callback_with_replace_takes_the_place_of_the_stacked_one_of_its_class(tmp_path):
    _write(tmp_path / "a.yaml", {"trainer": {"callbacks": [
        {"class_path": "A", "init_args": {"x": 1, "y": 2}}, {"class_path": "B"}]}})
    top = _write(tmp_path / "top.yaml", {"extends": "a.yaml", "trainer": {"callbacks": [
        {"class_path": "C"}, {"class_path": "A", "replace": True, "init_args": {"x": 3}}]}})
    assert C.load_config(top)["trainer"]["callbacks"] == [  # in A's place, with only its own init_args
        {"class_path": "A", "init_args": {"x": 3}}, {"class_path": "B"}, {"class_path": "C"}]


@pytest.mark.parametrize(("before", "entry", "message"), [
    ([{"class_path": "B"}], {"class_path": "A", "replace": True}, r"replace: true needs exactly one A .* found none"),
    ([{"class_path": "A"}, {"class_path": "A"}], {"class_path": "A", "replace": True}, r"replace: true needs exactly one A .* found 2"),
    ([{"class_path": "A"}], {"class_path": "A", "replace": "yes"}, r"replace must be true \(or left out\), got 'yes'"),
])
def test_a_replace_that_cannot_be_done_names_the_file_and_entry(tmp_path, before, entry, message):
    _write(tmp_path / "a.yaml", {"trainer": {"callbacks": before}})
    top = _write(tmp_path / "top.yaml", {"extends": "a.yaml", "trainer": {"callbacks": [{"class_path": "C"}, entry]}})
    with pytest.raises(C.ConfigError, match=r"top\.yaml: trainer\.callbacks\[1\]: " + message):
        C.load_config(top)
    alone = _write(tmp_path / "alone.yaml", {"trainer": {"callbacks": [{"class_path": "A", "replace": True}]}})
    with pytest.raises(C.ConfigError, match=r"alone\.yaml: trainer\.callbacks\[0\]: replace: true needs exactly one A"):
        C.load_config(alone)  # nothing stacked before it


def test_later_fragment_wins_over_earlier(tmp_path):
    _write(tmp_path / "one.yaml", {"trainer": {"max_steps": 1, "log_every_n_steps": 7}})
    _write(tmp_path / "two.yaml", {"trainer": {"max_steps": 2}})
    top = _write(tmp_path / "top.yaml", {"extends": ["one.yaml", "two.yaml"]})
    assert C.load_config(top) == {"trainer": {"max_steps": 2, "log_every_n_steps": 7}}


def test_missing_fragment_names_the_file_and_key(tmp_path):
    top = _write(tmp_path / "top.yaml", {"extends": "../recipes/nope.yaml"})
    with pytest.raises(C.ConfigError, match=r"top\.yaml: extends: no file \.\./recipes/nope\.yaml \(looked at "):
        C.load_config(top)


def test_a_config_of_ones_own_extends_a_shipped_one_by_name(tmp_path):
    mine = _write(tmp_path / "mine.yaml", {"extends": ["ntm/copy_small", "recipes/memory_access.yaml"],
                                           "trainer": {"max_steps": 50}})
    resolved = C.load_config(mine)
    expected = SNAPSHOT["ntm/copy_small.yaml"]
    assert resolved["model"] == expected["model"] and resolved["data"] == expected["data"]
    assert resolved["trainer"]["max_steps"] == 50
    assert [c["class_path"].rsplit(".", 1)[-1] for c in resolved["trainer"]["callbacks"]] == [
        "RelapseWatch", "ConvergenceDecay", "EarlyStopping", "MemoryAccessPlot"]  # memory_callbacks reached twice, stacked once
    _write(tmp_path / "mine.yaml", {"extends": "../ntm/copy_small"})  # a path escaping the shipped folder
    with pytest.raises(C.ConfigError, match=r"no shipped config of that name"):
        C.load_config(mine)


def test_a_fragment_reached_twice_is_stacked_once(tmp_path):
    _write(tmp_path / "shared.yaml", {"trainer": {"callbacks": [{"class_path": "S"}]}})
    _write(tmp_path / "left.yaml", {"extends": "shared.yaml", "trainer": {"callbacks": [{"class_path": "L"}]}})
    _write(tmp_path / "right.yaml", {"extends": "shared.yaml", "trainer": {"callbacks": [{"class_path": "R"}]}})
    top = _write(tmp_path / "top.yaml", {"extends": ["left.yaml", "right.yaml", "shared.yaml"]})
    callbacks = [c["class_path"] for c in C.load_config(top)["trainer"]["callbacks"]]
    assert callbacks == ["S", "L", "R"]


def test_cycle_is_refused(tmp_path):
    _write(tmp_path / "a.yaml", {"extends": "b.yaml"})
    _write(tmp_path / "b.yaml", {"extends": "a.yaml"})
    with pytest.raises(C.ConfigError, match=r"extends: a cycle, .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        C.load_config(tmp_path / "a.yaml")


@pytest.mark.parametrize("extends", [3, [["x.yaml"]], [""], {"a": 1}])
def test_extends_of_a_wrong_type_is_refused(tmp_path, extends):
    top = _write(tmp_path / "top.yaml", {"extends": extends})
    with pytest.raises(C.ConfigError, match=r"top\.yaml: extends: expected a file name or a list of file names"):
        C.load_config(top)


def test_callbacks_that_are_not_lists_are_refused(tmp_path):
    _write(tmp_path / "frag.yaml", {"trainer": {"callbacks": [{"class_path": "A"}]}})
    top = _write(tmp_path / "top.yaml", {"extends": "frag.yaml", "trainer": {"callbacks": {"class_path": "B"}}})
    with pytest.raises(C.ConfigError, match=r"top\.yaml: trainer\.callbacks: both sides must be lists"):
        C.load_config(top)


def test_bad_yaml_and_non_mapping_name_the_file(tmp_path):
    _write(tmp_path / "frag.yaml", "trainer: [1, 2\n")
    top = _write(tmp_path / "top.yaml", {"extends": "frag.yaml"})
    with pytest.raises(C.ConfigError, match=r"frag\.yaml line \d+: not valid YAML"):
        C.load_config(top)
    _write(tmp_path / "frag.yaml", "- 1\n- 2\n")
    with pytest.raises(C.ConfigError, match=r"frag\.yaml: expected a mapping of config keys, got list"):
        C.load_config(top)


@pytest.mark.parametrize("stacked", [False, True])
def test_a_config_that_is_no_text_is_one_line_naming_it(tmp_path, monkeypatch, capsys, stacked):
    """A checkpoint given as --config (for --ckpt_path), or stacked by extends, was a UnicodeDecodeError traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04\x80\xff\x00 weights")
    config = _write(tmp_path / "top.yaml", {"extends": "last.ckpt"}) if stacked else tmp_path / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", str(config)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert re.match(r"memnet: \S*last\.ckpt: not a YAML text file \(byte 4 is no UTF-8 text\)", err), err
    assert C.main([str(config)]) == 2  # memnet configs NAME


def test_a_key_given_twice_is_refused_naming_the_file_and_lines(tmp_path, monkeypatch, capsys):
    """YAML keeps the last of two equal keys: the first trainer block (max_steps 7) was dropped without a word."""
    monkeypatch.chdir(tmp_path)
    twice = "trainer:\n  max_steps: 7\ndata:\n  init_args: {batch_size: 3}\ntrainer:\n  log_every_n_steps: 2\n"
    _write(tmp_path / "frag.yaml", twice)
    top = _write(tmp_path / "top.yaml", {"extends": "frag.yaml"})
    with pytest.raises(C.ConfigError, match=r"frag\.yaml line 5: key 'trainer' given twice in one mapping \(first at line 1\)"):
        C.load_config(top)
    _write(tmp_path / "plain.yaml", "model:\n  init_args:\n    x: 1\n    y: 2\n    x: 3\n")  # nested, no extends
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "ntm/copy_small", "--config", "plain.yaml", "--print_config"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("memnet: plain.yaml line 5: key 'x' given twice in one mapping (first at line 3)"), err
    assert C.load_config(_write(tmp_path / "anchors.yaml", "a: &x {b: 1}\nc:\n  <<: *x\n  d: 2\n")) == {
        "a": {"b": 1}, "c": {"b": 1, "d": 2}}  # the same key in two mappings is no repeat


# --- names, the CLI hook, memnet configs -------------------------------------------------------


@pytest.mark.parametrize("name", ["ntm/copy", "ntm/copy.yaml", "configs/ntm/copy.yaml"])
def test_shipped_config_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the clone: configs/ntm/copy.yaml is no file here
    assert C.find_config(name).resolve() == (CONFIG_DIR / "ntm" / "copy.yaml").resolve()


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "ntm" / "copy", {"trainer": {"max_steps": 1}})
    assert C.find_config("ntm/copy") == Path("ntm/copy")


def test_unknown_name_lists_close_matches():
    with pytest.raises(C.ConfigError, match=r"--config ntm/cpy: neither a file nor a shipped config; "
                                            r"close matches: ntm/copy"):
        C.find_config("ntm/cpy")
    with pytest.raises(C.ConfigError, match=r"neither a file nor a shipped config \(`memnet configs`"):
        C.find_config("zzzz/qqqq")


def test_cli_refuses_an_unknown_name_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "ntm/copi", "--print_config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.match(r"memnet: --config ntm/copi: .*close matches: ntm/copy", err), err


def test_resolve_config_args():
    plain = str(CONFIG_DIR / "esn" / "narma10.yaml")  # stacks nothing: passed through as a path
    stacked = str(CONFIG_DIR / "ntm" / "copy.yaml")
    args = C.resolve_config_args(["fit", "--config", plain, f"--config={stacked}", "-c", "lstm/copy", "--x=1"])
    assert args[:3] == ["fit", "--config", plain]
    assert yaml.safe_load(args[3].removeprefix("--config=")) == SNAPSHOT["ntm/copy.yaml"]
    assert args[4] == "-c" and yaml.safe_load(args[5]) == SNAPSHOT["lstm/copy.yaml"]
    assert args[6] == "--x=1"
    text = json.dumps({"trainer": {"max_steps": 3}})
    assert C.resolve_config_args(["--config", text]) == ["--config", text]
    assert C.resolve_config_args(["--config", "s3://bucket/c.yaml"]) == ["--config", "s3://bucket/c.yaml"]
    inline = "seed_everything: 3"  # YAML text, as the command floor lets it through
    assert C.resolve_config_args(["--config", inline]) == ["--config", inline]


def test_an_inline_yaml_config_without_braces_is_taken(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "ntm/copy_small", "--config", "seed_everything: 3", "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["seed_everything"] == 3


def test_print_config_shows_the_resolved_whole(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["fit", "--config", "ntm/copy", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in printed["trainer"]["callbacks"]]
    assert callbacks == ["RelapseWatch", "ConvergenceDecay", "MemoryAccessPlot", "EarlyStopping"]
    assert printed["model"]["init_args"]["scheduler"]["init_args"]["total_steps"] == 6000
    assert printed["trainer"]["gradient_clip_val"] == 1.0
    assert "extends" not in printed


def test_saved_run_config_is_the_resolved_whole_and_rebuilds_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "ntm/copy_small", "--trainer.max_steps=1", "--trainer.limit_val_batches=1",
          "--checkpoint.dirpath=run/checkpoints", "--trainer.enable_progress_bar=false", "--trainer.logger=false"])
    saved = tmp_path / "run" / "config.yaml"
    content = yaml.safe_load(saved.read_text())
    assert "extends" not in content
    assert content["model"]["init_args"]["scheduler"]["init_args"]["total_steps"] == 4000
    assert content["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.003
    from memnet.cli.rebuild import config_text

    cli = memnet.cli.MemnetCLI(args=["--config", config_text(saved), "--trainer.logger=false"], run=False)
    assert cli.model.net.memory_size == 32


def test_memnet_configs_lists_the_shipped_configs(capsys):
    main(["configs"])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == set(C.config_names(CONFIG_DIR))
    assert "NTM on the copy task" in lines["ntm/copy"]
    main(["configs", "--fragments"])
    assert "recipes/copy" in capsys.readouterr().out.split()


def test_memnet_configs_name_prints_it_resolved(capsys):
    main(["configs", "dnc/copy"])
    assert yaml.safe_load(capsys.readouterr().out) == SNAPSHOT["dnc/copy.yaml"]
    # an unknown name: one line naming it as typed (not as a --config the user did not give), exit 2 (it was 1)
    with pytest.raises(SystemExit) as exit_info:
        main(["configs", "dnc/cpy"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("memnet configs: dnc/cpy: neither a file nor a shipped config; close matches: dnc/copy"), err


def test_names_resolve_against_the_packaged_copy_outside_a_clone(tmp_path, monkeypatch):
    """Installed from the wheel, the configs are the package ``memnet.configs`` (no clone around)."""
    package = tmp_path / "site" / "memnet"
    shutil.copytree(CONFIG_DIR, package / "configs")  # what the wheel carries (see setup.py)
    monkeypatch.setattr(memnet, "__path__", [*memnet.__path__, str(package)])
    monkeypatch.setattr(C, "__file__", str(package / "cli" / "configs.py"))  # not in a clone
    sys.modules.pop(C.PACKAGE, None)
    try:
        assert C.configs_root() == package / "configs"
        assert C.find_config("ntm/copy") == package / "configs" / "ntm" / "copy.yaml"
        assert C.load_config(C.find_config("ntm/copy")) == SNAPSHOT["ntm/copy.yaml"]
    finally:
        sys.modules.pop(C.PACKAGE, None)


def test_evaluate_takes_a_shipped_name(tmp_path, monkeypatch):
    from memnet.evaluation import EvaluationError, instantiate

    monkeypatch.chdir(tmp_path)
    cli = instantiate(["ntm/copy_small"])
    assert cli.model.net.memory_size == 32
    with pytest.raises(EvaluationError, match=r"--config ntm/copy_smal: .*close matches: ntm/copy_small"):
        instantiate(["ntm/copy_smal"])
