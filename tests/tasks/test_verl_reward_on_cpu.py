"""compute_score loaded the way verl 0.9 loads a custom reward: from the real ppo_trainer config via Hydra."""

from __future__ import annotations

import os

import numpy as np
import pytest

from verl_mem1.tasks import rewards

RESPONSE = (
    "<IS>q1 is Tulsa; q2 is 1952</IS><query>more</query><info>[HINT]You have 1 turn left.[/HINT]\ndocs</info>"
    + ("<IS>done</IS><answer>Tulsa; 1952</answer>")
)
TRUTH = np.array([np.array(["Tulsa"], dtype=object), np.array(["1952"], dtype=object)], dtype=object)


@pytest.fixture(scope="module")
def compose_ppo_config():
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        yield lambda overrides: compose(config_name="ppo_trainer", overrides=overrides)


def _call(fn):
    # what verl's NaiveRewardManager passes
    return fn(data_source="hotpotqa", solution_str=RESPONSE, ground_truth=TRUTH, extra_info={"num_turns": 2})


def test_loaded_by_verl_from_pkg_path_with_reward_kwargs(compose_ppo_config):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = compose_ppo_config(
        [
            "reward.custom_reward_function.path=pkg://verl_mem1.tasks.rewards",
            "reward.custom_reward_function.name=compute_score",
            "+reward.custom_reward_function.reward_kwargs.reduce=mean",
            "+reward.custom_reward_function.reward_kwargs.format_bonus=0.5",
        ]
    )
    fn = get_custom_reward_fn(config)
    assert fn.func.__name__ == "_call_with_kwargs" and fn.args[0] is rewards.compute_score
    result = _call(fn)
    assert result["score"] == 1.5 and result["em"] == 1.0 and result["well_formed"] == 1.0


def test_loaded_by_verl_from_file_path_and_legacy_key(compose_ppo_config):
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = compose_ppo_config(
        [f"custom_reward_function.path={rewards.__file__}", "custom_reward_function.name=compute_score"]
    )
    fn = get_custom_reward_fn(migrate_legacy_reward_impl(config))
    result = _call(fn)  # a fresh copy of the module, loaded from the file
    assert result["score"] == 2.0 and result["num_objectives"] == 2.0
