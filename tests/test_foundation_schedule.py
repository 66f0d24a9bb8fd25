"""Flow-matching time math against hand-computed numbers from the spec."""

import math

import torch

from flow.schedule import (
    inference_time_grid,
    interpolate,
    resolution_shift,
    sample_train_timesteps,
    shift_time,
    velocity_target,
)


def test_resolution_shift_matches_spec():
    # mu = 0.5 + 0.65 * (S - 256) / 3840; S = 730 -> mu ~ 0.5802, k ~ 1.786
    assert math.isclose(resolution_shift(730), math.exp(0.5 + 0.65 * 474 / 3840), rel_tol=1e-12)
    assert abs(resolution_shift(730) - 1.786) < 1e-3
    assert abs(resolution_shift(1025) - 1.878) < 1e-3
    assert abs(resolution_shift(4097) - 3.159) < 1e-3


def test_shift_keeps_endpoints_and_biases_to_noise():
    t = torch.tensor([0.0, 0.5, 1.0])
    s = shift_time(t, 3.0)
    assert s[0] == 0.0 and s[2] == 1.0
    assert abs(s[1].item() - 0.25) < 1e-7  # s = 0.5 -> 3*0.5/(1+2*0.5) = 0.75 -> t = 0.25


def test_inference_grid_matches_fixture_grid():
    grid = inference_time_grid(6, 3.0)
    expected = torch.tensor([0.0, 0.0769231, 0.1818182, 0.3333333, 0.5714286, 1.0])
    assert torch.allclose(grid, expected, atol=1e-6)
    g50 = inference_time_grid(50, 3.0)
    assert abs(g50[1].item() - 0.00690) < 1e-4 and abs((g50[-1] - g50[-2]).item() - 0.0588) < 1e-3


def test_train_timesteps_seeded_and_clean_items_stay_clean():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    t_min = torch.tensor([0.0, 0.0, 1.0])
    a = sample_train_timesteps(3, 730, t_min=t_min, generator=g1)
    b = sample_train_timesteps(3, 730, t_min=t_min, generator=g2)
    assert torch.equal(a, b) and a[2] == 1.0 and (a[:2] > 0).all() and (a[:2] < 1).all()
    # median of the shifted logit-normal at S=730 is ~0.359 (biased towards noise)
    many = sample_train_timesteps(20000, 730, generator=torch.Generator().manual_seed(1))
    assert abs(many.median().item() - 0.359) < 0.01


def test_fixed_train_shift_overrides_the_resolution_shift():
    # median of logit-normal(0, 1) is 0.5; a fixed shift k maps it to 1 - k*0.5 / (1 + (k-1)*0.5) = 1 / (1 + k)
    many = sample_train_timesteps(20000, 730, generator=torch.Generator().manual_seed(1), shift=6.0)
    assert abs(many.median().item() - 1 / 7) < 0.01
    u = torch.sigmoid(torch.randn(5, generator=torch.Generator().manual_seed(2)))
    got = sample_train_timesteps(5, 17, generator=torch.Generator().manual_seed(2), shift=3.0)
    torch.testing.assert_close(got, shift_time(u, 3.0))
    clean = sample_train_timesteps(2, None, t_min=torch.ones(2), generator=torch.Generator().manual_seed(0), shift=6.0)
    assert torch.equal(clean, torch.ones(2))


def test_linear_path_and_target():
    x0, x1 = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([0.0, 1.0])
    xt = interpolate(x0, x1, t)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[1], x1[1])
    assert torch.equal(velocity_target(x0, x1), x1 - x0)
