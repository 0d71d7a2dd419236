"""Weight-sparse training end to end: sparsify + DensitySchedule + Projector + Adam on CPU, 200 steps."""

import torch
from torch import nn

import sparsekern
from sparsekern import DensitySchedule, Projector, SparseLinear, count_for_density, sparsify
from linear_cases import layout_of_weight


def test_sparse_training_reaches_target_and_learns():
    torch.manual_seed(0)
    # Synthetic task: regress a fixed random two-layer teacher.
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 4))
    x = torch.randn(512, 32)
    with torch.no_grad():
        y = teacher(x)
    model = sparsify(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)),
                     density=1.0, block_size=16, dense_grad=True)
    steps, final_density = 200, 0.25
    schedule = DensitySchedule(final_density, steps)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    projector = Projector(model, schedule, min_per_neuron=4)
    losses = []
    for step in range(steps):
        batch = torch.randint(0, 512, (64,))
        loss = nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        projector.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = nn.functional.mse_loss(model(x), y).item()
    first = sum(losses[:10]) / 10
    assert final < 0.25 * first, f"loss {first:.4f} -> {final:.4f}"
    for layer in (m for m in model.modules() if isinstance(m, SparseLinear)):
        target = count_for_density(final_density, layer.weight.numel())
        assert int((layer.weight != 0).sum()) == target
        assert ((layer.weight != 0).sum(1) >= 4).all()  # the per-neuron floor
        assert layer.layout == layout_of_weight(layer)
