"""AOTInductor packages of the compiled loss kernels, cached on disk across processes.

``torch.compile`` pays ~2-3 s in every new process before its first compiled call only to
import ``torch._dynamo`` and inductor, even with a warm cache. A kernel exported with
``torch.export`` and compiled by ``torch._inductor.aoti_compile_and_package`` is a ``.pt2``
file that the C++ loader ``torch._C._aoti.AOTIModelPackageLoader`` loads in ~20 ms without
either import (``torch._inductor.aoti_load_package`` would import dynamo). So the first
process that compiles a kernel variant writes its package to :func:`cache_dir`, and every
later process (a DDP rank, the next run of a sweep) loads it.

A package is keyed by everything baked into it: the kernel and its source files, the
Python arguments (ε, ignore_index, reduce, the integer γ, which arguments are ``None``),
each tensor's dtype, dims and device type, the CPU capability or GPU architecture, the torch
version and the compile options. A kernel's first shape is compiled for that static shape
(``torch.compile``'s kernels with dynamic batch dims ran 18-35% slower for sigmoid at 1e6;
the dynamic softmax packages measured as fast as static ones,
``benchmarks/results/loss_speed_startup.md``); a second batch size in the same process
compiles once for a dynamic batch dim, as ``torch.compile`` does. A warm process looks for
the static package of its shape first, then the dynamic one.
Packages are written to a temporary file and renamed, so ranks that compile the same
kernel at once never see a partial file; a file that fails to load is rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

ENV_ENABLE = "LIGHTNING_FOCAL_AOT"  # "0" sends compiled kernels to torch.compile instead
ENV_DIR = "LIGHTNING_FOCAL_AOT_DIR"

_state: dict[str, Any] = {"enabled": None, "dir": None, "warned": False, "source": None}
_CONSTANT_TYPES = (bool, int, float, str, type(None))


def configure(enabled: bool | None = None, directory: str | os.PathLike | None = None) -> None:
    """Override the environment for this process: ``enabled`` (else ``LIGHTNING_FOCAL_AOT``,
    default on) and the package directory (else :func:`cache_dir`'s default).

    Example:
        >>> from lightning_focal.losses import _aot
        >>> _aot.configure(directory="/tmp/lf-aot"); str(_aot.cache_dir())
        '/tmp/lf-aot'
        >>> _aot.configure()
    """
    _state["enabled"] = enabled
    _state["dir"] = None if directory is None else Path(directory)


def enabled() -> bool:
    """Whether compiled kernels try AOTInductor packages before ``torch.compile``."""
    if _state["enabled"] is not None:
        return _state["enabled"]
    return os.environ.get(ENV_ENABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    """Where packages live: :func:`configure`'s directory, else ``$LIGHTNING_FOCAL_AOT_DIR``,
    else ``$TORCHINDUCTOR_CACHE_DIR/lightning_focal_aot``, else
    ``~/.cache/lightning_focal/aot`` (``$XDG_CACHE_HOME`` respected)."""
    if _state["dir"] is not None:
        return _state["dir"]
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]) / "lightning_focal_aot"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lightning_focal" / "aot"


def _constant(value: Any) -> bool:
    """A Python argument that can be baked into a package and keyed by its ``repr``."""
    if isinstance(value, _CONSTANT_TYPES):
        return True
    return isinstance(value, tuple) and all(_constant(v) for v in value)


def _source_hash() -> str:
    """The kernels' source (this package's loss files): an edited kernel is a new key."""
    if _state["source"] is None:
        h = hashlib.sha256()
        for path in sorted(Path(__file__).parent.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
        _state["source"] = h.hexdigest()[:16]
    return _state["source"]


def _machine(device: torch.device) -> str:
    """The code a package holds is specific to the CPU's vector ISA or the GPU arch."""
    if device.type == "cpu":
        return "cpu-" + torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    return device.type


def batch_dim(tensors: Sequence[Tensor]) -> int | None:
    """The shared leading size that can be a dynamic dim, or ``None`` where there is none
    (batch < 2, or the same size also stands in another dim, where it may not be a batch)."""
    n = next((t.shape[0] for t in tensors if t.dim() > 0), None)
    if n is None or n < 2:
        return None
    for t in tensors:
        if n in t.shape[1:]:
            return None
    return n


def signature(
    name: str, args: Sequence[Any], options: dict[str, Any], batch: int | None
) -> str | None:
    """The text a package's key hashes: ``batch`` given, dims of that size in dim 0 are
    dynamic (written -1). ``None`` where an argument cannot be baked in."""
    parts = [name, torch.__version__, repr(sorted(options.items())), _source_hash()]
    device = None
    for arg in args:
        if isinstance(arg, Tensor):
            device = device or arg.device
            shape = list(arg.shape)
            if batch is not None and shape and shape[0] == batch:
                shape[0] = -1
            parts.append(f"T({arg.dtype},{arg.device.type},{shape})")
        elif _constant(arg):
            parts.append(f"C({type(arg).__name__}:{arg!r})")
        else:
            return None
    if device is None:
        return None
    parts.append(_machine(device))
    return "|".join(parts)


