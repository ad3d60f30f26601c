from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from _trainer_utils import fast_trainer
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from lightning_focal import SigmoidFocalLoss, SoftmaxFocalLoss
from lightning_focal.callbacks import ClassBalancedAlpha
from lightning_focal.data.class_counts import counts_from_targets
from lightning_focal.demos import BoringFocalClassifier, ImbalancedBlobsDataModule

COUNTS = (96, 24, 8)


def hand_effective_number(counts, beta):
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    return [x * len(counts) / sum(w) for x in w]


def fit(tmp_path, callback, dm=None, **kwargs):
    model = BoringFocalClassifier(**kwargs)
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(model, dm or ImbalancedBlobsDataModule(COUNTS))
    return model, trainer


def test_alpha_from_datamodule_hook_matches_hand_computation(tmp_path):
    callback = ClassBalancedAlpha(method="effective_number", beta=0.99)
    model, trainer = fit(tmp_path, callback)
    expected = hand_effective_number(COUNTS, 0.99)
    assert callback.source == "datamodule.class_counts()"
    assert callback.counts == {"focal_loss": list(COUNTS)}
    assert model.focal_loss.alpha.tolist() == pytest.approx(expected, rel=1e-6)
    for c, value in enumerate(expected):
        assert float(trainer.callback_metrics[f"focal/alpha/{c}"]) == pytest.approx(value, rel=1e-6)


@pytest.mark.parametrize(
    ("method", "weights"),
    [("inverse", [1 / 96, 1 / 24, 1 / 8]), ("inverse_sqrt", [96**-0.5, 24**-0.5, 8**-0.5])],
)
def test_one_pass_over_the_dataloader(tmp_path, method, weights):
    # No class_counts() hook and TensorDataset has no `targets`: the callback counts batches.
    callback = ClassBalancedAlpha(method=method)
    model, _ = fit(tmp_path, callback, ImbalancedBlobsDataModule(COUNTS, expose_counts=False))
    assert callback.source == "one pass over the training dataloader"
    expected = [w * 3 / sum(weights) for w in weights]
    assert model.focal_loss.alpha.tolist() == pytest.approx(expected, rel=1e-6)


class TargetsDataset(Dataset):
    def __init__(self, counts):
        self.targets = [c for c, n in enumerate(counts) for _ in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.randn(8), self.targets[i]


def test_targets_attribute_of_the_dataset(tmp_path):
    callback = ClassBalancedAlpha(method="inverse")
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[callback])
    trainer.fit(model, train_dataloaders=DataLoader(TargetsDataset((30, 10, 5)), batch_size=5))
    assert callback.source == "dataset.targets"
    assert callback.counts == {"focal_loss": [30, 10, 5]}


def test_sigmoid_losses_get_alpha_in_unit_interval(tmp_path):
    callback = ClassBalancedAlpha(method="inverse")
    model, _ = fit(tmp_path, callback, sigmoid=True)
    w = torch.tensor([1 / 96, 1 / 24, 1 / 8])
    w = w * 3 / w.sum()
    assert model.focal_loss.alpha.tolist() == pytest.approx((w / (1 + w)).tolist(), rel=1e-6)


def test_alpha_kept_in_checkpoint_and_not_recounted(tmp_path):
    callback = ClassBalancedAlpha(beta=0.9)
    trainer = fast_trainer(
        tmp_path,
        max_steps=2,
        enable_checkpointing=True,
        callbacks=[callback, ModelCheckpoint(dirpath=tmp_path, save_last=True)],
    )
    trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    (key,) = [k for k in state["callbacks"] if k.startswith("ClassBalancedAlpha")]
    assert state["callbacks"][key]["counts"] == {"focal_loss": list(COUNTS)}
    assert state["state_dict"]["focal_loss.alpha"].tolist() == pytest.approx(
        hand_effective_number(COUNTS, 0.9)
    )
    # Resume with a datamodule whose counts differ: α must come from the checkpoint.
    resumed = ClassBalancedAlpha(beta=0.9)
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=[resumed])
    trainer.fit(
        model, ImbalancedBlobsDataModule((10, 10, 10)), ckpt_path=str(tmp_path / "last.ckpt")
    )
    assert resumed.counts == {"focal_loss": list(COUNTS)}
    assert model.focal_loss.alpha.tolist() == pytest.approx(hand_effective_number(COUNTS, 0.9))


