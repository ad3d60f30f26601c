"""CUDA checks: the fused losses compiled for CUDA and eager, half precision, a bf16 fit.

Marked ``gpu``; skipped cleanly where there is no CUDA device (CI). Run with
``python -m pytest -m gpu tests/test_gpu.py`` or ``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_focal import SoftmaxFocalLoss, sigmoid_focal_loss, softmax_focal_loss
from lightning_focal.losses import get_backend, set_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(params=["eager", "compile"])
def backend(request):
    previous = get_backend()
    set_backend(request.param)
    yield request.param
    set_backend(previous)


def grads(fn, x):
    x = x.detach().clone().requires_grad_(True)
    value = fn(x)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def test_sigmoid_matches_torchvision_on_cuda(backend):
    torchvision = pytest.importorskip("torchvision")
    x = torch.randn(8, 4096, 80, device="cuda") * 3
    t = (torch.rand_like(x) < 0.001).float()
    ours = grads(lambda v: sigmoid_focal_loss(v, t, reduction="sum"), x)
    ref = grads(lambda v: torchvision.ops.sigmoid_focal_loss(v, t, reduction="sum"), x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(4096, 1000), (8, 21, 128, 128)])
def test_softmax_gamma0_matches_cross_entropy_on_cuda(backend, shape):
    x = torch.randn(shape, device="cuda") * 2
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), device="cuda")
    target.view(-1)[::7] = -100
    ours = grads(lambda v: softmax_focal_loss(v, target, gamma=0.0), x)
    ref = grads(lambda v: F.cross_entropy(v, target), x)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_half_precision_saturated_logits_are_finite(backend, dtype, gamma):
    x = torch.tensor([[1e4, -1e4, 20.0, -20.0, 0.0]] * 4096, device="cuda").to(dtype)
    t = torch.tensor([[1.0, 1.0, 0.0, 1.0, 0.0]] * 4096, device="cuda")
    loss, grad = grads(lambda v: sigmoid_focal_loss(v, t, gamma=gamma, reduction="mean"), x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert grad.dtype == dtype and torch.isfinite(grad.float()).all()
    logits = torch.randn(4096, 10, device="cuda", dtype=dtype) * 1e3
    target = torch.randint(0, 10, (4096,), device="cuda")
    loss, grad = grads(lambda v: softmax_focal_loss(v, target, gamma=gamma), logits)
    assert torch.isfinite(loss) and torch.isfinite(grad.float()).all()


def test_autocast_bf16_on_cuda():
    lin = torch.nn.Linear(16, 10).cuda()
    x = torch.randn(256, 16, device="cuda")
    y = torch.randint(0, 10, (256,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = lin(x)
        loss = SoftmaxFocalLoss(gamma=0.5).cuda()(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(lin.weight.grad).all()


def test_bf16_mixed_fit_on_gpu(tmp_path):
    import lightning.pytorch as pl

    from lightning_focal.callbacks import ClassBalancedAlpha, GammaWarmup
    from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
    from lightning_focal.schedules import LinearRamp

    class Devices(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            self.seen = (
                pl_module.focal_loss.gamma.device.type,
                pl_module.focal_loss.alpha.device.type,
            )

    devices = Devices()
    model = BoringFocalClassifier()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[
            GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=10)),
            ClassBalancedAlpha(),
            devices,
        ],
    )
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert devices.seen == ("cuda", "cuda")  # the buffers followed the module to the GPU
    assert float(model.focal_loss.gamma) == 2.0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_losses_never_wait_for_the_device(backend):
    """No host-device synchronisation in forward or backward (it would stall every step
    until the GPU's queue drains): sync debug mode turns any into an error."""
    x = torch.randn(64, 500, 80, device="cuda")
    t = (torch.rand_like(x) < 0.01).float()
    logits = torch.randn(4096, 100, device="cuda")
    target = torch.randint(0, 100, (4096,), device="cuda")
    module = SoftmaxFocalLoss(gamma=0.5, alpha=torch.rand(100) + 0.5).cuda()
    normalizer = torch.tensor(3.0, device="cuda")  # (torch.tensor(..., device=) itself syncs)

    def step():
        z = x.clone().requires_grad_(True)
        sigmoid_focal_loss(z, t, 0.25, 2.0, "mean").backward()
        sigmoid_focal_loss(z, t, [0.25] * 80, 1.5, "sum", normalizer=normalizer).backward()
        y = logits.clone().requires_grad_(True)
        softmax_focal_loss(y, target, 2.0, label_smoothing=0.1).backward()
        module(y, target).backward()
        return z.grad, y.grad

    step()  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        grads_ = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(g).all() for g in grads_)


def test_bad_class_index_on_cuda_still_stops_the_run(tmp_path):
    """On CUDA the range check is a queued device assertion, not a host read: a bad
    index must still fail (in a subprocess: a device assertion ends the CUDA context)."""
    import subprocess
    import sys

    code = (
        "import torch; from lightning_focal import softmax_focal_loss\n"
        "x = torch.randn(8, 5, device='cuda'); y = torch.tensor([0, 1, 2, 7, 1, 0, 3, 4], device='cuda')\n"
        "softmax_focal_loss(x, y).item()\n"
        "torch.cuda.synchronize()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "out of range" in done.stderr or "assert" in done.stderr.lower(), done.stderr[-2000:]


def test_float16_mixed_fit_on_gpu(tmp_path):
    """16-mixed: fp16 logits reach the loss under a GradScaler; the step stays finite."""
    import lightning.pytorch as pl

    from lightning_focal.callbacks import GammaWarmup
    from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule
    from lightning_focal.schedules import LinearRamp

    model = BoringFocalClassifier()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        max_steps=20,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[GammaWarmup(LinearRamp(start=0.0, end=2.0, steps=10))],
    )
    trainer.fit(model, ImbalancedBlobsDataModule())
    assert float(model.focal_loss.gamma) == 2.0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigmoid_keeps_one_full_size_buffer_on_cuda():
    """Compiled, the forward's only full-size allocation is the gradient it hands to
    backward: peak extra memory over fwd+bwd stays at one logits-sized tensor."""
    set_backend("compile")
    try:
        x = torch.randn(4, 12500, 80, device="cuda")
        t = (torch.rand_like(x) < 0.001).float()
        for _ in range(2):  # compile, then measure
            z = x.detach().requires_grad_(True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            loss = sigmoid_focal_loss(z, t, reduction="sum")
            (grad,) = torch.autograd.grad(loss, z)
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            del grad, loss
    finally:
        set_backend(None)
    assert peak <= 1.05 * x.numel() * 4 + (1 << 20), peak / x.numel() / 4
