"""Metrics that need pretrained networks: LPIPS (AlexNet) and DISTS (VGG16), from local files only.

Nothing here downloads. The libraries' own code computes the scores (``lpips`` for LPIPS, the
authors' ``DISTS_pytorch`` for DISTS); we only build their modules with randomly initialised
backbones and then load the weights from the path the user gave, with ``torch.load(weights_only=True)``
(or safetensors), so a weights file cannot run code.

Accepted files:

* LPIPS: a full ``lpips.LPIPS(net="alex")`` state dict (keys ``net.slice1.0.weight`` ... and
  ``lin0.model.1.weight`` ...), or torchvision's AlexNet ImageNet weights (``alexnet-owt-7be5be79.pth``,
  keys ``features.0.weight`` ...), in which case the calibrated linear layers are the ones the
  ``lpips`` package ships (``lpips/weights/v0.1/alex.pth``).
* DISTS: a full ``DISTS_pytorch.DISTS`` state dict (keys ``stage1.0.weight`` ..., ``alpha``, ``beta``),
  or torchvision's VGG16 ImageNet weights (``vgg16-397923af.pth``), in which case ``alpha``/``beta``
  are the ones ``DISTS_pytorch`` ships.

Both metrics are computed on the full image (no resizing), inputs in [0, 1]; lower is better.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision

from sprdiff.errors import SPRDiffError
from sprdiff.evaluation.metrics import check_pair, to_tensor

LPIPS_MIN_SIDE = 16  # AlexNet's first stride-4 conv and pooling layers need some room
DISTS_MIN_SIDE = 32  # four 2x L2-poolings in VGG16


class WeightsError(SPRDiffError):
    """A weights file is missing, unsafe to load, or not for the architecture asked for."""

    def __init__(self, message: str):
        super().__init__(message, status="bad_weights")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never executing pickled code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is not a plain state dict
            raise WeightsError(f"{path} is not a plain tensor state dict (torch.load weights_only=True "
                               f"refused it): {e}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def _backbone_keys(module: torch.nn.Module, stage_prefix: str) -> dict[str, str]:
    """Map each backbone parameter ``<stage>.<i>.<param>`` to torchvision's ``features.<i>.<param>``."""
    mapping = {}
    for name, _ in module.named_parameters():
        parts = name.split(".")
        if len(parts) == 3 and parts[0].startswith(stage_prefix):
            mapping[name] = f"features.{parts[1]}.{parts[2]}"
    return mapping


def _load_into(module: torch.nn.Module, backbone: torch.nn.Module, state: dict[str, torch.Tensor], *,
               stage_prefix: str, path: Path, what: str) -> str:
    """Load a full state dict of ``module``, or torchvision ImageNet weights into ``backbone``'s stages.

    Returns which form the file had: ``"full"`` or ``"torchvision-backbone"``.
    """
    own = module.state_dict()
    if set(own) <= set(state):
        _copy_checked(module, {k: state[k] for k in own}, path, what)
        return "full"
    mapping = _backbone_keys(backbone, stage_prefix)
    if mapping and set(mapping.values()) <= set(state):
        _copy_checked(backbone, {ours: state[theirs] for ours, theirs in mapping.items()}, path, what, strict=False)
        return "torchvision-backbone"
    sample = ", ".join(sorted(state)[:4])
    raise WeightsError(f"{path} does not look like {what} weights (first keys: {sample}); give a full state dict "
                       f"of the metric module or torchvision's ImageNet weights for its backbone")


def _copy_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str,
                  strict: bool = True) -> None:
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise WeightsError(f"{path}: {key} has shape {tuple(value.shape)}, {what} needs {tuple(own[key].shape)}")
    module.load_state_dict(state, strict=strict)


class _PairwiseNetMetric:
    """What LPIPS and DISTS share: a minimum image side, and scoring a uint8 pair on the device."""

    min_side: int
    label: str

    def unavailable(self, height: int, width: int) -> str | None:
        if min(height, width) < self.min_side:
            return f"{self.label} needs a shorter side of at least {self.min_side} px (image is {width}x{height})"
        return None

    @torch.no_grad()
    def __call__(self, reference: np.ndarray, test: np.ndarray) -> float:
        check_pair(reference, test)
        if self.unavailable(*reference.shape[:2]):
            return math.nan
        x = to_tensor(reference, scale=1 / 255).to(self.device)
        y = to_tensor(test, scale=1 / 255).to(self.device)
        return float(self._score(x, y))

    def _score(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LPIPSMetric(_PairwiseNetMetric):
    """LPIPS with the AlexNet trunk (the paper's choice), weights from a local file."""

    name = "lpips"
    label, min_side = "LPIPS", LPIPS_MIN_SIDE

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        import lpips

        path = Path(weights_path).expanduser()
        state = load_state_dict_file(path)
        # pnet_rand=True: random trunk, no torchvision download; pretrained=True: the linear layers the
        # package ships in its own folder (overwritten below when the file holds a full LPIPS state dict).
        with warnings.catch_warnings():  # lpips 0.1.4 still passes torchvision's deprecated ``pretrained=False``
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            self.model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        self.weights_form = _load_into(self.model, self.model.net, state, stage_prefix="slice", path=path,
                                       what="LPIPS (AlexNet)")
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.weights_path = str(path)

    def _score(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        return self.model(test, reference, normalize=True).item()


@contextlib.contextmanager
def _vgg16_without_download() -> Iterator[None]:
    """``DISTS_pytorch.DISTS.__init__`` hard-codes ``models.vgg16(pretrained=True)`` (a download).

    For the constructor call only, its ``models`` reference is swapped for one that builds VGG16
    with random weights; the real weights are loaded from the user's file right after.
    """
    from DISTS_pytorch import DISTS_pt

    class _OfflineModels:
        @staticmethod
        def vgg16(pretrained: bool = False, **_: object) -> torch.nn.Module:
            return torchvision.models.vgg16(weights=None)

    original = DISTS_pt.models
    DISTS_pt.models = _OfflineModels
    try:
        yield
    finally:
        DISTS_pt.models = original


def build_dists_module() -> torch.nn.Module:
    """A ``DISTS_pytorch.DISTS`` module with a random backbone and the package's shipped alpha/beta."""
    from DISTS_pytorch import DISTS_pt

    with _vgg16_without_download():
        module = DISTS_pt.DISTS(load_weights=False)
    shipped = Path(DISTS_pt.__file__).with_name("weights.pt")
    if not shipped.is_file():
        raise WeightsError(f"DISTS_pytorch's alpha/beta file {shipped} is missing: reinstall dists-pytorch")
    ab = torch.load(shipped, map_location="cpu", weights_only=True)
    module.alpha.data = ab["alpha"].clone()
    module.beta.data = ab["beta"].clone()
    return module


class DISTSMetric(_PairwiseNetMetric):
    """DISTS (Ding et al. 2020, the authors' implementation), VGG16 weights from a local file."""

    name = "dists"
    label, min_side = "DISTS", DISTS_MIN_SIDE

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu"):
        path = Path(weights_path).expanduser()
        state = load_state_dict_file(path)
        self.model = build_dists_module()
        self.weights_form = _load_into(self.model, self.model, state, stage_prefix="stage", path=path,
                                       what="DISTS (VGG16)")
        self.model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)
        self.weights_path = str(path)

    def _score(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        return self.model(reference, test).item()