def test_batch_target_kinds_are_counted():
    assert counts_from_targets(
        torch.tensor([[0, 1], [1, -100]]), 3, ignore_index=-100
    ).tolist() == [1, 2, 0]
    assert counts_from_targets(
        torch.tensor([[1.0, 0.0], [1.0, 1.0]]), 2, ignore_index=-100
    ).tolist() == [2, 1]
    with pytest.raises(ValueError, match="multi-hot"):
        counts_from_targets(torch.tensor([0.5, 0.2]), 3, ignore_index=-100)
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):  # no longer skipped silently
        counts_from_targets(torch.tensor([0, 7]), 3, ignore_index=-100)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        ClassBalancedAlpha(method="median")
    with pytest.raises(ValueError, match="beta"):
        ClassBalancedAlpha(beta=1.0)
    callback = ClassBalancedAlpha(target_index="label")
    with pytest.raises(MisconfigurationException, match="target_index='label'"):
        fit(tmp_path, callback, ImbalancedBlobsDataModule(COUNTS, expose_counts=False))


# -- streams: the callback never consumes the training stream -----------------------------


class EndlessStream(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(8), torch.randint(0, 3, ()).item()


class OneShotStream(IterableDataset):
    """A generator-backed stream: a second iteration yields nothing."""

    def __init__(self, counts):
        samples = [(torch.randn(8), c) for c, n in enumerate(counts) for _ in range(n)]
        self._samples = iter(samples)

    def __iter__(self):
        return self._samples


class BatchCounter(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, *args):
        self.batches += 1


@pytest.mark.timeout(30)
def test_endless_stream_is_refused_with_the_fix_named(tmp_path):
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[ClassBalancedAlpha()])
    with pytest.raises(
        MisconfigurationException, match=r"IterableDataset.*class_counts\(\).*counts="
    ):
        trainer.fit(BoringFocalClassifier(), train_dataloaders=DataLoader(EndlessStream(), 4))


@pytest.mark.timeout(30)
def test_one_shot_stream_without_counts_is_refused_not_consumed(tmp_path):
    stream = OneShotStream((12, 6, 2))
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[ClassBalancedAlpha()])
    with pytest.raises(MisconfigurationException, match="OneShotStream"):
        trainer.fit(BoringFocalClassifier(), train_dataloaders=DataLoader(stream, 5))
    assert next(iter(stream), None) is not None  # nothing was read


@pytest.mark.timeout(30)
def test_one_shot_stream_with_counts_trains_on_every_batch(tmp_path):
    callback, seen = ClassBalancedAlpha(method="inverse", counts=[12, 6, 2]), BatchCounter()
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[callback, seen])
    trainer.fit(model, train_dataloaders=DataLoader(OneShotStream((12, 6, 2)), 5))
    assert seen.batches == 4
    assert callback.source == "counts="
    w = torch.tensor([1 / 12, 1 / 6, 1 / 2])
    assert model.focal_loss.alpha.tolist() == pytest.approx((w * 3 / w.sum()).tolist())


def test_explicit_counts_win_over_the_datamodule_hook(tmp_path):
    callback = ClassBalancedAlpha(beta=0.99, counts=(30, 10, 5))
    model, _ = fit(tmp_path, callback)
    assert callback.source == "counts="
    assert callback.counts == {"focal_loss": [30, 10, 5]}
    assert model.focal_loss.alpha.tolist() == pytest.approx(
        hand_effective_number((30, 10, 5), 0.99), rel=1e-6
    )


