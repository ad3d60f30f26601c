"""Speed and peak extra memory of the focal losses against torchvision, torch and the floors.

Every implementation of a case runs side by side in one process, interleaved: each of the
``--repeats`` rounds times every implementation once (forward, then forward+backward), in
a rotated order, and the table reports the medians. On CPU the clock is the process CPU
time (``time.process_time``; ``--clock thread|wall`` for the others) with one intra-op
thread by default, so a busy neighbour core does not inflate the numbers. On CUDA the
times come from CUDA events.

Small inputs (the sizes users call most: softmax (64, 10), (256, 100), (1024, 1000), sigmoid
(64, 10), (256, 100)) take microseconds a call, near the clock's noise, so each timed sample
runs a batch of calls, enough to last about ``--sample-ms`` (2 ms; calibrated per
implementation after the warm-up), and the tables report the time per call.

"fwd" is the forward with logits that require grad (as in a training step, so it includes
what autograd saves; the softmax eager path's forward computes the gradient itself then, so
its backward is a return: compare it on fwd+bwd); "fwd+bwd" is the forward plus
``torch.autograd.grad``. The
"default" row is what users get with no settings in a long run (backend "auto": eager
below ``COMPILE_MIN_NUMEL`` elements; above it eager until a kernel has run
``COMPILE_AFTER_ELEMENTS`` elements in the process, compiled from then on: the rows show
that steady state); the "compiled" row forces
``torch.compile`` and the "eager" row runs the same kernels without it. Compiled kernels are
compiled and warmed up before timing (the compile is not timed; ``--startup`` measures it),
afresh for each case, so that no case times a kernel recompiled with dynamic shapes.

Peak extra memory is the highest amount of memory allocated during the call above what
was allocated before it: the loss, the tensors autograd saves, every temporary and the
gradient. On CPU it is measured by replaying the allocator events that
``torch.profiler`` records (``profile_memory=True``) in time order and taking the peak of
the running sum; the script checks this on ``torch.empty(1 << 20)`` (4 MiB) first. On
CUDA it is ``torch.cuda.max_memory_allocated()`` minus the memory allocated before.

    python benchmarks/loss_speed.py --markdown            # the table in benchmarks/README.md
    python benchmarks/loss_speed.py --quick               # a short run
    python benchmarks/loss_speed.py --only sigmoid        # one loss's cases
    python benchmarks/loss_speed.py --only small          # the small sizes only
    python benchmarks/loss_speed.py --startup             # compile start-up only
    python benchmarks/loss_speed.py --device cuda --markdown
    python benchmarks/loss_speed.py --markdown --allocator system   # glibc's own trimming
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile-worker pool
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet profiler (memory probe) logging

import torch
import torch.nn.functional as F
from torch import Tensor

import lightning_focal
from lightning_focal.losses import (
    _sigmoid_kernel,
    _softmax_kernel,
    set_backend,
    sigmoid_focal_loss,
    softmax_focal_loss,
)
from lightning_focal.losses._backend import COMPILE_AFTER_ELEMENTS, COMPILE_MIN_NUMEL, Kernel

try:
    from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss
except ImportError:  # torchvision is optional: its row is skipped
    tv_sigmoid_focal_loss = None

GAMMA = 2.0
ALPHA = 0.25
MIB = float(1 << 20)
DEFAULT_ROW = "lightning_focal (default)"  # backend "auto": what users get with no settings


# ---- implementations -------------------------------------------------------------------
# Each takes (x, t) and returns a 0-d loss. Sigmoid cases use reduction="sum" (RetinaNet
# sums and divides by the positives), softmax cases use reduction="mean" (cross_entropy's
# default).


def lf_sigmoid(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(x: Tensor, t: Tensor) -> Tensor:
        set_backend(backend)
        try:
            return sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA, reduction="sum")
        finally:
            set_backend(None)

    return fn


def tv_sigmoid(x: Tensor, t: Tensor) -> Tensor:
    return tv_sigmoid_focal_loss(x, t, alpha=ALPHA, gamma=GAMMA, reduction="sum")


def textbook_sigmoid(x: Tensor, t: Tensor) -> Tensor:
    """-α_t (1-p_t)^γ log p_t as usually written (and unsafe at saturated logits)."""
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = ALPHA * t + (1 - ALPHA) * (1 - t)
    return (-alpha_t * (1 - p_t) ** GAMMA * torch.log(p_t.clamp_min(1e-12))).sum()


def bce_sigmoid(x: Tensor, t: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(x, t, reduction="sum")


def lf_softmax(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    def fn(x: Tensor, t: Tensor) -> Tensor:
        set_backend(backend)
        try:
            return softmax_focal_loss(x, t, gamma=GAMMA)
        finally:
            set_backend(None)

    return fn


def ce_softmax(x: Tensor, t: Tensor) -> Tensor:
    return F.cross_entropy(x, t)


def textbook_softmax(x: Tensor, t: Tensor) -> Tensor:
    logp = F.log_softmax(x, dim=1).gather(1, t.unsqueeze(1)).squeeze(1)
    return (-((1 - logp.exp()) ** GAMMA) * logp).mean()


def kornia_softmax(x: Tensor, t: Tensor) -> Tensor:
    """kornia.losses.focal_loss's form: every class's focal term times a one-hot target."""
    log_p = F.log_softmax(x, dim=1)
    p = log_p.exp()
    one_hot = F.one_hot(t, x.shape[1]).movedim(-1, 1).to(x.dtype)
    return (-((1.0 - p) ** GAMMA) * log_p * one_hot).sum(dim=1).mean()


# ---- bandwidth floor: read two tensors, write one ------------------------------------


class BandwidthFloor:
    """``torch.add(a, b, out=c)``: the traffic of a fused backward (read x and t, write grad)."""

    def __init__(self) -> None:
        self.out: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        x = x.detach()
        other = t if t.shape == x.shape and t.is_floating_point() else x
        if self.out is None or self.out.shape != x.shape:
            self.out = torch.empty_like(x)
        return torch.add(x, other, out=self.out)


# ---- clocks and memory -----------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_timer(device: torch.device, clock: str) -> Callable[[Callable[[], None]], float]:
    if device.type == "cuda":

        def cuda_time(fn: Callable[[], None]) -> float:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)

        return cuda_time
    now = {"process": time.process_time, "thread": time.thread_time, "wall": time.perf_counter}[
        clock
    ]

    def cpu_time(fn: Callable[[], None]) -> float:
        start = now()
        fn()
        return (now() - start) * 1e3

    return cpu_time


def cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of the CPU allocations and frees that ``fn`` makes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda item: item[0])
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def cuda_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    gc.collect()
    return cuda_peak_bytes(fn, device) if device.type == "cuda" else cpu_peak_bytes(fn)


def validate_memory(device: torch.device) -> int:
    """The memory probe must see a known allocation: ``torch.empty(1 << 20)`` is 4 MiB."""

    def alloc() -> None:
        a = torch.empty(1 << 20, device=device)
        del a

    measured = peak_bytes(alloc, device)
    if measured != 4 << 20:
        raise RuntimeError(f"memory probe measured {measured} bytes for a 4 MiB allocation")
    return measured


# ---- cases -----------------------------------------------------------------------------


@dataclass
class Impl:
    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    backward: bool = True  # False: the row has no fwd+bwd (the bandwidth floor)
    fwd: list[float] = field(default_factory=list)  # ms per call, one entry per sample
    fwd_bwd: list[float] = field(default_factory=list)
    calls_fwd: int = 1  # calls per timed sample (more than 1 for small inputs)
    calls_fwd_bwd: int = 1
    peak_fwd: int = 0
    peak_fwd_bwd: int = 0


@dataclass
class Case:
    title: str
    loss: str  # "sigmoid" or "softmax"
    shape: tuple[int, ...]
    reference: str  # the row that ratios are taken against
    floor: str
    make_inputs: Callable[[torch.device, torch.Generator], tuple[Tensor, Tensor]]
    impls: list[Impl]
    small: bool = False  # one of the small sizes (--only small)

    @property
    def default_backend(self) -> str:
        """What the default backend ("auto") runs at this size."""
        return "compiled" if math.prod(self.shape) >= COMPILE_MIN_NUMEL else "eager"


def sigmoid_inputs(shape: tuple[int, ...]):
    def make(device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        # logits around the RetinaNet prior bias -log(99); ~0.1 % positives.
        x = torch.randn(shape, generator=gen) * 1.5 - 4.6
        t = (torch.rand(shape, generator=gen) < 1e-3).float()
        return x.to(device), t.to(device)

    return make


def softmax_inputs(shape: tuple[int, ...]):
    def make(device: torch.device, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        x = torch.randn(shape, generator=gen) * 2.0
        t_shape = (shape[0], *shape[2:])
        t = torch.randint(0, shape[1], t_shape, generator=gen)
        return x.to(device), t.to(device)

    return make


def sigmoid_case(shape: tuple[int, ...]) -> Case:
    impls = [
        Impl(DEFAULT_ROW, lf_sigmoid("auto")),
        Impl("lightning_focal (compiled)", lf_sigmoid("compile")),
        Impl("lightning_focal (eager)", lf_sigmoid("eager")),
    ]
    if tv_sigmoid_focal_loss is not None:
        impls.append(Impl("torchvision.ops.sigmoid_focal_loss", tv_sigmoid))
    impls += [
        Impl("textbook formula", textbook_sigmoid),
        Impl("F.binary_cross_entropy_with_logits (floor)", bce_sigmoid),
        Impl("bandwidth floor: add(x, t, out=c)", BandwidthFloor(), backward=False),
    ]
    reference = (
        "torchvision.ops.sigmoid_focal_loss" if tv_sigmoid_focal_loss else "textbook formula"
    )
    numel = math.prod(shape)
    size = f"{numel / 1e6:g}e6 elements {shape}" if numel >= 1_000_000 else f"{shape}"
    return Case(
        f"sigmoid, {size}, γ=2, α=0.25, sum",
        "sigmoid",
        shape,
        reference,
        "F.binary_cross_entropy_with_logits (floor)",
        sigmoid_inputs(shape),
        impls,
    )


def softmax_case(shape: tuple[int, ...]) -> Case:
    impls = [
        Impl(DEFAULT_ROW, lf_softmax("auto")),
        Impl("lightning_focal (compiled)", lf_softmax("compile")),
        Impl("lightning_focal (eager)", lf_softmax("eager")),
        Impl("F.cross_entropy (floor)", ce_softmax),
        Impl("textbook focal (log_softmax, gather)", textbook_softmax),
        Impl("kornia-style focal (all classes × one-hot)", kornia_softmax),
        Impl("bandwidth floor: add(x, x, out=c)", BandwidthFloor(), backward=False),
    ]
    return Case(
        f"softmax, {tuple(shape)}, class-index targets, γ=2, mean",
        "softmax",
        shape,
        "F.cross_entropy (floor)",
        "F.cross_entropy (floor)",
        softmax_inputs(shape),
        impls,
    )


SIGMOID_1E6 = (2, 6250, 80)
SIGMOID_8E6 = (8, 12500, 80)
SOFTMAX_SMALL = ((64, 10), (256, 100), (1024, 1000))
SIGMOID_SMALL = ((64, 10), (256, 100))


def cases(quick: bool, only: str | None) -> list[Case]:
    """The cases to run: the small sizes users call first, then the large ones."""
    if quick:
        shapes = [("sigmoid", (64, 10)), ("sigmoid", SIGMOID_1E6)]
        shapes += [("softmax", (64, 10)), ("softmax", (4096, 1000))]
    else:
        shapes = [("sigmoid", s) for s in (*SIGMOID_SMALL, SIGMOID_1E6, SIGMOID_8E6)]
        shapes += [("softmax", s) for s in (*SOFTMAX_SMALL, (4096, 1000), (8, 21, 128, 128))]
    build = {"sigmoid": sigmoid_case, "softmax": softmax_case}
    all_cases = [build[loss](shape) for loss, shape in shapes]
    for case in all_cases:
        case.small = case.shape in (SIGMOID_SMALL if case.loss == "sigmoid" else SOFTMAX_SMALL)
    if only in ("sigmoid", "softmax"):
        return [c for c in all_cases if c.loss == only]
    if only in ("small", "large"):
        return [c for c in all_cases if c.small == (only == "small")]
    return all_cases


# ---- running ---------------------------------------------------------------------------


def calls_per_sample(call: Callable[[], None], timer, sample_ms: float) -> int:
    """How many calls one timed sample batches so that it lasts about ``sample_ms``.

    One call on a small input takes microseconds, close to the clock's and the
    scheduler's noise; a batch of calls per sample averages that out. Large inputs get 1.
    """
    one = statistics.median(timer(call) for _ in range(5))
    calls = max(1, math.ceil(sample_ms / max(one, 1e-4)))
    if calls == 1:
        return 1
    # A lone call pays more clock and cache overhead than one in a batch: refine once.
    batch = statistics.median(timer(batched(call, calls)) for _ in range(3))
    return max(1, math.ceil(sample_ms * calls / max(batch, 1e-4)))


def batched(call: Callable[[], None], calls: int) -> Callable[[], None]:
    def go() -> None:
        for _ in range(calls):
            call()

    return go


def run_case(
    case: Case, device: torch.device, repeats: int, warmup: int, clock: str, sample_ms: float
) -> None:
    # Forget the kernels compiled for earlier cases: after a second shape, torch.compile
    # recompiles them with dynamic shapes, which ran ~1.6x slower at 1e6 elements. Each case
    # times kernels compiled for its own shape, as a fresh process would.
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x, t = case.make_inputs(device, gen)
    x.requires_grad_(True)
    timer = make_timer(device, clock)

    def fwd(impl: Impl) -> Callable[[], None]:
        def go() -> None:
            impl.fn(x, t)

        return go

    def fwd_bwd(impl: Impl) -> Callable[[], None]:
        def go() -> None:
            (grad,) = torch.autograd.grad(impl.fn(x, t), x)
            del grad

        return go

    for impl in case.impls:
        # Warm up (includes the one-off compile of the lightning_focal kernels).
        for _ in range(warmup):
            fwd(impl)()
            if impl.backward:
                fwd_bwd(impl)()
        if impl.name == DEFAULT_ROW:
            reach_steady_state(fwd_bwd(impl), x.numel())
        sync(device)
        impl.peak_fwd = peak_bytes(fwd(impl), device)
        if impl.backward:
            impl.peak_fwd_bwd = peak_bytes(fwd_bwd(impl), device)
        impl.calls_fwd = calls_per_sample(fwd(impl), timer, sample_ms)
        if impl.backward:
            impl.calls_fwd_bwd = calls_per_sample(fwd_bwd(impl), timer, sample_ms)

    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        n = len(case.impls)
        for r in range(repeats):
            for i in range(n):
                impl = case.impls[(r + i) % n]  # rotate who goes first
                impl.fwd.append(timer(batched(fwd(impl), impl.calls_fwd)) / impl.calls_fwd)
                if impl.backward:
                    sample = timer(batched(fwd_bwd(impl), impl.calls_fwd_bwd))
                    impl.fwd_bwd.append(sample / impl.calls_fwd_bwd)
    finally:
        if gc_was_enabled:
            gc.enable()


def reach_steady_state(call: Callable[[], None], numel: int) -> None:
    """Run the default backend into the state a long run reaches: at sizes that can compile
    it runs eagerly until a kernel has done ``COMPILE_AFTER_ELEMENTS`` of work, then compiled.

    Without this the default row's kernels would cross that budget part-way through the
    timed rounds (the eager row's calls count too), mixing eager and compiled samples.
    """
    if numel < COMPILE_MIN_NUMEL:
        return
    kernels = [
        k
        for m in (_sigmoid_kernel, _softmax_kernel)
        for k in vars(m).values()
        if isinstance(k, Kernel)
    ]
    while any(0 < k.eager_elements < COMPILE_AFTER_ELEMENTS for k in kernels):
        call()


def check_agreement(case: Case, device: torch.device) -> str:
    """The lightning_focal rows must equal the reference's loss and gradient."""
    gen = torch.Generator().manual_seed(1)
    x, t = case.make_inputs(device, gen)
    x.requires_grad_(True)
    by_name = {impl.name: impl for impl in case.impls}
    ref_name = case.reference if case.loss == "sigmoid" else "textbook focal (log_softmax, gather)"
    ref = by_name[ref_name].fn(x, t)
    (ref_grad,) = torch.autograd.grad(ref, x)
    worst = 0.0
    for name in (DEFAULT_ROW, "lightning_focal (compiled)", "lightning_focal (eager)"):
        out = by_name[name].fn(x, t)
        (grad,) = torch.autograd.grad(out, x)
        rel = abs(out.item() - ref.item()) / max(abs(ref.item()), 1e-30)
        gerr = ((grad - ref_grad).abs().max() / ref_grad.abs().max().clamp_min(1e-30)).item()
        worst = max(worst, rel, gerr)
        if rel > 1e-4 or gerr > 1e-4:
            raise AssertionError(f"{case.title}: {name} disagrees with {ref_name}: {rel=} {gerr=}")
    return f"agrees with {ref_name} (max rel. error {worst:.1e})"


def fmt_ms(values: list[float]) -> str:
    """Median in ms: two decimals, or three significant digits below 1 ms (small inputs)."""
    if not values:
        return "—"
    median = statistics.median(values)
    return f"{median:.2f}" if median >= 1 else f"{median:.3g}"


def fmt_mib(nbytes: int) -> str:
    mib = nbytes / MIB
    return f"{mib:.1f}" if mib >= 1 or mib == 0 else f"{mib:.3g}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a == 0:
        return "—"
    return f"{b / a:.1f}x" if b >= a else f"1/{a / b:.1f}"


def table(head: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    """Lines of a Markdown table, or of an aligned plain-text one."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|")
        return lines + ["| " + " | ".join(row) + " |" for row in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [head, *rows]
    ]


def report(case: Case, markdown: bool, check: str) -> str:
    ref = next(impl for impl in case.impls if impl.name == case.reference)
    ref_t = statistics.median(ref.fwd_bwd)
    ref_m = ref.peak_fwd_bwd
    ref_label = "torchvision" if "torchvision" in ref.name else ref.name.split(" ")[0]
    head = [
        "implementation",
        "fwd ms",
        "fwd+bwd ms",
        "peak extra MiB fwd",
        "peak extra MiB fwd+bwd",
        f"fwd+bwd speed-up vs {ref_label}",
        f"memory vs {ref_label}",
        "calls per sample fwd / fwd+bwd",
    ]
    rows = []
    for impl in case.impls:
        t_fb = statistics.median(impl.fwd_bwd) if impl.fwd_bwd else None
        rows.append(
            [
                impl.name,
                fmt_ms(impl.fwd),
                fmt_ms(impl.fwd_bwd),
                fmt_mib(impl.peak_fwd),
                fmt_mib(impl.peak_fwd_bwd) if impl.backward else "—",
                f"{ref_t / t_fb:.2f}x" if t_fb else "—",
                f"{impl.peak_fwd_bwd / ref_m:.3f}" if impl.backward and ref_m else "—",
                f"{impl.calls_fwd} / {impl.calls_fwd_bwd}"
                if impl.backward
                else f"{impl.calls_fwd}",
            ]
        )
    lines = [f"### {case.title}" if markdown else f"== {case.title}", ""]
    lines += table(head, rows, markdown)
    lines += [
        "",
        f"lightning_focal {check}. In a long run the default backend runs "
        f"{case.default_backend} at this size ({math.prod(case.shape)} elements; it compiles "
        f"from {COMPILE_MIN_NUMEL} elements once a kernel has run {COMPILE_AFTER_ELEMENTS:.0e} "
        "elements eagerly); the default row is timed in that state.",
        "",
    ]
    return "\n".join(lines)


# ---- compile start-up: fresh processes ------------------------------------------------

# Run as ``python -c STARTUP_CHILD SPEC``: imports, then times (wall clock) the first
# forward+backward, steady calls, the first call at a second shape (a recompile) and steady
# calls at the first shape again. Prints one JSON line.
STARTUP_CHILD = """
import json, statistics, sys, time
start = time.perf_counter()
import torch
torch_done = time.perf_counter()
import lightning_focal
from lightning_focal.losses import sigmoid_focal_loss, softmax_focal_loss
lf_done = time.perf_counter()
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
gen = torch.Generator().manual_seed(0)

def inputs(shape):
    if spec["loss"] == "sigmoid":
        x = torch.randn(shape, generator=gen) * 1.5 - 4.6
        t = (torch.rand(shape, generator=gen) < 1e-3).float()
    else:
        x = torch.randn(shape, generator=gen) * 2.0
        t = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=gen)
    return x.to(spec["device"]).requires_grad_(), t.to(spec["device"])

def seconds(x, t):
    begin = time.perf_counter()
    if spec["loss"] == "sigmoid":
        loss = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0, reduction="sum")
    else:
        loss = softmax_focal_loss(x, t, gamma=2.0)
    torch.autograd.grad(loss, x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - begin

first, second = inputs(tuple(spec["first"])), inputs(tuple(spec["second"]))
out = {"import_torch": torch_done - start, "import_lf": lf_done - torch_done}
out["first"] = seconds(*first)
out["dynamo"] = "torch._dynamo" in sys.modules
out["steady"] = statistics.median(seconds(*first) for _ in range(10))
out["second"] = seconds(*second)
out["steady_second"] = statistics.median(seconds(*second) for _ in range(10))
out["steady_after"] = statistics.median(seconds(*first) for _ in range(10))
print(json.dumps(out))
"""

# (loss, first shape, second shape: another batch size, as the last batch of an epoch)
STARTUP_CASES = (
    ("sigmoid", SIGMOID_1E6, (3, 6250, 80)),
    ("softmax", (4096, 1000), (2048, 1000)),
)


def launch_env() -> dict[str, str]:
    """The environment this process started with, without the defaults this script sets.

    The start-up children should compile as a user's process does (inductor's own choice of
    compile threads, say). Linux keeps the initial environment in /proc/self/environ.
    """
    try:
        with open("/proc/self/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return dict(os.environ)
    pairs = (entry.decode(errors="surrogateescape").split("=", 1) for entry in entries if entry)
    return {key: value for key, value in (p for p in pairs if len(p) == 2)}


# the two compiled routes: AOTInductor packages (default), torch.compile alone
STARTUP_ROUTES = (("AOTInductor", "1"), ("torch.compile", "0"))


def startup_child(spec: dict, cache_dir: str, aot: str) -> dict[str, float]:
    env = {
        **launch_env(),
        "LIGHTNING_FOCAL_BACKEND": "compile",
        "LIGHTNING_FOCAL_AOT": aot,
        "TORCHINDUCTOR_CACHE_DIR": cache_dir,
    }
    env.pop("LIGHTNING_FOCAL_AOT_DIR", None)  # packages go to the fresh cache dir
    proc = subprocess.run(
        [sys.executable, "-c", STARTUP_CHILD, json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"start-up child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup(device: torch.device, threads: int, markdown: bool) -> str:
    """First compiled calls in fresh processes, with a cold and then a warm inductor cache."""
    head = [
        "loss (first shape → second shape)",
        "route",
        "first call, cold cache s",
        "first call, warm cache s",
        "second shape, cold / warm s",
        "steady call ms",
        "steady call after the second shape ms",
        "steady call at the second shape ms",
        "warm first call imports dynamo",
    ]
    rows, imports = [], []
    for loss, first, second in STARTUP_CASES:
        spec = {
            "loss": loss,
            "first": first,
            "second": second,
            "device": str(device),
            "threads": threads,
        }
        for route, aot in STARTUP_ROUTES:
            with tempfile.TemporaryDirectory(prefix="lf_inductor_") as cache_dir:
                cold = startup_child(spec, cache_dir, aot)
                warm = startup_child(spec, cache_dir, aot)
            imports += [cold, warm]
            rows.append(
                [
                    f"{loss} {first} → {second}",
                    route,
                    f"{cold['first']:.2f}",
                    f"{warm['first']:.2f}",
                    f"{cold['second']:.2f} / {warm['second']:.2f}",
                    f"{cold['steady'] * 1e3:.2f}",
                    f"{cold['steady_after'] * 1e3:.2f}",
                    f"{cold['steady_second'] * 1e3:.2f}",
                    "yes" if warm["dynamo"] else "no",
                ]
            )
    import_torch = statistics.median(r["import_torch"] for r in imports)
    import_lf = statistics.median(r["import_lf"] for r in imports)
    title = "compile start-up: fresh processes, wall time, LIGHTNING_FOCAL_BACKEND=compile"
    lines = [f"### {title}" if markdown else f"== {title}", ""]
    lines += table(head, rows, markdown)
    lines += [
        "",
        "Cold: a fresh empty TORCHINDUCTOR_CACHE_DIR; warm: a second process with the same "
        "directory. First call and second shape: one forward+backward each (the second "
        "shape recompiles). Steady: median of 10 calls at the first shape, before and after "
        "the second shape (the cold process; the compile is then for dynamic shapes). "
        "AOTInductor: kernels exported and compiled into .pt2 packages under the cache "
        "dir, loaded by the C++ loader (LIGHTNING_FOCAL_AOT=1, the default; the first "
        "shape keeps its static package, the second gets a dynamic one); torch.compile: "
        "LIGHTNING_FOCAL_AOT=0.",
        f"Import (median of {len(imports)} fresh processes): torch {import_torch:.2f} s, "
        f"then lightning_focal {import_lf:.3f} s.",
        "",
    ]
    return "\n".join(lines)


def median_fwd_bwd(case: Case, name: str) -> float:
    return statistics.median(next(impl for impl in case.impls if impl.name == name).fwd_bwd)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary(all_cases: list[Case], markdown: bool) -> str:
    """Every case's fwd+bwd figures in one table: the default row against the reference,
    the textbook formula, and (peak extra memory) the reference."""
    head = [
        "case",
        "lightning_focal ms",
        "compiled ms",
        "eager ms",
        "reference ms",
        "vs reference",
        "textbook ms",
        "vs textbook",
        "peak memory vs reference",
    ]
    rows = []
    for case in all_cases:
        by_name = {impl.name: impl for impl in case.impls}
        textbook = next(n for n in by_name if n.startswith("textbook"))
        t = {n: median_fwd_bwd(case, n) for n in by_name if by_name[n].backward}
        lf, ref = by_name[DEFAULT_ROW], by_name[case.reference]
        rows.append(
            [
                f"{case.loss} {case.shape}",
                f"{t[DEFAULT_ROW]:.3g}",
                f"{t['lightning_focal (compiled)']:.3g}",
                f"{t['lightning_focal (eager)']:.3g}",
                f"{t[case.reference]:.3g} ({case.reference.split(' (')[0]})",
                f"{t[DEFAULT_ROW] / t[case.reference]:.2f}x",
                f"{t[textbook]:.3g}",
                f"{t[DEFAULT_ROW] / t[textbook]:.2f}x",
                f"{lf.peak_fwd_bwd / ref.peak_fwd_bwd:.3f}" if ref.peak_fwd_bwd else "—",
            ]
        )
    title = "### all cases: forward+backward, medians" if markdown else "== all cases"
    return "\n".join([title, "", *table(head, rows, markdown), ""])


def targets(all_cases: list[Case]) -> str:
    """The issues' targets for the cases that ran, judged on the default row's fwd+bwd."""
    lines = [f"Targets ({DEFAULT_ROW}, fwd+bwd medians):", ""]
    for case in all_cases:
        if not case.small:
            continue
        ratio = median_fwd_bwd(case, DEFAULT_ROW) / median_fwd_bwd(case, case.reference)
        bound = 2.0 if case.loss == "softmax" else 1.0
        lines.append(
            f"- {case.loss} {case.shape}: {ratio:.2f}x the time of {case.reference} "
            f"(target <= {bound:.1f}x): {verdict(ratio <= bound)}"
        )
    for case in all_cases:
        if case.small:
            continue
        by_name = {impl.name: impl for impl in case.impls}
        lf, ref = by_name[DEFAULT_ROW], by_name[case.reference]
        t_lf, t_ref = statistics.median(lf.fwd_bwd), statistics.median(ref.fwd_bwd)
        if case.loss == "sigmoid":
            speed = t_ref / t_lf
            mem = lf.peak_fwd_bwd / ref.peak_fwd_bwd
            lines.append(
                f"- {case.title}: {speed:.1f}x faster than {ref.name} (target >= 8x): "
                f"{verdict(speed >= 8.0)}; {mem:.3f} of its peak extra memory "
                f"(target <= 0.125): {verdict(mem <= 1 / 8)}"
            )
        else:
            ratio = t_lf / t_ref
            lines.append(
                f"- {case.title}: {ratio:.2f}x the time of F.cross_entropy (target <= 1.00): "
                f"{verdict(ratio <= 1.0)}"
            )
    vs_textbook = []
    for case in all_cases:
        textbook = next(impl.name for impl in case.impls if impl.name.startswith("textbook"))
        ratio = median_fwd_bwd(case, DEFAULT_ROW) / median_fwd_bwd(case, textbook)
        vs_textbook.append((ratio, f"{case.loss} {case.shape}"))
    if vs_textbook:
        worst = max(vs_textbook)
        each = ", ".join(f"{name} {ratio:.2f}x" for ratio, name in vs_textbook)
        lines.append(
            f"- never slower than the textbook formula: at most {worst[0]:.2f}x its time "
            f"({worst[1]}; target <= 1.00x at every size): {verdict(worst[0] <= 1.0)} [{each}]"
        )
    return "\n".join(lines)


def retain_freed_memory() -> bool:
    """Make glibc keep freed heap memory (no trimming, mmap only from 32 MiB up).

    By default glibc returns large freed blocks to the OS, so the next allocation of that
    size page-faults and zero-fills fresh pages: a cost of a few ms that lands on whichever
    implementation allocates next, depending on what ran before it in the round. With
    ``--allocator retain`` (the default) every implementation reuses warm heap memory;
    ``--allocator system`` keeps glibc's behaviour.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or platform.system() != "Linux":
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1
    return ok and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="interleaved rounds (15; quick 5)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per implementation")
    parser.add_argument(
        "--clock",
        choices=("process", "thread", "wall"),
        default="process",
        help="CPU clock: process CPU time (default), thread CPU time, wall time",
    )
    parser.add_argument(
        "--allocator",
        choices=("system", "retain"),
        default="retain",
        help="CPU: 'retain' freed heap memory (default: no page-fault noise) or 'system' glibc",
    )
    parser.add_argument(
        "--sample-ms",
        type=float,
        default=2.0,
        help="each timed sample batches enough calls to last about this long (small inputs)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one small and one large case per loss, 5 rounds"
    )
    parser.add_argument(
        "--only",
        choices=("sigmoid", "softmax", "small", "large"),
        default=None,
        help="run one loss's cases, or only the small (or large) sizes",
    )
    parser.add_argument(
        "--startup",
        action="store_true",
        help="only the compile start-up section (fresh processes); a full --markdown run has it",
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    torch.set_num_threads(args.threads)
    allocator = args.allocator
    if device.type == "cpu" and allocator == "retain" and not retain_freed_memory():
        allocator = "system (retain unavailable)"
    repeats = args.repeats or (5 if args.quick else 15)
    validate_memory(device)

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, CUDA events"
    else:
        where = f"{cpu_model()}, {args.threads} thread(s), {args.clock} time, {allocator} allocator"
    print(f"# lightning_focal {getattr(lightning_focal, '__version__', '?')} loss benchmark")
    print()
    print(
        f"torch {torch.__version__}, Python {platform.python_version()}, {where}; "
        f"{repeats} interleaved rounds, medians of per-call times (a sample batches enough "
        f"calls to last ~{args.sample_ms:g} ms); memory probe checked on a 4 MiB allocation."
    )
    print(
        f"Command: python benchmarks/loss_speed.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip()
    )
    print()
    start = time.perf_counter()
    all_cases = [] if args.startup else cases(args.quick, args.only)
    for case in all_cases:
        run_case(case, device, repeats, args.warmup, args.clock, args.sample_ms)
        print(report(case, args.markdown, check_agreement(case, device)), flush=True)
    full_markdown_run = args.markdown and not args.quick and args.only is None
    if args.startup or full_markdown_run:
        print(startup(device, args.threads, args.markdown), flush=True)
    if all_cases:
        print(summary(all_cases, args.markdown))
        print(targets(all_cases))
    print()
    print(f"(benchmark wall time {time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
