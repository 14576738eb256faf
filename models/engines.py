"""Inference engines for a loaded network: eager, channels-last, torch.compile, and a measured ``auto``.

Any network whose first input is an image batch ``(B, C, H, W)`` or volume batch ``(B, C, D, H, W)``;
other inputs (Scale-MAE's ``res``) pass through unchanged, and a method other than ``forward``
(``forward_features``, ``forward_valid``) can be the one that runs (``method=``).

An engine changes how a network's forward runs, never what it computes beyond float rounding:

- ``eager``: the module as built (the reference).
- ``channels-last``: a copy of the module and every input in ``torch.channels_last`` memory format
  (``channels_last_3d`` for volumes; oneDNN's preferred layout for convolutions on CPUs).
- ``compile``: ``torch.compile`` with the inductor backend on a channels-last copy of the module
  (channels-last inputs too: 1.3-1.7x faster than compiling NCHW for the demo NAFNet; ``freezing``: weights
  folded in as constants, as inductor recommends for CPU inference; dynamic shapes after the second
  input size, so a batch of images of many sizes compiles at most twice). Inductor builds C++ kernels:
  it needs a C++ compiler (``g++`` by default, ``$CXX``, or :data:`CXX_ENV`). Without one, or when
  compiling fails, the engine falls back to eager and says why (:attr:`EngineModule.fallback`); a
  batch never fails because of an engine.
- ``openvino``: the network converted to OpenVINO IR and run by its CPU plugin (optional extra
  ``imagingflows[openvino]``; :mod:`imagingflows.models.engine_openvino`: IR cached on disk, f32 or bf16
  inference precision from the autocast in force). Not installed, a CUDA device or a failed conversion:
  eager, with the reason.
- ``auto``: the fastest engine that is installed and *measured to agree* with eager float32 for this
  model and device, by the model's own rule (:attr:`~imagingflows.models.registry.ModelSpec.agreement`).

Measurement (:func:`measure`): one forward of each engine on a small synthetic input
(``MEASURE_SIDE`` pixels square, rounded up to the network's grid), timed after a warm-up call, and
its output compared with eager float32 on the same input. It runs once per (weights sha256, engine,
precision, torch version, device and CPU capability, input shape bucket) and is cached on disk.

What is cached where (:func:`cache_root`: ``$IMAGINGFLOWS_CACHE``, default ``~/.cache/imagingflows``):

- ``engines/<key sha256[:20]>.json``: one measurement (the key it was made for, seconds of the first
  and of a steady call, the agreement value and whether it holds). A file that does not parse, has
  another schema or names another key is measured again and rewritten, never trusted.
- ``engines/inductor/``: inductor's own on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, unless the user set
  it): the FX graph cache of compiled kernels, so a nightly batch pays the C++ compilation once (a warm
  process still traces the model with dynamo, a few seconds).

Networks with whole-image pooling (NAFNet's channel attention through
:class:`~imagingflows.models.global_pool.GlobalAvgPool2d`): while :func:`~imagingflows.models.tiling.predict_tiles`
runs the measuring / fixed passes of tiled pooling, the eager module runs (the accelerated copy has plain
pools, which dynamo can trace without graph breaks); one whole-image forward, and tiles without those
passes, run the accelerated copy.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

ENGINES = ("auto", "eager", "channels-last", "compile", "openvino")
#: the engines :func:`measure` can time (``auto`` is a choice among them)
CONCRETE = ENGINES[1:]
CACHE_ENV = "IMAGINGFLOWS_CACHE"
#: the C++ compiler inductor is given (a name on PATH or a path); tests point it at a missing file
CXX_ENV = "IMAGINGFLOWS_CXX"
SCHEMA = 1
MEASURE_SIDE = 256  # input pixels per side of the measuring forward (rounded up to the network's grid): big enough
#: that per-call overheads do not decide the ranking, small enough for HAT (a few seconds)
#: auto picks a faster engine only when it saves at least this share of eager's time (timing noise)
AUTO_MARGIN = 0.05
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- where things are cached

def cache_root() -> Path:
    """``$IMAGINGFLOWS_CACHE`` or ``~/.cache/imagingflows``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "imagingflows"