def test_bad_counts_are_refused_at_construction():
    with pytest.raises(ValueError, match="non-negative"):
        ClassBalancedAlpha(counts=[3, -1])
    with pytest.raises(ValueError, match="at least one"):
        ClassBalancedAlpha(counts={})
    with pytest.raises(ValueError, match="'cls'"):
        ClassBalancedAlpha(counts={"cls": [[1, 2]]})


# -- several heads: each focal loss gets α for its own classes ----------------------------


class TwoHeads(pl.LightningModule):
    """A 3-class softmax head and a 5-class multi-label sigmoid head on one trunk."""

    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(8, 8)
        self.species, self.tags = torch.nn.Linear(8, 3), torch.nn.Linear(8, 5)
        self.species_loss = SoftmaxFocalLoss(num_classes=3)
        self.tags_loss = SigmoidFocalLoss(num_classes=5)

    def training_step(self, batch, batch_idx):
        x, species, tags = batch
        h = torch.relu(self.trunk(x))
        return self.species_loss(self.species(h), species) + self.tags_loss(self.tags(h), tags)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


SPECIES, TAGS = [24, 12, 4], [20, 10, 6, 3, 1]


class TwoHeadsData(pl.LightningDataModule):
    def __init__(self, counts=None):
        super().__init__()
        if counts is not None:
            self.class_counts = lambda: counts

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        species = torch.tensor([c for c, n in enumerate(SPECIES) for _ in range(n)])
        tags = (torch.rand(len(species), 5, generator=g) < 0.3).float()
        return DataLoader(TensorDataset(torch.randn(len(species), 8), species, tags), 8)


def normalised_inverse(counts):
    w = torch.tensor([1 / n for n in counts])
    return w * len(counts) / w.sum()


@pytest.mark.parametrize("where", ["datamodule", "argument"])
def test_each_head_gets_alpha_from_its_own_counts(tmp_path, where):
    by_loss = {"species_loss": SPECIES, "tags_loss": TAGS}
    if where == "argument":
        callback, data = ClassBalancedAlpha(method="inverse", counts=by_loss), TwoHeadsData()
    else:
        callback, data = ClassBalancedAlpha(method="inverse"), TwoHeadsData(by_loss)
    model = TwoHeads()
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(model, data)
    assert callback.counts == by_loss
    species_w, tags_w = normalised_inverse(SPECIES), normalised_inverse(TAGS)
    assert model.species_loss.alpha.tolist() == pytest.approx(species_w.tolist(), rel=1e-6)
    assert model.tags_loss.alpha.tolist() == pytest.approx(
        (tags_w / (1 + tags_w)).tolist(), rel=1e-6
    )
    assert float(trainer.callback_metrics["focal/tags_loss/alpha/4"]) == pytest.approx(
        float(tags_w[4] / (1 + tags_w[4])), rel=1e-6
    )


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        (None, r"different numbers of classes.*species_loss: 3.*tags_loss: 5.*dict"),
        ([24, 12, 4], r"3 counts.*'tags_loss' has 5 classes"),
        ({"species_loss": SPECIES}, r"no counts for 'tags_loss'"),
        ({"species_loss": SPECIES, "tags_loss": TAGS, "tag_loss": TAGS}, r"'tag_loss'.*no focal"),
        ({"species_loss": SPECIES, "tags_loss": SPECIES}, r"3 counts.*'tags_loss' has 5"),
    ],
)
def test_heads_that_cannot_be_matched_to_counts_are_refused(tmp_path, counts, message):
    callback = ClassBalancedAlpha(counts=counts)
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[callback])
    with pytest.raises(MisconfigurationException, match=message):
        trainer.fit(TwoHeads(), TwoHeadsData())