def package_path(name: str, text: str) -> Path:
    """The file of one kernel variant: readable name, hashed key."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:32]
    return cache_dir() / f"{name}-{digest}.pt2"


class Package:
    """A loaded package: call it with the kernel's tensor arguments, in order."""

    def __init__(self, path: Path, device: torch.device) -> None:
        index = device.index if device.type == "cuda" and device.index is not None else -1
        if device.type == "cuda" and index < 0:
            index = torch.cuda.current_device()
        self.loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, index)
        self.out_spec = pytree.treespec_loads(self.loader.get_call_spec()[1])
        self.path = path

    def __call__(self, tensors: list[Tensor]) -> Any:
        return pytree.tree_unflatten(self.loader.boxed_run(tensors), self.out_spec)


def load(path: Path, device: torch.device) -> Package | None:
    """The package at ``path``, or ``None`` where there is none or it does not load (a
    corrupt or foreign file: it is then rebuilt, and the rename replaces it)."""
    if not path.is_file():
        return None
    try:
        return Package(path, device)
    except Exception:
        return None


class _Bound(torch.nn.Module):
    """``fn`` with its Python arguments fixed: the module ``torch.export`` traces."""

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any]) -> None:
        super().__init__()
        self.fn = fn
        self.args = list(args)
        self.slots = [i for i, a in enumerate(args) if isinstance(a, Tensor)]

    def forward(self, *tensors: Tensor) -> Any:
        full = list(self.args)
        for i, t in zip(self.slots, tensors):
            full[i] = t
        return self.fn(*full)


def build(
    fn: Callable[..., Any],
    args: Sequence[Any],
    path: Path,
    options: dict[str, Any],
    batch: int | None,
) -> Package:
    """Export ``fn`` at ``args`` (dim 0 of size ``batch`` dynamic), compile it with
    AOTInductor into a temporary file beside ``path``, rename it there and load it."""
    from torch.export import Dim, export  # cold path only: imports dynamo

    tensors = tuple(a for a in args if isinstance(a, Tensor))
    dynamic = None
    if batch is not None:
        n = Dim("batch", min=2)
        specs = tuple({0: n} if t.dim() > 0 and t.shape[0] == batch else None for t in tensors)
        dynamic = (specs,)  # forward(*tensors): one argument, a tuple
    program = export(_Bound(fn, args), tensors, dynamic_shapes=dynamic, strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp.pt2")
    try:
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(tmp), inductor_configs=dict(options)
        )
        os.replace(tmp, path)  # atomic: other ranks see no file or a whole one
    finally:
        if tmp.exists():
            tmp.unlink()
    package = load(path, tensors[0].device)
    if package is None:
        raise RuntimeError(f"the AOTInductor package just written to {path} does not load")
    return package


class AotKernel:
    """The packages of one kernel in this process, found by their call's exact shapes."""

    def __init__(self, fn: Callable[..., Any], name: str, options: dict[str, Any]) -> None:
        self.fn = fn
        self.name = name
        self.options = options
        self.loaded: dict[tuple, Package] = {}  # exact call signature -> package
        self.seen: set[str] = set()  # dynamic key texts with a package at some shape
        self.dynamic: dict[str, Package] = {}  # dynamic key text -> its dynamic package

    def _quick_key(self, args: Sequence[Any]) -> tuple:
        return tuple(
            (a.dtype, a.device, tuple(a.shape)) if isinstance(a, Tensor) else a for a in args
        )

    def __call__(self, args: Sequence[Any]) -> Any:
        """Run through a package; raises where none can be built (the caller falls back)."""
        # a package is compiled for contiguous strides (a rare non-contiguous input is copied)
        args = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
        key = self._quick_key(args)
        package = self.loaded.get(key)
        if package is None:
            package = self._find(args)
            self.loaded[key] = package
        return package([a for a in args if isinstance(a, Tensor)])

    def _find(self, args: list[Any]) -> Package:
        tensors = [a for a in args if isinstance(a, Tensor)]
        device = tensors[0].device
        static = signature(self.name, args, self.options, None)
        if static is None:
            raise TypeError(f"{self.name}: an argument cannot be baked into a package")
        batch = batch_dim(tensors)
        family = None if batch is None else signature(self.name, args, self.options, batch)
        static_path = package_path(self.name, "static|" + static)
        package = load(static_path, device)
        if package is None and family is not None:
            package = self.dynamic.get(family)
            dynamic_path = package_path(self.name, "dynamic|" + family)
            if package is None:
                package = load(dynamic_path, device)
            if package is None and family in self.seen:
                # a second batch size in this process: compile once, for a dynamic dim
                try:
                    package = build(self.fn, args, dynamic_path, self.options, batch)
                except Exception:
                    package = None  # a kernel that specialises on its batch: per shape
            if package is not None:
                self.dynamic[family] = package
        if package is None:
            package = build(self.fn, args, static_path, self.options, None)
        if family is not None:
            self.seen.add(family)
        return package


def warn_once(name: str, err: BaseException) -> None:
    """One warning per process where a package cannot be built or run."""
    if _state["warned"]:
        return
    _state["warned"] = True
    first = str(err).splitlines()[0] if str(err) else ""
    warnings.warn(
        f"lightning_focal: AOTInductor packaging of {name} failed ({type(err).__name__}: "
        f"{first}); compiled kernels use torch.compile instead (set {ENV_ENABLE}=0 to skip "
        "this attempt).",
        RuntimeWarning,
        stacklevel=4,
    )
