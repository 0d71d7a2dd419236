"""The optimizer side of the published recipe (sparsekern/recipe.py) and the recipe benchmark's
equality check (sparsekern/bench/recipe.py) at a small size."""

from __future__ import annotations

import io
import math

import pytest
import torch

import sparsekern
from sparsekern.bench import recipe as bench_recipe


def params_with_grads(*shapes, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g) * scale
    return ps


def global_rms(ps):
    return torch.cat([p.grad.flatten().double() for p in ps]).square().mean().sqrt().item()


def test_clip_scales_to_max_rms_over_all_gradients_together():
    ps = params_with_grads((30, 20), (7,), (5, 5, 3), scale=4.0)
    before = [p.grad.clone() for p in ps]
    rms = sparsekern.clip_grad_rms_(ps, max_rms=1.0)
    assert math.isclose(rms.item(), math.sqrt(sum(b.double().square().sum().item() for b in before)
                                              / sum(b.numel() for b in before)), rel_tol=1e-6)
    assert math.isclose(global_rms(ps), 1.0, rel_tol=1e-5)
    scale = 1.0 / rms.item()
    for p, b in zip(ps, before):  # one factor for every tensor: directions kept
        torch.testing.assert_close(p.grad, b * scale, rtol=1e-6, atol=0)


def test_clip_leaves_small_gradients_alone_and_skips_missing():
    ps = params_with_grads((10, 10), (4,), scale=0.1)
    extra = torch.nn.Parameter(torch.randn(3))  # no gradient
    before = [p.grad.clone() for p in ps]
    rms = sparsekern.clip_grad_rms_(ps + [extra], max_rms=1.0)
    assert rms.item() < 1.0 and extra.grad is None
    for p, b in zip(ps, before):
        assert torch.equal(p.grad, b)
    assert sparsekern.clip_grad_rms_([extra]).item() == 0.0


def test_clip_non_finite_gradient_shows():
    ps = params_with_grads((4, 4), (3,))
    ps[0].grad[1, 1] = float("inf")
    before = [p.grad.clone() for p in ps]
    with pytest.raises(RuntimeError, match="Inf or NaN"):
        sparsekern.clip_grad_rms_(ps, error_if_nonfinite=True)
    for p, b in zip(ps, before):
        assert torch.equal(p.grad, b)
    rms = sparsekern.clip_grad_rms_(ps)  # as clip_grad_norm_: factor 0, the Inf entry NaN
    assert rms.item() == float("inf")
    assert ps[0].grad[1, 1].isnan() and torch.equal(ps[1].grad, torch.zeros(3))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_clip_bad_max_rms(bad):
    ps = params_with_grads((3,))
    before = ps[0].grad.clone()
    with pytest.raises(ValueError, match="max_rms"):
        sparsekern.clip_grad_rms_(ps, max_rms=bad)
    assert torch.equal(ps[0].grad, before)


def test_clip_bad_parameters():
    with pytest.raises(TypeError, match=r"parameters\[1\]"):
        sparsekern.clip_grad_rms_([torch.nn.Parameter(torch.zeros(1)), 3.0])


def test_sharkfin_is_base_over_sqrt_density():
    p = params_with_grads((4,))
    opt = torch.optim.AdamW(p, lr=0.01)
    schedule = sparsekern.DensitySchedule(1 / 64, 100, anneal_start=0.0, anneal_end=0.5)
    base = sparsekern.linear_warmup_decay(100, warmup_steps=10)
    sched = sparsekern.SharkfinLR(opt, schedule, warmup_steps=10)
    seen = []
    for step in range(100):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for step in (0, 5, 10, 30, 50, 75, 99):
        assert math.isclose(seen[step], 0.01 * base(step) / math.sqrt(schedule(step)), rel_tol=1e-12)
    peak = max(range(100), key=seen.__getitem__)
    assert 40 <= peak <= 55  # the fin: rising while the density falls, then decaying
    assert seen[50] == pytest.approx(0.01 * base(50) * 8)


def test_linear_warmup_decay_shape():
    base = sparsekern.linear_warmup_decay(10, warmup_steps=2, final_fraction=0.1)
    assert [round(base(s), 4) for s in (0, 1, 2, 10, 20)] == [0.5, 1.0, 1.0, 0.1, 0.1]
    all_warmup = sparsekern.linear_warmup_decay(5, warmup_steps=5, final_fraction=0.1)
    assert [round(all_warmup(s), 4) for s in range(7)] == [0.2, 0.4, 0.6, 0.8, 1.0, 0.1, 0.1]
    with pytest.raises(ValueError, match="warmup_steps"):
        sparsekern.linear_warmup_decay(10, warmup_steps=11)
    with pytest.raises(TypeError, match="total_steps"):
        sparsekern.linear_warmup_decay(10.0)


def test_sharkfin_bad_density_changes_nothing():
    p = params_with_grads((4,))
    opt = torch.optim.SGD(p, lr=0.1)
    densities = {0: 1.0, 1: 0.5, 2: 1.5}
    sched = sparsekern.SharkfinLR(opt, lambda s: densities[s], base=lambda s: 1.0)
    opt.step()
    sched.step()
    lr, epoch = opt.param_groups[0]["lr"], sched.last_epoch
    opt.step()
    with pytest.raises(ValueError, match=r"density\(step\)"):
        sched.step()
    assert opt.param_groups[0]["lr"] == lr and sched.last_epoch == epoch
    with pytest.raises(ValueError, match=r"density\(step\)"):
        sparsekern.SharkfinLR(opt, lambda s: 0.0, base=lambda s: 1.0)
    with pytest.raises(ValueError, match="base is needed"):
        sparsekern.SharkfinLR(torch.optim.SGD(p, lr=0.1), lambda s: 1.0)
    with pytest.raises(TypeError, match="optimizer"):
        sparsekern.SharkfinLR("adam", sparsekern.DensitySchedule(0.5, 10))


def test_sharkfin_state_dict_resumes():
    p = params_with_grads((4,))
    schedule = sparsekern.DensitySchedule(1 / 16, 40)
    opt = torch.optim.SGD(p, lr=0.1)
    sched = sparsekern.SharkfinLR(opt, schedule)
    for _ in range(15):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)  # plain data: no closure, no schedule object
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "density" not in state and "base" not in state
    opt2 = torch.optim.SGD(p, lr=0.1)
    sched2 = sparsekern.SharkfinLR(opt2, schedule)
    sched2.load_state_dict(state)
    opt.step(), sched.step()
    opt2.step(), sched2.step()
    assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]


@pytest.mark.skipif(not sparsekern.available_backends("cpu"), reason="needs a compiled CPU backend")
def test_recipe_benchmark_matches_the_published_way():
    # The benchmark's own check at a small size: 3 AdamW steps and projections of the MLP block,
    # sparsekern against dense nn.Linear + torch.topk, from the same start.
    for shape in ((128, 128, 512, 1 / 16), (128, 128, 512, 1 / 64), (64, 64, 256, 1 / 8)):
        check = bench_recipe.check_equal(*shape, steps=3)
        assert check["same_nonzeros"], shape
        assert check["max_relative_difference"] < 1e-5, shape


def test_recipe_benchmark_runs_both_and_reports_every_phase():
    result = bench_recipe.run(tokens=64, d_model=64, d_hidden=256, density=1 / 8, steps=1, warmup=0)
    for name in ("sparsekern", "published"):
        assert set(result["seconds"][name]) == set(bench_recipe.PHASES)
        assert all(v > 0 for v in result["seconds"][name].values())
    assert "step" in bench_recipe.format_table(result)