class AlphaRecorder(Callback):
    """(step, α of the focal loss or None) for every training step, as the step used it."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, list[float] | None]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        alpha = pl_module.focal_loss.alpha
        self.seen.append((trainer.global_step - 1, None if alpha is None else alpha.tolist()))


@pytest.mark.parametrize("start", [3, 0.5])
def test_deferred_reweighting_switches_alpha_on_at_the_step(tmp_path, start):
    # DRW (Cao et al. 2019): no α for the first half of a 6-step run, class-balanced after
    callback, recorder = ClassBalancedAlpha(method="inverse", start=start), AlphaRecorder()
    model = BoringFocalClassifier()
    trainer = fast_trainer(tmp_path, max_steps=6, callbacks=[callback, recorder])
    trainer.fit(model, ImbalancedBlobsDataModule(COUNTS))
    w = torch.tensor([1 / 96, 1 / 24, 1 / 8])
    expected = (w * 3 / w.sum()).tolist()
    assert [step for step, _ in recorder.seen] == list(range(6))
    assert [alpha for _, alpha in recorder.seen[:3]] == [None] * 3
    for _, alpha in recorder.seen[3:]:
        assert alpha == pytest.approx(expected, rel=1e-6)
    assert callback.switched_at == 3


def test_deferred_reweighting_resumes_exactly(tmp_path):
    # a checkpoint before the switch (step 2) and after it (step 4) of a 6-step run: the
    # resumed run has α at every step as the uninterrupted run, the switch neither repeated
    # nor lost
    class SaveAt(Callback):
        def __init__(self, step, path):
            self.step, self.path = step, path

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == self.step:
                trainer.save_checkpoint(self.path)

    def run(extra=(), ckpt=None):
        callback, recorder = ClassBalancedAlpha(method="inverse", start=3), AlphaRecorder()
        trainer = fast_trainer(tmp_path, max_steps=6, callbacks=[callback, recorder, *extra])
        trainer.fit(BoringFocalClassifier(), ImbalancedBlobsDataModule(COUNTS), ckpt_path=ckpt)
        return recorder.seen, callback

    saves = [SaveAt(step, tmp_path / f"step{step}.ckpt") for step in (2, 4)]
    whole, _ = run(saves)
    for save in saves:
        rest, callback = run(ckpt=str(save.path))
        assert whole[: save.step] + rest == whole
        assert callback.switched_at == 3


def test_a_switch_the_run_never_reaches_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"callbacks\.class_balanced_alpha\.start"):
        fit(tmp_path, ClassBalancedAlpha(start=2))  # fit() runs 2 steps
    with pytest.raises(ValueError, match="fraction"):
        ClassBalancedAlpha(start=1.5)
    with pytest.raises(ValueError, match="alpha=False"):
        ClassBalancedAlpha(alpha=False, start=3)


def test_logit_adjusted_loss_gets_priors_from_the_counts(tmp_path):
    model = BoringFocalClassifier()
    model.focal_loss.logit_adjustment = 1.0
    callback = ClassBalancedAlpha(alpha=False)
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[callback])
    trainer.fit(model, ImbalancedBlobsDataModule(COUNTS))
    total = sum(COUNTS)
    assert model.focal_loss.class_priors.tolist() == pytest.approx([n / total for n in COUNTS])
    assert model.focal_loss.alpha is None  # alpha=False: priors only
    # with α too (logit-adjusted, class-balanced): both set
    model = BoringFocalClassifier()
    model.focal_loss.logit_adjustment = 1.0
    fast_trainer(tmp_path, max_steps=2, callbacks=[ClassBalancedAlpha()]).fit(
        model, ImbalancedBlobsDataModule(COUNTS)
    )
    assert model.focal_loss.class_priors is not None and model.focal_loss.alpha is not None


def test_priors_only_without_a_logit_adjusted_loss_is_refused(tmp_path):
    with pytest.raises(MisconfigurationException, match="nothing to set"):
        fit(tmp_path, ClassBalancedAlpha(alpha=False))
