"""The harder built-in task: two digits side by side in the prompted order (``digits-pair-*``)."""
import json

import pytest
import torch

from progrpo_core.embedded import MODELS, PAIR_PROMPTS, WEIGHTS_DIR, load_digits_model, read_header
from progrpo_core.embedded.data import load_split, pair_of
from progrpo_core.embedded.pretrain import recipe_for


@pytest.mark.parametrize("prompt, pair", [
    ("a 3 left of a 7", (3, 7)), ("a 7 right of a 3", (3, 7)), ("a three left of a Seven", (3, 7)),
    ("4 and 4", (4, 4)), ("a nine RIGHT OF a 0", (0, 9)),
])
def test_pair_prompts_name_left_then_right(prompt, pair):
    assert pair_of(prompt) == pair


@pytest.mark.parametrize("prompt, count", [("a handwritten 7", 1), ("a 37", 0), ("1 left of 2 left of 3", 3)])
def test_a_pair_prompt_must_name_two_digits(prompt, count):
    with pytest.raises(ValueError, match=f"names {count} digit"):
        pair_of(prompt)


@pytest.mark.parametrize("name", ["digits-pair-flow", "digits-pair-eps"])
def test_pair_models_draw_two_digits_side_by_side(name):
    m = load_digits_model(name)
    assert m.latent_shape == (1, 8, 16) and len(m.default_prompts) == 90
    cond = m.encode_prompts(["a 3 left of a 7", "a 7 right of a 3", "a 1 left of a 2"])
    assert cond.tolist() == [[3, 7], [3, 7], [1, 2]]
    x = torch.randn(3, *m.latent_shape)
    sigma = m.sigmas(10)[2]
    for cfg in (1.0, 3.0):
        out = m.denoise(x, sigma, cond, cfg)
        assert out.shape == x.shape and torch.isfinite(out).all()
    assert m.decode(out).shape == (3, 3, 8, 16)
    # its header records the recipe that rebuilds it
    h = read_header(WEIGHTS_DIR / MODELS[name])
    assert json.loads(h["recipe"]) == json.loads(json.dumps(recipe_for(name).__dict__))
    assert json.loads(h["arch"])["slots"] == 2


def _pairs(left_digit, right_digit, n=6):
    """Real held-out digits (the classifier's split) placed side by side, as images in [0, 1]."""
    x, y = load_split()["classifier"]
    a = x[(y == left_digit).nonzero().flatten()[:n]]
    b = x[(y == right_digit).nonzero().flatten()[:n]]
    return torch.cat([a, b], dim=-1).expand(-1, 3, -1, -1)


def test_digit_reward_on_two_digits_is_the_product_of_the_tiles(digit_reward):
    imgs = _pairs(3, 7)
    right = digit_reward(imgs, ["a 3 left of a 7"] * len(imgs))
    swapped = digit_reward(imgs, ["a 7 left of a 3"] * len(imgs))
    assert right.mean() > 0.8 and swapped.mean() < 0.05
    left_only = digit_reward(imgs[..., :8].contiguous(), ["a handwritten 3"] * len(imgs))
    right_only = digit_reward(imgs[..., 8:].contiguous(), ["a handwritten 7"] * len(imgs))
    assert torch.allclose(right, left_only * right_only, atol=1e-6)
    # an upscaled image scores as its 8 × 16 original would, near enough
    big = torch.nn.functional.interpolate(imgs, scale_factor=4, mode="nearest")
    assert torch.allclose(digit_reward(big, ["a 3 left of a 7"] * len(imgs)), right, atol=1e-5)


def test_digit_reward_refuses_other_shapes_and_prompts(digit_reward):
    with pytest.raises(ValueError, match="twice as wide as tall"):
        digit_reward(torch.rand(2, 3, 8, 12), ["a 3 left of a 7"] * 2)
    with pytest.raises(ValueError, match="names 1 digit"):
        digit_reward(torch.rand(2, 3, 8, 16), ["a handwritten 3"] * 2)


def test_the_base_pair_model_rarely_gets_both_digits_right(digit_reward):
    """The point of the task: the base reward is low (≲ 0.3), so methods separate on more than
    the last few points. Deterministic sampling on 16 evaluation prompts × 4 seeds."""
    from progrpo_core.training.evaluation import eval_set, sample_deterministic

    for name in ("digits-pair-flow", "digits-pair-eps"):
        m = load_digits_model(name)
        prompts, seeds = eval_set(list(PAIR_PROMPTS), 4, 16)
        images = m.decode(sample_deterministic(m, prompts, seeds, 10))
        score = float(digit_reward(images, prompts).mean())
        assert 0.02 < score < 0.3, (name, score)
