import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def flow_model_path():
    from progrpo_core.embedded import MODELS, WEIGHTS_DIR
    return WEIGHTS_DIR / MODELS["digits-flow"]


@pytest.fixture()
def flow_model():
    from progrpo_core.embedded import load_digits_model
    return load_digits_model("digits-flow")


@pytest.fixture()
def eps_model():
    from progrpo_core.embedded import load_digits_model
    return load_digits_model("digits-eps")


@pytest.fixture(scope="session")
def digit_reward():
    from progrpo_core.rewards import build_reward
    return build_reward("digit")
