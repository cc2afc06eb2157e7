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


FLOW_STEPS = [samplers.flow_sde_step, samplers.cps_step, samplers.cps_gaussian_step, samplers.dance_sde_step]
DENSITY_STEPS = [samplers.flow_sde_step, samplers.cps_gaussian_step, samplers.dance_sde_step]


@pytest.mark.parametrize("step", DENSITY_STEPS)
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


# ---- Flow-GRPO's conventions, re-implemented from its formulas (independently of the pack) --------

def flow_grpo_cps(x, v, sigma, sigma_prev, noise_level, prev_sample):
    """Flow-GRPO's sde_type="cps" branch: std_dev_t = σ_prev·sin(a·π/2), the CPS mean, and
    log_prob = −(prev − mean)² averaged over the latent (no 1/(2σ²), no constants)."""
    std_dev_t = sigma_prev * math.sin(noise_level * math.pi / 2)
    pred_original = x - sigma * v
    noise_estimate = x + v * (1 - sigma)
    mean = pred_original * (1 - sigma_prev) + noise_estimate * math.sqrt(sigma_prev ** 2 - std_dev_t ** 2)
    return (-((prev_sample - mean) ** 2)).mean(dim=(1, 2, 3)), std_dev_t


@pytest.mark.parametrize("sigma,sigma_next", [(0.9, 0.8), (0.5, 0.35), (0.2, 0.1)])
def test_cps_log_prob_is_flow_grpos_and_cps_gaussian_keeps_the_density(sigma, sigma_next):
    x, v = _inputs(6)
    prev, mean, std, lp = samplers.cps_step(x, v, torch.tensor(sigma), torch.tensor(sigma_next), 0.7,
                                            generator=torch.Generator().manual_seed(2))
    ref, std_ref = flow_grpo_cps(x.double(), v.double(), sigma, sigma_next, 0.7, prev.double())
    torch.testing.assert_close(lp.double(), ref, rtol=1e-5, atol=1e-7)
    assert float(std[0]) == pytest.approx(std_ref, rel=1e-6)
    # the same transition, the full density: log-ratios are the reference's / (2·std²)
    _, _, _, lp_g = samplers.cps_gaussian_step(x, v, torch.tensor(sigma), torch.tensor(sigma_next), 0.7, prev_sample=prev)
    _, _, _, lp_g2 = samplers.cps_gaussian_step(x, v * 1.01, torch.tensor(sigma), torch.tensor(sigma_next), 0.7,
                                                prev_sample=prev)
    _, _, _, lp2 = samplers.cps_step(x, v * 1.01, torch.tensor(sigma), torch.tensor(sigma_next), 0.7, prev_sample=prev)
    torch.testing.assert_close((lp_g2 - lp_g).double(), (lp2 - lp).double() / (2 * std_ref ** 2), rtol=1e-3, atol=1e-6)


def flow_grpo_kl(mean, ref_mean, sigma, sigma_max, noise_level):
    """Flow-GRPO's KL term: std_dev_t = a·sqrt(σ/(1−σ)) (σ = 1 uses the schedule's second sigma)
    and kl = mean((μ − μ_ref)²) / (2·std_dev_t²) — no sqrt(|dt|) in std_dev_t."""
    std_dev_t = math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * noise_level
    return ((mean - ref_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t ** 2)


@pytest.mark.parametrize("sigma,sigma_next", [(1.0, 0.95), (0.7, 0.6), (0.3, 0.1)])
def test_kl_follows_flow_grpo_by_default_and_the_transition_kl_on_request(sigma, sigma_next):
    from progrpo_core import grpo

    x, v = _inputs(7)
    s, sn = torch.tensor(sigma), torch.tensor(sigma_next)
    _, mean, std, _ = samplers.flow_sde_step(x, v, s, sn, 0.7, generator=torch.Generator().manual_seed(0))
    _, ref_mean, _, _ = samplers.flow_sde_step(x, v * 0.9, s, sn, 0.7, generator=torch.Generator().manual_seed(0))
    ours = grpo.kl_to_reference(mean, ref_mean, std, dt=abs(sigma - sigma_next))
    torch.testing.assert_close(ours.double(), flow_grpo_kl(mean.double(), ref_mean.double(), sigma, sigma_next, 0.7),
                               rtol=1e-4, atol=0)
    # the exact KL between the two Gaussian transitions is 1/|dt| times that
    exact = grpo.kl_to_reference(mean, ref_mean, std)
    torch.testing.assert_close(exact * abs(sigma - sigma_next), ours, rtol=1e-5, atol=0)
    per_unit_time = [n for n, spec in samplers.SAMPLER_SPECS.items() if spec.kl_per_unit_time]
    assert per_unit_time == ["flow_sde", "dance_sde"]


def test_trained_steps_are_the_first_ones_in_order_as_flow_grpo():
    from types import SimpleNamespace

    from progrpo_core.training.update import train_steps

    ro = SimpleNamespace(stds=torch.ones(4, 10))
    assert train_steps(ro, 0.9, seed=0) == list(range(9))          # Flow-GRPO: steps 0 … T−2 of T = 10
    random = train_steps(ro, 0.9, seed=0, order="random")
    assert len(random) == 9 and random == sorted(random) and random != train_steps(ro, 0.9, seed=1, order="random")
    ro.stds[:, 9] = 0                                                 # a deterministic last step is never trained
    assert train_steps(ro, 1.0, seed=0) == list(range(9))



def test_a_sampler_is_added_by_a_row_in_the_table_alone(monkeypatch, tmp_path):
    """A new ε-model sampler: its step function and a row in SAMPLER_SPECS. The config accepts it for
    ε models only, sampling and the update's re-scoring call its step, and a run trains with it."""
    from progrpo_core import config as C
    from progrpo_core.training import Trainer

    calls = []

    def half_eta_ddim(x, eps, ab, ab_prev, eta, prev_sample=None, generator=None, noise=None):
        calls.append(prev_sample is None)
        return samplers.ddim_step(x, eps, ab, ab_prev, eta / 2, prev_sample, generator, noise)

    monkeypatch.setitem(samplers.SAMPLER_SPECS, "ddim_half", samplers.SamplerSpec(
        "ddim_half", ("eps",), 1.0, half_eta_ddim, "DDIM at half the eta"))
    assert samplers.samplers_for("eps") == ("ddim", "ode", "ddim_half")
    with pytest.raises(ValueError, match="does not fit a 'flow' model"):
        C.build_config({"sampler": {"sampler": "ddim_half"}}).sampler.resolved("flow")
    table = {"model": {"name": "digits-eps"}, "sampler": {"sampler": "ddim_half", "steps": 4},
             "grpo": {"method": "grpo", "prompts_per_epoch": 1}, "schedule": {"group_size": 4},
             "run": {"out": str(tmp_path), "epochs": 1, "eval_every": 0, "eval_seeds": 1, "eval_prompts": 1}}
    t = Trainer.build(C.build_config(table), log=lambda s: None)
    record = next(t.epochs())
    assert True in calls and False in calls  # drawn while sampling, re-scored in the update
    assert record.update.updates == 1 and t.sampler.sampler == "ddim_half"