def engines_dir() -> Path:
    return cache_root() / "engines"


def use_inductor_cache() -> Path:
    """Point inductor's on-disk caches (FX graph cache included) at ``engines/inductor`` unless the user
    chose a folder with ``TORCHINDUCTOR_CACHE_DIR``; returns the folder used."""
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # importing inductor's config sets the variable to its default itself: that is no choice of the user's
    if not folder or os.path.abspath(folder) == os.path.abspath(default_cache_dir()):
        folder = str(engines_dir() / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    inductor_config.fx_graph_cache = True
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


# ----------------------------------------------------------------------------- the C++ compiler

def find_cxx() -> tuple[str | None, str]:
    """The C++ compiler inductor would use: ``(path, "")``, or ``(None, why not)``.

    Looks at ``$IMAGINGFLOWS_CXX`` when set (only there), else at inductor's own search list
    (``torch._inductor.config.cpp.cxx``: ``$CXX`` or ``g++``); a candidate counts when it runs
    ``--version``.
    """
    forced = os.environ.get(CXX_ENV, "").strip()
    if forced:
        candidates = [forced]
    else:
        import torch._inductor.config as inductor_config

        cxx = inductor_config.cpp.cxx
        candidates = [c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c]
    tried = []
    for name in candidates:
        path = shutil.which(name)
        if path is None:
            tried.append(f"{name} (not found)")
            continue
        try:
            subprocess.run([path, "--version"], check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            tried.append(f"{name} ({type(e).__name__})")
            continue
        return path, ""
    where = f"${CXX_ENV}" if forced else "torch._inductor.config.cpp.cxx / $CXX"
    return None, (f"no C++ compiler for torch.compile (inductor builds C++ kernels): tried {', '.join(tried) or 'nothing'} "
                  f"from {where}; install g++ or set {CXX_ENV}=/path/to/g++")


# ----------------------------------------------------------------------------- the engine wrapper

def _pool_session_active() -> bool:
    """True while predict_tiles runs measuring / fixed passes of tiled whole-image pooling."""
    from imagingflows.models import global_pool

    session = global_pool._SESSION.get()
    return session is not None and bool(session.state) and (session.measure or session.fixed)


def _plain_pools(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with every :class:`GlobalAvgPool2d` replaced by ``nn.AdaptiveAvgPool2d(1)`` (same maths
    outside tiled pooling; no context variable for dynamo to break the graph on). Changes ``net``."""
    from imagingflows.models.global_pool import GlobalAvgPool2d

    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GlobalAvgPool2d):
                setattr(module, name, torch.nn.AdaptiveAvgPool2d(1))
    return net


class BoundMethod(torch.nn.Module):
    """``inner.<method>(*args)`` as a module's ``forward`` (so that an engine can run, copy and compile it)."""

    def __init__(self, inner: torch.nn.Module, method: str) -> None:
        super().__init__()
        if not callable(getattr(inner, method, None)):
            raise ValueError(f"{type(inner).__name__} has no method {method!r}")
        self.inner = inner
        self.method = method

    def forward(self, *args: Any) -> Any:
        return getattr(self.inner, self.method)(*args)


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


class EngineModule(torch.nn.Module):
    """``inner`` run by one engine: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` (then any other inputs, passed
    as they are) -> what ``inner`` returns.

    ``inner`` (the eager module, shared with the backend's cache) is the only registered submodule,
    so ``parameters()`` and the pools that :func:`~imagingflows.models.global_pool.global_pools` finds are
    its own; the accelerated copy is kept aside. When the accelerated call raises (a compile error,
    a compiler that vanished), the module switches to eager for good and records why in
    :attr:`fallback`; an error that eager raises too is the caller's.
    """

    def __init__(self, inner: torch.nn.Module, engine: str, fallback: str | None = None,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        if engine not in CONCRETE:
            raise ValueError(f"engine must be one of {', '.join(CONCRETE)}, got {engine!r}")
        self.inner = inner
        self.engine = engine  # the engine asked of this module
        self.fallback = fallback  # why it runs eager instead (None: it runs ``engine``)
        self.__dict__["_fast"] = None  # not a submodule (see the class doc)
        self._lock = threading.Lock()
        self._seen: set[tuple] = set()
        self.memory_format = _memory_format(spatial_dims + 2)
        if engine != "eager" and fallback is None:
            self.__dict__["_fast"] = self._build(inner, engine, self.memory_format)

    @property
    def used(self) -> str:
        """The engine that runs: ``engine``, or ``eager`` after a fallback."""
        return "eager" if self.fallback is not None else self.engine

    @staticmethod
    def _build(inner: torch.nn.Module, engine: str, memory_format: torch.memory_format) -> Callable:
        if engine == "openvino":
            from imagingflows.models.engine_openvino import OpenVinoModule

            return OpenVinoModule(_plain_pools(copy.deepcopy(inner)).eval(), engines_dir() / "openvino")
        fast = _plain_pools(copy.deepcopy(inner)).eval().to(memory_format=memory_format)
        if engine == "channels-last":
            return fast
        use_inductor_cache()
        if os.environ.get(CXX_ENV, "").strip():  # the compiler find_cxx() checked is the one inductor runs
            import torch._inductor.config as inductor_config

            inductor_config.cpp.cxx = (find_cxx()[0],)
        # dynamic=None: static for the first input size, dynamic from the second (no recompile per size)
        return torch.compile(fast, backend="inductor", dynamic=None, options={"freezing": True})

    def forward(self, x: torch.Tensor, *rest: Any) -> Any:
        fast = self.__dict__["_fast"]
        if fast is None or self.fallback is not None or _pool_session_active():
            return self.inner(x, *rest)
        if x.dim() in (4, 5) and self.engine != "openvino":  # compile too: measured faster than NCHW on CPU
            x_fast = x.contiguous(memory_format=_memory_format(x.dim()))
        else:
            x_fast = x
        if self.engine == "channels-last":
            return fast(x_fast, *rest)
        key = (tuple(x.shape), x.dtype, *(tuple(r.shape) for r in rest if isinstance(r, torch.Tensor)),
               torch.is_autocast_enabled("cpu"), torch.is_autocast_enabled("cuda"))
        try:
            if key in self._seen:
                return fast(x_fast, *rest)
            with self._lock:  # dynamo compiles one graph at a time; known shapes run without the lock
                y = fast(x_fast, *rest)
                self._seen.add(key)
                return y
        except Exception as e:  # noqa: BLE001 - any compile failure: eager decides whether x is bad
            y = self.inner(x, *rest)
            what = "OpenVINO conversion or inference" if self.engine == "openvino" else "torch.compile"
            self.fallback = f"{what} failed, eager used: {type(e).__name__}: {str(e).strip()[:300]}"
            return y


_ENGINES: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, EngineModule]]" = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


def engine_module(net: torch.nn.Module, engine: str, *, method: str = "forward",
                  spatial_dims: int = 2) -> EngineModule:
    """The process-wide :class:`EngineModule` of ``net`` (its ``method``) for ``engine`` (built, and
    compiled, once). ``spatial_dims``: 3 for a volume network (``channels_last_3d``).

    ``compile`` without a C++ compiler gives an eager module whose :attr:`~EngineModule.fallback` says so.
    """
    if engine not in CONCRETE:
        raise ValueError(f"engine must be one of {', '.join(CONCRETE)} here (auto is resolved by choose()), "
                         f"got {engine!r}")
    with _ENGINES_LOCK:
        per_net = _ENGINES.setdefault(net, {})
        if (engine, method) not in per_net:
            why = find_cxx()[1] if engine == "compile" else _openvino_unusable(net) if engine == "openvino" else None
            inner = net if method == "forward" else BoundMethod(net, method)
            per_net[(engine, method)] = EngineModule(inner, engine, fallback=why or None, spatial_dims=spatial_dims)
        return per_net[(engine, method)]


def _openvino_unusable(net: torch.nn.Module) -> str | None:
    """Why the openvino engine cannot run ``net`` here (None: it can)."""
    from imagingflows.models.engine_openvino import available

    ok, why = available()
    if not ok:
        return why
    param = next(net.parameters(), None)
    if param is not None and param.device.type != "cpu":
        return f"OpenVINO runs on the CPU here, the model is on {param.device}: eager used"
    return None


def clear_engines() -> None:
    with _ENGINES_LOCK:
        _ENGINES.clear()


# ----------------------------------------------------------------------------- measuring

def device_label(device: torch.device) -> str:
    """The device as the cache key names it: ``cpu:AVX512`` (torch's CPU capability) or ``cuda:<name>``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{torch.backends.cpu.get_cpu_capability()}"


def measure_input(channels: int, side: int, grid: int = 1, seed: int = 0, dims: int = 2) -> torch.Tensor:
    """A deterministic ``(1, channels, s, s)`` (``dims`` 3: ``(1, channels, s, s, s)``) float32 image in
    [0, 1] (smooth ramps plus texture and noise, so that every operator sees structure), ``s`` = ``side``
    rounded up to ``grid``."""
    s = -(-int(side) // int(grid)) * int(grid)
    g = torch.Generator().manual_seed(seed)
    *zz, yy, xx = torch.meshgrid(*[torch.linspace(0, 1, s)] * dims, indexing="ij")
    planes = []
    for c in range(channels):
        phase = xx * (c + 1) + yy * (2 - c % 2) + sum(z * (c + 2) for z in zz)
        planes.append(0.5 + 0.35 * torch.sin(6.0 * phase) + 0.08 * torch.randn(*[s] * dims, generator=g))
    return torch.stack(planes)[None].clamp(0, 1)


@dataclass
class Measurement:
    """One engine measured for one model (JSON-friendly; cached on disk)."""

    engine: str
    used: str  # what ran: the engine, or eager after a fallback
    first_seconds: float | None = None  # the first call (compilation included)
    seconds: float | None = None  # best steady call
    agreement: float | None = None  # the rule's value against eager float32
    agrees: bool | None = None
    fallback: str | None = None
    cached: bool = False  # read from the cache file (not measured in this process)
    rebuilt: str | None = None  # why a cache file was not trusted

    def as_dict(self) -> dict:
        return asdict(self)


def tensors_sha256(net: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names and float32 bytes): its identity without a weights file."""
    h = hashlib.sha256()
    for name, t in net.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(weights_sha256: str | None, net: torch.nn.Module, engine: str, precision: str,
              device: torch.device, shape: tuple[int, ...] | list, method: str = "forward") -> dict:
    """What one measurement depends on (a fresh network without weights file: a hash of its tensors).
    ``shape``: the first input's shape, or a list of every input's."""
    ident = weights_sha256 or "tensors:" + tensors_sha256(net)
    key = {"schema": SCHEMA, "weights_sha256": ident, "engine": engine, "precision": precision,
           "torch": torch.__version__, "device": device_label(device), "shape": list(shape)}
    if method != "forward":
        key["method"] = method
    return key


def _cache_file(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return engines_dir() / f"{digest}.json"


def _read_cached(path: Path, key: dict) -> tuple[Measurement | None, str | None]:
    """A trusted measurement from ``path``, or ``(None, why it was not trusted)`` (None: no file)."""
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{path.name}: unreadable ({type(e).__name__})"
    if not isinstance(data, dict) or data.get("key") != key:
        return None, f"{path.name}: made for another key (schema, torch version, device or model)"
    try:
        fields = {k: data["measurement"][k] for k in ("engine", "used", "first_seconds", "seconds", "agreement",
                                                      "agrees", "fallback")}
        m = Measurement(**fields, cached=True)
        if m.engine != key["engine"] or not isinstance(m.agrees, bool) or not isinstance(m.seconds, (int, float)):
            raise TypeError("fields of the wrong kind")
    except (KeyError, TypeError) as e:
        return None, f"{path.name}: incomplete ({e})"
    return m, None


def _write_cached(path: Path, key: dict, m: Measurement) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in m.as_dict().items() if k not in ("cached", "rebuilt")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"key": key, "measurement": record}, indent=1))
    os.replace(tmp, path)


