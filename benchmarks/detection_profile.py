"""Where one detection training step spends its time, with the package's loss and torchvision's.

One training step of torchvision's RetinaNet / FCOS (built as the app builds them, on a timm
``test_resnet`` FPN, on a batch of the embedded ``shapes`` data) is cut into the stages of
torchvision's ``forward``, each run and timed on its own, in order:

* ``transform``: resize and normalise (``GeneralizedRCNNTransform``);
* ``backbone + FPN``: the timm feature extractor and the feature pyramid;
* ``head forward``: the classification and box towers;
* ``anchors``: the anchor generator;
* ``matcher``: assigning anchors to boxes (``RetinaNet.compute_loss``'s IoU matcher, FCOS's
  centre sampling and scale ranges), timed by running the detector's ``compute_loss`` with
  the head's loss replaced by a stub;
* ``losses (targets + terms)``: the head's ``compute_loss`` — target building, the
  classification term, the box (and centre-ness) terms;
* ``backward``: ``loss.backward()`` through the whole model;

and, for the loss alone, ``classification fwd+bwd (to logits)``: the classification term and
its gradient with respect to detached logits, targets prebuilt — the part a focal-loss
implementation decides.

Two variants share one model: ``lightning_focal`` (the detector's heads:
``DenseFocalLoss``, fused kernel) and ``torchvision`` (the same head instances with
torchvision's ``RetinaNetClassificationHead.compute_loss`` / ``FCOSHead.compute_loss`` and
``torchvision.ops.sigmoid_focal_loss``). Each of ``--steps`` rounds runs both variants in a
rotated order, after ``--warmup`` untimed rounds; the table gives medians. One intra-op
thread; the clock is the process CPU time (``--clock wall`` for wall time).

    python benchmarks/detection_profile.py                       # the README table
    python benchmarks/detection_profile.py --steps 5 --warmup 1  # quick
    python benchmarks/detection_profile.py --trace               # + torch.profiler top ops
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

import lightning_focal
from lightning_focal.data import ShapesDataModule
from lightning_focal.models import DenseDetector, fcos, retinanet
from lightning_focal.models._detection_heads import one_hot_targets

RESULTS = Path(__file__).resolve().parent / "results" / "detection_profile.md"
VARIANTS = ("lightning_focal", "torchvision")
STAGES = (
    "transform",
    "backbone + FPN",
    "head forward",
    "anchors",
    "matcher",
    "losses (targets + terms)",
    "backward",
)
LOSS_ONLY = "classification fwd+bwd (to logits)"


def build(model: str, image_size: int) -> torch.nn.Module:
    """The detector as ``conf/model/<model>.yaml`` builds it (no pretrained weights)."""
    common = dict(num_classes=3, image_size=image_size, fpn_channels=64, prior_probability=0.01)
    if model == "retinanet":
        built = retinanet(
            out_indices=[1, 2, 3, 4],
            anchor_sizes=[8, 16, 32, 64, 128, 256],
            aspect_ratios=[1.0],
            head_group_norm=True,
            **common,
        )
    else:
        built = fcos(box_activation="exp", **common)
    return DenseDetector(built).detector.train()


def batch(batch_size: int, image_size: int, seed: int) -> tuple[list[Tensor], list[dict]]:
    data = ShapesDataModule(batch_size=batch_size, seed=seed, image_size=image_size)
    data.setup("fit")
    images, targets = next(iter(data.train_dataloader()))
    return list(images.unbind(0)), targets


class Clock:
    def __init__(self, kind: str) -> None:
        self.now = time.process_time if kind == "process" else time.perf_counter


def split_head_loss(model: torch.nn.Module, variant: str) -> Callable[..., dict[str, Tensor]]:
    """``head.compute_loss`` of ``variant`` for the model's head instance."""
    head = model.head
    if isinstance(model, RetinaNet):
        classification = head.classification_head
        regression = head.regression_head

        def retinanet_losses(targets, head_outputs, anchors, matched_idxs):
            if variant == "torchvision":
                cls = RetinaNetClassificationHead.compute_loss(
                    classification, targets, head_outputs, matched_idxs
                )
            else:
                cls = classification.compute_loss(targets, head_outputs, matched_idxs)
            box = regression.compute_loss(targets, head_outputs, anchors, matched_idxs)
            return {"classification": cls, "bbox_regression": box}

        return retinanet_losses
    if variant == "torchvision":
        return lambda *args: FCOSHead.compute_loss(head, *args)
    return head.compute_loss


def classification_only(model: torch.nn.Module, variant: str, cls_logits: Tensor, targets, matched):
    """The classification term alone, as each variant computes it, on prebuilt targets."""
    matched_all = torch.stack(matched)
    one_hot = one_hot_targets(cls_logits, [t["labels"] for t in targets], matched_all)
    logits = cls_logits.detach().requires_grad_()
    loss_module = model.head.classification_head.focal_loss
    if isinstance(model, RetinaNet):
        valid = matched_all != -2  # Matcher.BETWEEN_THRESHOLDS

        def run() -> None:
            if variant == "torchvision":  # per image, as RetinaNetClassificationHead does
                terms = [
                    tv_sigmoid_focal_loss(
                        logits[i][valid[i]], one_hot[i][valid[i]], reduction="sum"
                    )
                    / max(1, int((matched_all[i] >= 0).sum()))
                    for i in range(len(targets))
                ]
                loss = sum(terms) / len(terms)
            else:
                loss = loss_module(logits, one_hot, weight=valid.to(logits.dtype))
            torch.autograd.grad(loss, logits)

        return run
    num_foreground = max(1, int((matched_all >= 0).sum()))

    def run() -> None:
        if variant == "torchvision":
            loss = tv_sigmoid_focal_loss(logits, one_hot, reduction="sum") / num_foreground
        else:
            loss = loss_module(logits, one_hot)
        torch.autograd.grad(loss, logits)

    return run


