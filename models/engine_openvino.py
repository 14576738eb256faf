"""The ``openvino`` inference engine: a network converted to OpenVINO IR, compiled by its CPU plugin.

Optional (``pip install 'imagingflows[openvino]'``): :func:`available` says why not when it is missing,
and :mod:`imagingflows.models.engines` then falls back to eager with that reason.

- Conversion (``openvino.convert_model`` on the module with an example input: TorchScript tracing) gives
  a model with dynamic input shapes, so one conversion serves every tile and image size. It is cached
  as IR (``.xml`` + ``.bin``) under ``engines/openvino/`` keyed by the weights' tensors (sha256), the
  method, the input ranks and dtypes and the OpenVINO and torch versions; a cached file that does not
  read is converted again and rewritten, never trusted. Compiling the IR for the CPU (about 1 s) is
  redone per process: OpenVINO 2026.4's own blob cache (``CACHE_DIR``) made a bf16 compile crash the
  process (SIGSEGV) after f32 blobs of the same model were cached, which no fallback can catch.
- Precision: ``INFERENCE_PRECISION_HINT`` f32 under no autocast, bf16 under a bf16 autocast (what the
  backend's ``precision`` sets), f16 under fp16. It must be set: on a CPU with AMX or AVX512-BF16 the
  plugin's default is bf16, which would silently change float32 outputs.
- Threads: ``INFERENCE_NUM_THREADS`` = torch's thread count, so ``--workers`` splits the cores as for eager.
- No telemetry: OpenVINO's usage statistics are switched off in-process (:func:`_import_openvino`).
- Calls: one infer request per call (a compiled model's default request is not thread-safe); inputs and
  outputs are float32 CPU tensors.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import torch

_HINT = {None: "f32", torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def _import_openvino():
    """``import openvino`` without its telemetry.

    OpenVINO sends usage statistics (Google Analytics 4) from ``import openvino`` on, and writes a client id
    under ``~/intel``, unless a consent file there says no: with no file it counts as consent
    (``openvino_telemetry``; ``ovc`` turns the dialog off). Nothing here may phone home (patient data,
    closed networks), and the user's home is not ours to write: the import runs with ``CI=true``, which its
    checker declines (the only switch it reads from the environment), and the converter's modules are then
    pointed at the package's own no-op stub, so later conversions cannot start it either.
    """
    import sys

    if sys.modules.get("openvino") is not None:
        return sys.modules["openvino"]
    saved = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        import openvino
    finally:
        if saved is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = saved
    try:
        from openvino.tools.ovc import convert_impl, telemetry_stub, telemetry_utils

        convert_impl.tm = telemetry_stub
        telemetry_utils.tm = telemetry_stub
    except ImportError:  # a build without the converter: nothing to silence
        pass
    return openvino


def available() -> tuple[bool, str]:
    """``(True, version)`` or ``(False, why not)``."""
    try:
        openvino = _import_openvino()
    except ImportError as e:
        return False, f"openvino is not installed ({e}): pip install 'imagingflows[openvino]'"
    return True, openvino.__version__


class OpenVinoModule:
    """``module`` (eval, float32, CPU) run by OpenVINO: ``(*inputs) -> output`` (the first output)."""

    def __init__(self, module: torch.nn.Module, folder: Path) -> None:
        self.module = module
        self.folder = Path(folder)
        self._core = None
        self._model = None
        self._compiled: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def _ir_path(self, inputs: tuple) -> Path:
        openvino = _import_openvino()
        sig = [(t.dim(), str(t.dtype)) for t in inputs if isinstance(t, torch.Tensor)]
        from imagingflows.models.engines import tensors_sha256

        key = f"{tensors_sha256(self.module)}|{sig}|{openvino.__version__}|{torch.__version__}"
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.xml"

    def _load_or_convert(self, inputs: tuple):
        ov = _import_openvino()

        path = self._ir_path(inputs)
        if path.is_file():
            try:
                return self._core.read_model(str(path))
            except Exception:  # noqa: BLE001 - a corrupt or foreign file is converted again, never trusted
                pass
        # traced in float32 whatever autocast the first call runs under (its casts have no OpenVINO op;
        # the precision is the compiled model's hint)
        with torch.no_grad(), torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            model = ov.convert_model(self.module, example_input=inputs if len(inputs) > 1 else inputs[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
        return model

    def _compiled_for(self, inputs: tuple, dtype: torch.dtype | None):
        key = (dtype, torch.get_num_threads())
        if key in self._compiled:
            return self._compiled[key]
        with self._lock:
            if key not in self._compiled:
                ov = _import_openvino()
                if self._core is None:  # no CACHE_DIR: its blobs crashed a bf16 compile after f32 ones (2026.4)
                    self._core = ov.Core()
                if self._model is None:
                    self._model = self._load_or_convert(inputs)
                self._compiled[key] = self._core.compile_model(
                    self._model, "CPU", {"INFERENCE_PRECISION_HINT": _HINT.get(dtype, "f32"),
                                         "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads())})
            return self._compiled[key]

    def __call__(self, *inputs: Any) -> torch.Tensor:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        arrays = [t.detach().float().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else t
                  for t in inputs]
        compiled = self._compiled_for(tuple(inputs), dtype)
        result = compiled.create_infer_request().infer(arrays)
        return torch.from_numpy(result[compiled.outputs[0]].copy())