def _timed(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float]:
    t = time.perf_counter()
    y = fn()
    return y, time.perf_counter() - t


def autocast_for(precision: str, device: torch.device | str) -> torch.autocast:
    """The autocast context of a resolved precision (``fp32``: disabled; ``bf16``, ``fp16``)."""
    dtype = _AUTOCAST.get(precision)
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def _run(module: torch.nn.Module, inputs: tuple, precision: str, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(), autocast_for(precision, device):
        return module(*inputs).float()


def measure(net: torch.nn.Module, spec: Any, config: dict, *, engines: tuple[str, ...] = CONCRETE,
            precision: str = "fp32", device: torch.device = torch.device("cpu"),
            weights_sha256: str | None = None, side: int = MEASURE_SIDE, repeat: int = 2,
            use_cache: bool = True, inputs: tuple[torch.Tensor, ...] | None = None,
            method: str = "forward") -> dict[str, Measurement]:
    """Time each of ``engines`` on ``net`` and check its agreement with eager float32 (cached).

    Args:
        net: the eval-mode network on ``device``: ``net.<method>(*inputs)`` -> one tensor.
        spec / config: its :class:`~imagingflows.models.registry.ModelSpec` (``agreement``, channels,
            grid, ``spatial_dims``) and config. A spec without a rule: agreement is not measured (``agrees`` None).
        precision: resolved precision (``fp32``, ``bf16``, ``fp16``) the engines run in.
        inputs: what the pipeline will feed (its shapes key the cache); default one ``(1, C, s, s)``
            image of :func:`measure_input`, ``s`` = ``side`` on the network's grid.
    Returns:
        ``{engine: Measurement}`` in the order of ``engines``.
    """
    device = torch.device(device)
    if inputs is None:
        channels = spec.channels_of(config) or 3
        inputs = (measure_input(channels, side, spec.grid_of(config)),)
    inputs = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in inputs)
    shapes = [list(t.shape) for t in inputs if isinstance(t, torch.Tensor)]
    shape: Any = shapes[0] if len(shapes) == 1 else shapes  # one input: the key of earlier versions
    dims = int(getattr(spec, "spatial_dims", 2) or 2)
    rule = getattr(spec, "agreement", None)
    reference = None
    out: dict[str, Measurement] = {}
    for engine in engines:
        key = cache_key(weights_sha256, net, engine, precision, device, shape, method)
        path = _cache_file(key)
        cached, why = _read_cached(path, key) if use_cache else (None, None)
        if cached is not None:
            out[engine] = cached
            continue
        if reference is None:
            reference = _run(engine_module(net, "eager", method=method, spatial_dims=dims), inputs, "fp32", device)
        module = engine_module(net, engine, method=method, spatial_dims=dims)
        y, first = _timed(lambda: _run(module, inputs, precision, device))
        best = min(_timed(lambda: _run(module, inputs, precision, device))[1] for _ in range(max(1, repeat)))
        m = Measurement(engine=engine, used=module.used, first_seconds=round(first, 4), seconds=round(best, 5),
                        fallback=module.fallback, rebuilt=why)
        if rule is not None:
            value = float(rule.measure(reference, y))
            m.agrees = bool(rule.holds(value))  # on the exact value: a cosine of 0.99985 must not round to 1.0
            m.agreement = round(value, 3 if rule.kind == "psnr_db" else 7)
        else:
            m.agrees = True if engine == "eager" and precision == "fp32" else None
        if m.agrees is not None and use_cache and not m.fallback:  # a fallback is this process's, not the engine's
            _write_cached(path, key, m)
        out[engine] = m
    return out


