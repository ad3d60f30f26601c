"""LossCDF: the normalised-loss CDF (Lin et al. 2017, Fig. 4), its sampling, and a real fit."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional as F

pytest.importorskip("torchvision")

import lightning.pytorch as pl
from _detection_utils import detection_loader, images_and_targets, small_fcos, small_retinanet
from _trainer_utils import fast_trainer
from lightning.pytorch.loggers import Logger
from torchvision.ops import sigmoid_focal_loss as torchvision_sigmoid_focal_loss

from lightning_focal import DenseFocalLoss, FocalLossMixin
from lightning_focal.callbacks import LossCDF
from lightning_focal.callbacks.loss_cdf import (
    focal_loss_of_samples,
    hardest_share,
    normalized_loss_cdf,
)
from lightning_focal.detection import focal_loss_of, with_focal_loss

# -- the math --------------------------------------------------------------------------------


def test_cdf_of_a_known_input():
    # sorted: 0, 1, 1, 2, 4 (total 8) -> cumulative 0, 1/8, 2/8, 4/8, 8/8
    fraction, cumulative = normalized_loss_cdf(torch.tensor([4.0, 1.0, 0.0, 2.0, 1.0]))
    torch.testing.assert_close(
        fraction, torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        cumulative, torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0], dtype=torch.float64)
    )
    assert hardest_share(torch.tensor([4.0, 1.0, 0.0, 2.0, 1.0]), 0.2) == 0.5
    assert hardest_share(torch.tensor([4.0, 1.0, 0.0, 2.0, 1.0]), 0.4) == 0.75


def test_cdf_of_random_losses_against_a_loop():
    losses = torch.rand(257, generator=torch.Generator().manual_seed(0)) ** 3
    fraction, cumulative = normalized_loss_cdf(losses)
    ordered = sorted(losses.double().tolist())
    total, running = sum(ordered), 0.0
    for i, value in enumerate(ordered):
        running += value
        assert abs(float(cumulative[i]) - running / total) < 1e-12
        assert abs(float(fraction[i]) - (i + 1) / 257) < 1e-15
    assert bool((cumulative.diff() >= 0).all())


def test_cdf_edge_cases():
    fraction, cumulative = normalized_loss_cdf(torch.zeros(4))
    torch.testing.assert_close(cumulative, fraction)  # no loss at all: the diagonal
    with pytest.raises(ValueError, match="at least one"):
        normalized_loss_cdf(torch.empty(0))
    with pytest.raises(ValueError, match="non-negative"):
        normalized_loss_cdf(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="fraction"):
        hardest_share(torch.ones(3), 0.0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_sample_loss_is_torchvisions_focal_loss_without_alpha(gamma):
    logits = torch.linspace(-12, 12, 97, dtype=torch.float64)
    for target in (torch.ones_like(logits), torch.zeros_like(logits)):
        z = torch.where(target > 0.5, logits, -logits)
        expected = torchvision_sigmoid_focal_loss(logits, target, alpha=-1, gamma=gamma)
        torch.testing.assert_close(focal_loss_of_samples(z, gamma), expected)
    if gamma == 0.0:
        bce = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
        torch.testing.assert_close(focal_loss_of_samples(logits, 0.0), bce)


def test_focal_loss_moves_the_negatives_budget_to_the_hard_ones():
    # 99 % easy negatives (p_t = 0.99) and 1 % hard ones (p_t = 0.4): the paper's picture
    z = torch.tensor([4.6] * 9900 + [-0.4] * 100, dtype=torch.float64)
    easy, hard = torch.sigmoid(torch.tensor([4.6, -0.4], dtype=torch.float64)).tolist()
    for gamma in (0.0, 0.5, 1.0, 2.0):
        fl_easy = -((1 - easy) ** gamma) * math.log(easy)
        fl_hard = -((1 - hard) ** gamma) * math.log(hard)
        expected = 100 * fl_hard / (100 * fl_hard + 9900 * fl_easy)
        got = hardest_share(focal_loss_of_samples(z, gamma), 0.01)
        assert abs(got - expected) < 1e-9, gamma
    # CE: the hard 1 % carry about half; γ=2: nearly all
    assert 0.4 < hardest_share(focal_loss_of_samples(z, 0.0), 0.01) < 0.5
    assert hardest_share(focal_loss_of_samples(z, 2.0), 0.01) > 0.999


# -- sampling --------------------------------------------------------------------------------


def test_add_splits_positives_negatives_and_drops_ignored_anchors():
    cdf = LossCDF()
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0], [1.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]])
    keep = torch.tensor([[1.0, 0.0, 1.0]])  # the middle anchor is ignored
    cdf.add(logits, target, keep)
    assert cdf.num_samples == {"positives": 2, "negatives": 2}
    torch.testing.assert_close(cdf._samples["positives"].sort().values, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(cdf._samples["negatives"].sort().values, torch.tensor([-1.0, 1.0]))
    with pytest.raises(ValueError, match="does not match"):
        cdf.add(logits, target[..., :1])


def test_subsample_is_bounded_and_uniform_over_batches():
    # ten batches of very different sizes; a uniform sample keeps each in proportion
    cdf = LossCDF(max_samples=2000, seed=1)
    sizes = [100, 5000, 300, 2000, 50, 4000, 1000, 700, 3000, 850]  # 17,000 in all
    for batch, size in enumerate(sizes):
        cdf.add(torch.full((1, size, 1), float(batch)), torch.zeros(1, size, 1))
        assert cdf.num_samples["negatives"] == min(2000, sum(sizes[: batch + 1]))
    kept = -cdf._samples["negatives"]  # negatives are stored as -logit
    for batch, size in enumerate(sizes):
        expected = 2000 * size / sum(sizes)
        assert abs(int((kept == batch).sum()) - expected) < 4 * expected**0.5 + 3, batch


def test_argument_checks():
    with pytest.raises(ValueError, match="gammas"):
        LossCDF(gammas=(0.0, -1.0))
    with pytest.raises(ValueError, match="num_batches"):
        LossCDF(num_batches=0)
    with pytest.raises(ValueError, match="no samples"):
        LossCDF().draw("x.png")


# -- running a detector ----------------------------------------------------------------------


@pytest.mark.parametrize("build", [small_retinanet, small_fcos])
def test_collect_runs_the_loss_path_without_changing_the_model(build):
    torch.manual_seed(0)
    model = with_focal_loss(build())
    images, targets = images_and_targets()
    anchors = _num_anchors(model, images)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cdf = LossCDF()
    cdf.collect(model, (torch.stack(images), targets))

    loss = focal_loss_of(model)
    positives = int(loss.last_num_positives)
    assert cdf.num_samples["positives"] == positives > 0
    num_classes = model.head.classification_head.num_classes
    all_samples = anchors * num_classes
    if build is small_fcos:
        assert cdf.num_samples["negatives"] == all_samples - positives
    else:  # RetinaNet drops its anchors between the IoU thresholds
        assert 0 < cdf.num_samples["negatives"] < all_samples - positives
    assert all(m.training for m in model.modules())  # flags restored
    for key, value in before.items():  # BatchNorm statistics untouched
        assert torch.equal(model.state_dict()[key], value), key
    assert not any(loss._forward_hooks.values())  # its hook removed

    cdf.collect(model, (images, targets))  # a list of images works as well
    assert cdf.num_samples["positives"] == 2 * positives


@torch.no_grad()
def _num_anchors(model, images) -> int:
    model.eval()
    image_list, _ = model.transform(images)
    features = list(model.backbone(image_list.tensors).values())
    return sum(a.shape[0] for a in model.anchor_generator(image_list, features))


def test_collect_refuses_what_it_cannot_run():
    cdf = LossCDF()
    with pytest.raises(TypeError, match="holds none"):
        cdf.collect(torch.nn.Linear(2, 2), None)
    with pytest.raises(TypeError, match="unpack_batch"):
        cdf.collect(with_focal_loss(small_fcos()), {"images": 1})


def test_draw_writes_a_png(tmp_path):
    cdf = LossCDF()
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 500, 3, generator=generator) * 3 - 2
    target = (torch.rand(2, 500, 3, generator=generator) < 0.02).float()
    cdf.add(logits, target)
    path = cdf.draw(tmp_path / "cdf" / "figure.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(cdf.summary()) == {
        f"{group}/gamma={g}" for group in ("positives", "negatives") for g in (0.0, 0.5, 1.0, 2.0)
    }


# -- a fit -------------------------------------------------------------------------------------


class ImageLogger(Logger):
    """Stands in for WandbLogger: LossCDF calls its ``log_image``."""

    def __init__(self, save_dir) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self.images: list[tuple[str, list, int | None]] = []

    name = "fake"
    version = 0

    @property
    def save_dir(self) -> str:
        return self._save_dir

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        self.images.append((key, images, step))


class UserDetector(FocalLossMixin, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        loss = DenseFocalLoss(gamma=2.0, normalization="batch")
        self.model = with_focal_loss(small_fcos(), loss)
        self.configure_focal_loss(loss)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        return sum(self.model(list(images), list(targets)).values())

    def validation_step(self, batch, batch_idx):
        images, _ = batch
        return self.model(list(images))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def app_detector():
    pytest.importorskip("timm")
    from lightning_focal.models import DenseDetector, retinanet

    return DenseDetector(retinanet(num_classes=4, image_size=64, fpn_channels=16))


def stacked_loader():
    loader = detection_loader(batches=3, batch_size=2)
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=2,
        collate_fn=lambda b: (torch.stack([i for i, _ in b]), [t for _, t in b]),
    )


@pytest.mark.parametrize("make_module", [UserDetector, app_detector])
def test_fit_draws_after_validation(tmp_path, make_module):
    torch.manual_seed(0)
    module = make_module()
    cdf = LossCDF(num_batches=2)
    logger = ImageLogger(tmp_path)
    trainer = fast_trainer(
        tmp_path,
        max_epochs=2,
        logger=logger,
        callbacks=[cdf],
        limit_val_batches=3,
        num_sanity_val_steps=1,
    )
    trainer.fit(module, stacked_loader(), stacked_loader())
    assert len(cdf.saved) == 2  # one per validation epoch, none for the sanity check
    directory = tmp_path / "loss_cdf"  # trainer.log_dir: the logger's save_dir here
    assert trainer.log_dir == str(tmp_path)
    assert [p.parent for p in cdf.saved] == [directory] * 2 and all(p.exists() for p in cdf.saved)
    assert [key for key, _, _ in logger.images] == ["val/loss_cdf"] * 2
    assert [step for _, _, step in logger.images] == [3, 6]

    assert cdf.state_dict() == {"validations": 2}

    # on demand, outside a fit
    on_demand = LossCDF()
    for batch in list(stacked_loader())[:2]:
        on_demand.collect(module, batch)
    assert on_demand.num_samples["positives"] > 0


def test_counts_validations_not_epochs(tmp_path):
    # validation every 2nd epoch, drawing at every 2nd validation: epochs 4 and 8 of 8
    torch.manual_seed(0)
    cdf = LossCDF(num_batches=1, every_n_validations=2)
    trainer = fast_trainer(
        tmp_path,
        max_epochs=8,
        callbacks=[cdf],
        limit_train_batches=1,
        limit_val_batches=1,
        check_val_every_n_epoch=2,
    )
    trainer.fit(UserDetector(), stacked_loader(), stacked_loader())
    assert [int(p.name.split("epoch")[1][:3]) for p in cdf.saved] == [3, 7]
    resumed = LossCDF(every_n_validations=2)
    resumed.load_state_dict(cdf.state_dict())
    assert resumed.validations == 4
