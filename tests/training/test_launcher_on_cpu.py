"""``python -m verl_mem1.train +recipe=...`` picks the trainer and the recipe."""

from __future__ import annotations

from verl_mem1.train import main, split_recipe


def test_split_recipe():
    assert split_recipe(["+recipe=tiny", "a=1"]) == ("tiny", ["a=1"])
    assert split_recipe(["recipe=websearch"]) == ("websearch", [])
    assert split_recipe(["x=2"]) == ("qa", ["x=2"])


def test_unknown_recipe_fails_clearly(capsys):
    assert main(["+recipe=nope"]) == 2
    assert "no recipe 'nope'" in capsys.readouterr().err


def test_tiny_recipe_goes_to_the_cpu_trainer(capsys):
    assert main(["+recipe=tiny", "--cfg"]) == 0  # --cfg: print the composed config and exit
    assert "ppo_epochs" in capsys.readouterr().out