# ----------------------------------------------------------------------------- choosing

@dataclass(frozen=True)
class EngineRule:
    """What the engines need of a network without a :class:`~imagingflows.models.registry.ModelSpec`
    (DemosaicNet, whose weights are a package's): its agreement rule and spatial dims."""

    agreement: Any
    spatial_dims: int = 2


@dataclass
class EngineTarget:
    """One network as a pipeline will call it: ``net.<method>(*inputs)`` (``inputs``: what it is measured on,
    None = one image at :data:`MEASURE_SIDE`), with its spec (or :class:`EngineRule`), config, device and
    weights hash (the cache key)."""

    net: torch.nn.Module
    spec: Any
    config: dict
    device: torch.device
    weights_sha256: str | None
    inputs: tuple | None = None
    method: str = "forward"

    @classmethod
    def of(cls, lm: Any, inputs: tuple | None = None, method: str = "forward") -> "EngineTarget":
        """From a :class:`~imagingflows.models.backend.LoadedModel`."""
        return cls(lm.module, lm.spec, dict(lm.config), lm.device, lm.weights_sha256, inputs, method)


@dataclass
class EngineChoice:
    """Which engine a run uses and why (``run.json``: ``config.engine_used``)."""

    requested: str
    used: str
    reason: str = ""
    agrees: bool | None = None  # ``used`` measured to agree with eager float32 within the model's rule
    rule: str | None = None
    measurements: dict[str, dict] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def changes_outputs(self) -> bool:
        """True when the outputs may differ from eager's beyond the model's rule (the config hash keys it)."""
        return self.used != "eager" and self.agrees is not True


