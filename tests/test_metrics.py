"""ReliabilityBins and MulticlassCalibrationGap against independent references, also under DDP."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_focal.metrics import MulticlassCalibrationGap, ReliabilityBins, reliability_bins


def reference_bins(confidence, correct, n_bins=15):
    """The hand-written bins TimmClassifier used before ReliabilityBins, kept as the reference."""
    edges = torch.linspace(0, 1, n_bins + 1)
    index = torch.bucketize(confidence.float().clamp(0, 1), edges[1:-1], right=True)
    count = torch.bincount(index, minlength=n_bins).float()
    conf_sum = torch.bincount(index, weights=confidence.float(), minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct.float(), minlength=n_bins)
    safe = count.clamp_min(1)
    return {
        "confidence": (conf_sum / safe).tolist(),
        "accuracy": (acc_sum / safe).tolist(),
        "count": count.tolist(),
        "edges": edges.tolist(),
    }


def data(n=300, num_classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, num_classes, generator=generator)
    target = torch.randint(0, num_classes, (n,), generator=generator)
    # Confidences on bin edges and at 1: one-hot rows and rows with max exactly 0.5.
    logits[:5] = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).log()
    logits[5:8] = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).log()
    return logits, target


def top_label(logits, target):
    probs = logits.softmax(1)
    return probs.max(1).values, probs.argmax(1) == target


def assert_same_bins(got, expected):
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("n_bins", [1, 2, 10, 15])
def test_reliability_bins_match_the_old_hand_written_bins(n_bins):
    logits, target = data()
    expected = reference_bins(*top_label(logits, target), n_bins=n_bins)
    metric = ReliabilityBins(n_bins=n_bins)
    for chunk in range(0, len(target), 64):  # several batches, the last one short
        metric.update(logits[chunk : chunk + 64], target[chunk : chunk + 64])
    assert_same_bins(metric.compute(), expected)
    assert_same_bins(reliability_bins(*top_label(logits, target), n_bins=n_bins), expected)
    probs = logits.softmax(1)  # probabilities are taken as they are
    metric.reset()
    metric.update(probs, target)
    assert_same_bins(metric.compute(), expected)
    assert metric.count.shape == (n_bins,)  # fixed-size state


def test_reliability_bins_rejects_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        ReliabilityBins(n_bins=0)


def test_calibration_gap_is_mean_confidence_minus_accuracy():
    logits, target = data()
    probs = logits.double().softmax(1)
    expected = float(probs.max(1).values.mean() - (probs.argmax(1) == target).double().mean())
    gap = MulticlassCalibrationGap()
    gap.update(logits[:100], target[:100])
    gap.update(logits[100:], target[100:])
    assert float(gap.compute()) == pytest.approx(expected, abs=1e-6)


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        logits, target = data()
        bins, gap = ReliabilityBins(n_bins=10), MulticlassCalibrationGap()
        shard = slice(rank, None, world_size)  # unequal shards: 150 and 150, different rows
        for metric in (bins, gap):
            metric.update(logits[shard][: -rank or None], target[shard][: -rank or None])
        torch.save({"bins": bins.compute(), "gap": float(gap.compute())}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_metrics_sync_across_two_processes(tmp_path):
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    mp.spawn(_ddp_worker, args=(2, find_free_network_port(), str(tmp_path)), nprocs=2)
    logits, target = data()
    keep = torch.ones(len(target), dtype=torch.bool)
    keep[1::2][-1] = False  # rank 1 dropped its last row
    conf, correct = top_label(logits[keep], target[keep])
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert_same_bins(result["bins"], reference_bins(conf, correct, n_bins=10))
        expected_gap = float(conf.double().mean() - correct.double().mean())
        assert result["gap"] == pytest.approx(expected_gap, abs=1e-6)
