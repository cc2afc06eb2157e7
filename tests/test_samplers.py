import math

import pytest
import torch

from progrpo_core import samplers
from progrpo_core.denoiser import alpha_bar, epsilon, velocity


def normal_logprob_mean(x, mean, std):
    """Independent reference: torch.distributions, float64, mean over elements."""
    d = torch.distributions.Normal(mean.double(), std.double().expand_as(mean))
    return d.log_prob(x.double()).flatten(1).mean(1)


def _inputs(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 3, 3, generator=g), torch.randn(n, 2, 3, 3, generator=g)


FLOW_STEPS = [samplers.flow_sde_step, samplers.cps_step, samplers.dance_sde_step]


@pytest.mark.parametrize("step", FLOW_STEPS)
@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.9), (0.6, 0.5), (0.3, 0.2)])
def test_flow_step_log_prob_is_gaussian_density(step, sigma, sigma_next):
    x, v = _inputs()
    prev, mean, std, lp = step(x, v, torch.tensor(sigma), torch.tensor(sigma_next), 0.7,
                               generator=torch.Generator().manual_seed(3))
    assert lp.shape == (4,) and std.shape == (4, 1, 1, 1)
    assert (std > 0).all()
    torch.testing.assert_close(lp.double(), normal_logprob_mean(prev, mean, std), rtol=1e-5, atol=1e-5)


def test_ddim_log_prob_is_gaussian_density():
    x, eps = _inputs(1)
    prev, mean, std, lp = samplers.ddim_step(x, eps, torch.tensor(0.3), torch.tensor(0.5), 1.0,
                                             generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lp.double(), normal_logprob_mean(prev, mean, std), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", FLOW_STEPS)
def test_rescoring_unchanged_policy_gives_ratio_one_exactly(step):
    x, v = _inputs(2)
    prev, _, _, lp = step(x, v, torch.tensor(0.7), torch.tensor(0.6), 0.7, generator=torch.Generator().manual_seed(5))
    _, _, _, lp2 = step(x, v, torch.tensor(0.7), torch.tensor(0.6), 0.7, prev_sample=prev)
    assert torch.equal(torch.exp(lp2 - lp), torch.ones(4))


def test_ddim_rescoring_ratio_one():
    x, eps = _inputs(3)
    prev, _, _, lp = samplers.ddim_step(x, eps, 0.2, 0.4, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(samplers.ddim_step(x, eps, 0.2, 0.4, 1.0, prev_sample=prev)[3], lp)


def test_flow_sde_mean_std_match_method_equations():
    x, v = _inputs(4)
    s, sn, a = 0.6, 0.5, 0.7
    _, mean, std, _ = samplers.flow_sde_step(x, v, torch.tensor(s), torch.tensor(sn), a,
                                             generator=torch.Generator().manual_seed(0))
    dt = sn - s
    st = a * math.sqrt(s / (1 - s))
    ref = x.double() * (1 + st**2 / (2 * s) * dt) + v.double() * (1 + st**2 * (1 - s) / (2 * s)) * dt
    torch.testing.assert_close(mean.double(), ref, rtol=1e-5, atol=1e-6)
    assert float(std[0]) == pytest.approx(st * math.sqrt(-dt), rel=1e-6)


def test_flow_sde_first_step_uses_next_sigma():
    x, v = _inputs(5)
    _, _, std, _ = samplers.flow_sde_step(x, v, torch.tensor(1.0), torch.tensor(0.9), 0.7,
                                          generator=torch.Generator().manual_seed(0))
    assert float(std[0]) == pytest.approx(0.7 * math.sqrt(1 / (1 - 0.9)) * math.sqrt(0.1), rel=1e-5)


def test_zero_noise_is_deterministic_euler_and_ddim():
    x, out = _inputs(6)
    prev, mean, std, lp = samplers.flow_sde_step(x, out, torch.tensor(0.5), torch.tensor(0.4), 0.0)
    torch.testing.assert_close(prev, x + out * (0.4 - 0.5))
    assert torch.equal(lp, torch.zeros(4)) and torch.equal(std, torch.zeros_like(std))
    prev, *_ = samplers.ddim_step(x, out, 0.3, 0.6, 0.0)
    x0 = (x - math.sqrt(0.7) * out) / math.sqrt(0.3)
    torch.testing.assert_close(prev, math.sqrt(0.6) * x0 + math.sqrt(0.4) * out, rtol=1e-5, atol=1e-5)


def test_ddim_eta_one_matches_ddpm_posterior_variance():
    ab, ab_prev = 0.3, 0.5
    x, eps = _inputs(7)
    _, _, std, _ = samplers.ddim_step(x, eps, ab, ab_prev, 1.0, generator=torch.Generator().manual_seed(0))
    beta = 1 - ab / ab_prev
    assert float(std[0]) ** 2 == pytest.approx((1 - ab_prev) / (1 - ab) * beta, rel=1e-5)


def test_step_from_x0_converts_consistently():
    x, x0 = _inputs(8)
    sig, sig_next = torch.tensor(0.8), torch.tensor(0.6)
    a = samplers.step_from_x0("flow", "flow_sde", x, x0, sig, sig_next, 0.7, generator=torch.Generator().manual_seed(0))
    b = samplers.flow_sde_step(x, velocity(x, x0, sig), sig, sig_next, 0.7, generator=torch.Generator().manual_seed(0))
    for u, w in zip(a, b):
        torch.testing.assert_close(u, w)
    sig, sig_next = torch.tensor(2.0), torch.tensor(1.0)
    a = samplers.step_from_x0("eps", "ddim", x, x0, sig, sig_next, 1.0, generator=torch.Generator().manual_seed(0))
    b = samplers.ddim_step(x, epsilon(x, x0, sig), alpha_bar(sig).float(), alpha_bar(sig_next).float(), 1.0,
                           generator=torch.Generator().manual_seed(0))
    for u, w in zip(a, b):
        torch.testing.assert_close(u, w)


def test_per_row_generators_make_rows_independent_of_batch():
    x, v = _inputs(9, n=3)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (10, 11, 12)]  # noqa: E731
    full = samplers.flow_sde_step(x, v, torch.tensor(0.5), torch.tensor(0.4), 0.7, generator=gens())[0]
    g = gens()
    part = samplers.flow_sde_step(x[1:], v[1:], torch.tensor(0.5), torch.tensor(0.4), 0.7, generator=g[1:])[0]
    assert torch.equal(full[1:], part)


@pytest.mark.parametrize("family,sampler,match", [
    ("flow", "ddim", "does not fit a 'flow' model"),
    ("eps", "flow_sde", "does not fit a 'eps' model"),
    ("v", "ddim", "family 'v' is not supported"),
])
def test_check_sampler(family, sampler, match):
    with pytest.raises(ValueError, match=match):
        samplers.check_sampler(family, sampler)