def choose(net: torch.nn.Module, spec: Any, config: dict, requested: str, *, precision: str = "fp32",
           device: torch.device = torch.device("cpu"), weights_sha256: str | None = None,
           side: int = MEASURE_SIDE, inputs: tuple[torch.Tensor, ...] | None = None,
           method: str = "forward") -> EngineChoice:
    """Resolve ``requested`` (one of :data:`ENGINES`) for this model, precision and device.

    ``eager`` needs no measurement. An explicit engine is measured (cached) so that the record says
    whether it agrees; ``compile`` without a compiler, or failing, falls back to eager with the reason.
    ``auto`` measures every engine and takes the fastest that agrees (by at least :data:`AUTO_MARGIN`
    of eager's time; eager otherwise); never one whose agreement is unknown. ``inputs`` / ``method``:
    as :func:`measure`.
    """
    if requested not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {requested!r}")
    rule = getattr(spec, "agreement", None)
    label = rule.describe() if rule is not None else None
    if requested == "eager":
        return EngineChoice(requested, "eager", "asked for", agrees=True, rule=label)
    candidates = getattr(spec, "engine_candidates", None) or CONCRETE
    engines = tuple(dict.fromkeys(("eager", *candidates))) if requested == "auto" else ("eager", requested)
    found = measure(net, spec, config, engines=engines, precision=precision, device=device,
                    weights_sha256=weights_sha256, side=side, inputs=inputs, method=method)
    records = {k: v.as_dict() for k, v in found.items()}
    if requested != "auto":
        m = found[requested]
        if m.fallback:
            return EngineChoice(requested, "eager", m.fallback, agrees=True, rule=label, measurements=records)
        why = ("measured to agree" if m.agrees else
               "measured NOT to agree: outputs may differ beyond the rule" if m.agrees is False else
               "agreement unknown (no rule for this model)")
        return EngineChoice(requested, requested, f"asked for; {why} ({m.agreement} vs eager fp32)",
                            agrees=m.agrees, rule=label, measurements=records)
    eager = found["eager"].seconds or float("inf")
    ok = {k: v for k, v in found.items() if k != "eager" and not v.fallback and v.agrees and v.seconds}
    best = min(ok, key=lambda k: ok[k].seconds, default=None)
    skipped = "; ".join(f"{k}: {v.fallback or ('disagrees: ' + str(v.agreement))}" for k, v in found.items()
                        if k != "eager" and (v.fallback or not v.agrees))
    if best is not None and ok[best].seconds <= (1 - AUTO_MARGIN) * eager:
        what = f"the {side}-pixel measurement input" if inputs is None else "the measurement input"
        reason = (f"fastest that agrees: {best} {ok[best].seconds:.4g} s vs eager {eager:.4g} s per forward of "
                  f"{what} ({label}: {ok[best].agreement} vs eager fp32)")
        used = best
    else:
        reason = "eager: no engine that agrees was faster by " + f"{AUTO_MARGIN:.0%}" + " or more"
        used = "eager"
    if skipped:
        reason += f" (left out: {skipped})"
    return EngineChoice("auto", used, reason, agrees=True if used == "eager" else found[used].agrees, rule=label,
                        measurements=records)


__all__ = ["ENGINES", "CONCRETE", "CACHE_ENV", "CXX_ENV", "cache_root", "engines_dir", "find_cxx", "BoundMethod",
           "EngineModule",
           "engine_module", "clear_engines", "measure", "Measurement", "EngineChoice", "choose", "measure_input",
           "EngineRule", "EngineTarget", "autocast_for"]