def one_step(
    model: torch.nn.Module, variant: str, images, targets, clock: Clock
) -> tuple[dict[str, float], dict[str, float]]:
    """Times (ms) of each stage of one training step, and what it saw."""
    times: dict[str, float] = {}

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        start = clock.now()
        out = fn()
        times[stage] = 1e3 * (clock.now() - start)
        return out

    model.zero_grad(set_to_none=True)
    image_list, prepared = timed("transform", lambda: model.transform(images, targets))
    features = timed("backbone + FPN", lambda: list(model.backbone(image_list.tensors).values()))
    head_outputs = timed("head forward", lambda: model.head(features))
    anchors = timed("anchors", lambda: model.anchor_generator(image_list, features))

    captured: dict[str, Any] = {}
    model.head.compute_loss = lambda t, o, a, matched: captured.setdefault("matched", matched)
    try:
        if isinstance(model, FCOS):
            per_level = [x.size(2) * x.size(3) for x in features]
            timed("matcher", lambda: model.compute_loss(prepared, head_outputs, anchors, per_level))
        else:
            timed("matcher", lambda: model.compute_loss(prepared, head_outputs, anchors))
    finally:
        del model.head.compute_loss  # back to the class's method
    assert model.head.compute_loss.__func__ is type(model.head).compute_loss
    matched = captured["matched"]

    head_loss = split_head_loss(model, variant)
    losses = timed(
        "losses (targets + terms)", lambda: head_loss(prepared, head_outputs, anchors, matched)
    )
    total = sum(losses.values())
    timed("backward", total.backward)
    run = classification_only(model, variant, head_outputs["cls_logits"], prepared, matched)
    timed(LOSS_ONLY, run)
    seen = {
        "anchors per image": float(head_outputs["cls_logits"].shape[1]),
        "positives per image": float(sum(int((m >= 0).sum()) for m in matched)) / len(matched),
        "classification": float(losses["classification"].detach()),
    }
    return times, seen


def profile(args: argparse.Namespace, model_name: str) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = build(model_name, args.image_size)
    images, targets = batch(args.batch_size, args.image_size, args.seed)
    clock = Clock(args.clock)
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    seen: dict[str, dict[str, float]] = {}
    for round_index in range(args.warmup + args.steps):
        order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            times, seen[variant] = one_step(model, variant, images, targets, clock)
            if round_index >= args.warmup:
                for stage, ms in times.items():
                    samples[variant].setdefault(stage, []).append(ms)
    assert abs(
        seen["lightning_focal"]["classification"] - seen["torchvision"]["classification"]
    ) < (1e-4 * max(1.0, abs(seen["torchvision"]["classification"]))), (
        "the two variants must compute the same classification loss"
    )
    medians = {v: {s: statistics.median(ms) for s, ms in samples[v].items()} for v in VARIANTS}
    trace = None
    if args.trace:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        trace = {}
        for variant in VARIANTS:
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                one_step(model, variant, images, targets, clock)
            trace[variant] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return {"medians": medians, "seen": seen["lightning_focal"], "trace": trace}


def markdown(args: argparse.Namespace, results: dict[str, dict[str, Any]], wall_s: float) -> str:
    lines = [
        "# One detection training step, stage by stage",
        "",
        f"`python benchmarks/detection_profile.py {' '.join(sys.argv[1:])}`".replace(" `", "`"),
        "",
        f"torch {torch.__version__}, lightning_focal {lightning_focal.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread, "
        f"clock: {args.clock} time, median of {args.steps} steps after {args.warmup} warm-up, "
        f"both variants interleaved; batch {args.batch_size} x {args.image_size}x{args.image_size} "
        f"shapes images (seed {args.seed}); {wall_s:.0f} s in all.",
        "",
    ]
    for model_name, result in results.items():
        med, seen = result["medians"], result["seen"]
        step_stages = [s for s in STAGES]
        totals = {v: sum(med[v][s] for s in step_stages) for v in VARIANTS}
        lines += [
            f"## {model_name}: {seen['anchors per image']:.0f} anchors per image, "
            f"{seen['positives per image']:.1f} positives per image "
            f"({100 * seen['positives per image'] / seen['anchors per image']:.2f} %)",
            "",
            "| stage | lightning_focal ms | share | torchvision ms | share |",
            "|---|---:|---:|---:|---:|",
        ]
        for stage in step_stages:
            a, b = med["lightning_focal"][stage], med["torchvision"][stage]
            lines.append(
                f"| {stage} | {a:.1f} | {100 * a / totals['lightning_focal']:.0f} % "
                f"| {b:.1f} | {100 * b / totals['torchvision']:.0f} % |"
            )
        lines.append(
            f"| **step (sum)** | **{totals['lightning_focal']:.1f}** | | "
            f"**{totals['torchvision']:.1f}** | |"
        )
        a, b = med["lightning_focal"][LOSS_ONLY], med["torchvision"][LOSS_ONLY]
        lines += [f"| {LOSS_ONLY} | {a:.2f} | | {b:.2f} | |", ""]
        if result["trace"]:
            for variant, table in result["trace"].items():
                lines += [
                    f"torch.profiler, {variant}, top ops by self CPU time:",
                    "",
                    "```",
                    table,
                    "```",
                    "",
                ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["retinanet", "fcos"], choices=["retinanet", "fcos"]
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=["process", "wall"], default="process")
    parser.add_argument("--trace", action="store_true", help="add torch.profiler's top ops")
    parser.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {name: profile(args, name) for name in args.models}
    text = markdown(args, results, time.perf_counter() - start)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
