"""ELIC-style space-channel entropy model, composed from CompressAI's latent codecs.

Structure (He et al., ELIC, CVPR 2022): a hyperprior (``h_a``/``h_s`` around an
``EntropyBottleneck``) gives side parameters; ``y`` is split into uneven channel groups,
each conditioned on the groups before it (channel context) and coded in two checkerboard
passes (spatial context), with Gaussian conditionals.

``forward`` is CompressAI's ``HyperpriorLatentCodec`` (likelihoods for the rate loss).
``compress``/``decompress`` walk the same modules in the same order but feed every
symbol -- hyper-latent and all groups and passes -- into **one** CompressAI rANS stream
(``BufferedRansEncoder``/``RansDecoder``), so a record carries a single string and no
per-group length fields.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.latent_codecs import (
    ChannelGroupsLatentCodec,
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d, MaskedConv2d
from compressai.layers.layers import sequential_channel_ramp
from compressai.models.google import get_scale_table  # 64 log-spaced scales in [0.11, 256]
from compressai.models.utils import conv, deconv
from torch import nn

from sprdiff.exact import ExactNetwork, to_grid

# Buffers whose shape depends on update(); resized before loading a state dict.
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")

SymbolCoder = Callable[[torch.Tensor, EntropyModel, torch.Tensor | None], torch.Tensor]


class SpaceChannelEntropyModel(nn.Module):
    def __init__(self, latent_channels: int, groups: tuple[int, ...], hyper_channels: int, exact: bool = True,
                 rates: int = 1):
        super().__init__()
        self.exact = exact  # evaluate the parameter networks in exact integer arithmetic (sprdiff.exact)
        m, n = latent_channels, hyper_channels
        self.groups = tuple(groups)
        h_a = nn.Sequential(conv(m, n, kernel_size=3, stride=1), nn.ReLU(),
                            conv(n, n, kernel_size=5, stride=2), nn.ReLU(),
                            conv(n, n, kernel_size=5, stride=2))
        h_s = nn.Sequential(deconv(n, n, kernel_size=5, stride=2), nn.ReLU(),
                            deconv(n, n * 3 // 2, kernel_size=5, stride=2), nn.ReLU(),
                            deconv(n * 3 // 2, n * 2, kernel_size=3, stride=1))
        ctx_width = max(n, 16)
        channel_context = {  # ELIC's g_ch^(k): previous groups -> params for group k
            f"y{k}": nn.Sequential(conv(sum(groups[:k]), ctx_width, kernel_size=5, stride=1), nn.ReLU(),
                                   conv(ctx_width, ctx_width, kernel_size=5, stride=1), nn.ReLU(),
                                   conv(ctx_width, groups[k] * 2, kernel_size=5, stride=1))
            for k in range(1, len(groups))
        }
        group_codecs = {
            f"y{k}": CheckerboardLatentCodec(
                latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
                context_prediction=CheckerboardMaskedConv2d(g, g * 2, kernel_size=5, stride=1, padding=2),
                # ELIC's parameter aggregation: spatial ctx + channel ctx + hyper params -> (scales, means)
                entropy_parameters=sequential_channel_ramp(
                    g * 2 + (k > 0) * g * 2 + n * 2, g * 2, min_ch=n * 2, num_layers=3, interp="linear",
                    make_layer=nn.Conv2d, make_act=nn.ReLU, kernel_size=1, stride=1, padding=0),
            )
            for k, g in enumerate(groups)
        }
        self.codec = HyperpriorLatentCodec(latent_codec={
            "y": ChannelGroupsLatentCodec(group_codecs, channel_context, groups=list(groups)),
            "hyper": HyperLatentCodec(EntropyBottleneck(n), h_a, h_s, quantizer="ste"),
        })
        if rates > 1:  # per-rate offset of the side parameters (sprdiff.rates); on the exact grid when coding
            self.rate_side = nn.Parameter(torch.zeros(rates, n * 2))
        self._tables: dict[int, tuple[list, list, list]] = {}
        self._exact_nets: dict[int, ExactNetwork] = {}
        # CompressAI's masked convs zero their masked weights in place on every forward;
        # do it once now so the weights (and the model fingerprint) never change at run time.
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, MaskedConv2d):
                    module.weight.mul_(module.mask)

    # ---- training

    def forward(self, y: torch.Tensor, rate: int | torch.Tensor | None = None) -> dict:
        """``{"y_hat", "likelihoods": {"y", "z"}}``: CompressAI's hyperprior latent codec, with the
        rate's side offset added to the side parameters (``rate``: an int or one per sample)."""
        hyper = self.codec["hyper"](y)
        params = hyper["params"]
        if rate is not None and hasattr(self, "rate_side"):
            index = torch.as_tensor(rate, device=params.device).reshape(-1)
            params = params + self.rate_side[index].to(params.dtype)[:, :, None, None]
        coded = self.codec["y"](y, params)
        return {"likelihoods": {"y": coded["likelihoods"]["y"], "z": hyper["likelihoods"]["z"]},
                "y_hat": coded["y_hat"]}

    def side_offset(self, rate: int | None) -> torch.Tensor | None:
        """The rate's side offset (1, 2n, 1, 1) on the exact grid, or None for one-rate models."""
        if rate is None or not hasattr(self, "rate_side"):
            return None
        offset = self.rate_side.detach()[rate].reshape(1, -1, 1, 1)
        return to_grid(offset) if self.exact else offset

    def aux_loss(self) -> torch.Tensor:
        return sum(m.loss() for m in self.modules() if isinstance(m, EntropyBottleneck))

    # ---- coding

    @torch.no_grad()
    def update(self) -> None:
        """Recompute the integer CDF tables from the parameters (after training)."""
        for module in self.modules():
            if isinstance(module, EntropyBottleneck):
                module.update(force=True)
            elif isinstance(module, GaussianConditional):
                module.update_scale_table(get_scale_table(), force=True)
        self.invalidate_tables()

    def invalidate_tables(self) -> None:
        """Drop cached CDF tables and integer networks (after update(), training or loading weights)."""
        self._tables.clear()
        self._exact_nets.clear()

    def _net(self, module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The module itself (float path) or its exact integer copy."""
        if not self.exact:
            return module
        key = id(module)
        if key not in self._exact_nets:
            self._exact_nets[key] = ExactNetwork(module)
        return self._exact_nets[key]

    def _table(self, model: EntropyModel) -> tuple[list, list, list]:
        key = id(model)
        if key not in self._tables:
            if model.quantized_cdf.numel() == 0:
                raise RuntimeError("entropy tables are empty: call update() (or load a saved model) first")
            self._tables[key] = (model.quantized_cdf.tolist(), model.cdf_length.reshape(-1).int().tolist(),
                                 model.offset.reshape(-1).int().tolist())
        return self._tables[key]

    def _walk(self, z_shape: tuple[int, int], y_shape: tuple[int, int], code_z: SymbolCoder,
              code_y: Callable[[int, int, torch.Tensor, GaussianConditional, torch.Tensor], torch.Tensor],
              device: torch.device, rate: int | None = None) -> torch.Tensor:
        """The decoding order shared by encoder and decoder; returns ``y_hat``.

        ``code_z(indexes, model, medians)`` and ``code_y(k, pass, indexes, model, means)``
        return the integer symbols (the encoder quantizes and writes them, the decoder reads).
        """
        hyper = self.codec["hyper"]
        eb = hyper.entropy_bottleneck
        z_size = (1, eb.channels, *z_shape)
        medians = eb._get_medians().detach().reshape(1, -1, 1, 1)
        if self.exact:
            medians = to_grid(medians)
        z_symbols = code_z(eb._build_indexes(z_size).to(device), eb, medians)
        side = self._net(hyper.h_s)(eb.dequantize(z_symbols, medians))
        offset = self.side_offset(rate)
        if offset is not None:  # grid + grid: still exact
            side = side + offset.to(device=side.device, dtype=side.dtype)

        groups_codec = self.codec["y"]
        y_hat = side.new_zeros((1, sum(self.groups), *y_shape))
        y_hat_groups = y_hat.split(self.groups, dim=1)
        for k, g in enumerate(self.groups):
            params = side
            if k > 0:  # channel context from the groups decoded so far
                ctx = self._net(groups_codec.channel_context[f"y{k}"])(torch.cat(y_hat_groups[:k], dim=1))
                params = torch.cat([ctx, side], dim=1)
            board: CheckerboardLatentCodec = groups_codec[f"y{k}"]
            gaussian_codec = board.latent_codec["y"]
            halves = params.new_zeros((2, 1, g, y_shape[0], y_shape[1] // 2))
            params_halves = board.unembed(params)
            for step in range(2):  # 0: anchors (no spatial context), 1: non-anchors
                ctx = board.unembed(self._net(board.context_prediction)(board.embed(halves)))[step]
                if step == 0:
                    ctx = torch.zeros_like(ctx)
                aggregate = self._net(board.entropy_parameters)(board.merge(ctx, params_halves[step]))
                scales, means = gaussian_codec._chunk(self._net(gaussian_codec.entropy_parameters)(aggregate))
                gc = gaussian_codec.gaussian_conditional
                symbols = code_y(k, step, gc.build_indexes(scales), gc, means)
                halves[step] = gc.dequantize(symbols, means)
            y_hat_groups[k][:] = board.embed(halves)
        return y_hat.float()

    @torch.no_grad()
    def compress(self, y: torch.Tensor, rate: int | None = None) -> tuple[bytes, torch.Tensor]:
        """One latent ``(1, M, h, w)`` (already scaled by the rate's gain) -> (one rANS string, ``y_hat``)."""
        if y.dim() != 4 or y.shape[0] != 1:
            raise ValueError(f"compress takes one latent of shape (1, M, h, w), got {tuple(y.shape)}")
        if y.shape[2] % 4 or y.shape[3] % 4:
            raise ValueError(f"latent sides must be multiples of 4, got {tuple(y.shape[2:])}")
        # Same memory layout as the decoder's tensors: channels-last inputs pick other kernels,
        # whose last-bit differences would shift the means the decoder recomputes.
        y = y.contiguous()
        encoder = BufferedRansEncoder()
        z = self.codec["hyper"].h_a(y)
        y_split = y.split(self.groups, dim=1)

        def write(symbols: torch.Tensor, indexes: torch.Tensor, model: EntropyModel) -> torch.Tensor:
            cdf, lengths, offsets = self._table(model)
            encoder.encode_with_indexes(symbols.reshape(-1).tolist(), indexes.reshape(-1).tolist(),
                                        cdf, lengths, offsets)
            return symbols

        def code_z(indexes, model, medians):
            return write(model.quantize(z, "symbols", medians), indexes, model)

        def code_y(k, step, indexes, model, means):
            target = self.codec["y"][f"y{k}"].unembed(y_split[k])[step]
            return write(model.quantize(target, "symbols", means), indexes, model)

        y_hat = self._walk(tuple(z.shape[2:]), tuple(y.shape[2:]), code_z, code_y, y.device, rate)
        return encoder.flush(), y_hat

    @torch.no_grad()
    def decompress(self, string: bytes, y_shape: tuple[int, int], device: torch.device | str = "cpu",
                   rate: int | None = None) -> torch.Tensor:
        """One rANS string and the latent's spatial size -> ``y_hat`` ``(1, M, h, w)`` (still scaled)."""
        decoder = RansDecoder()
        decoder.set_stream(string)

        def read(indexes: torch.Tensor, model: EntropyModel) -> torch.Tensor:
            cdf, lengths, offsets = self._table(model)
            values = decoder.decode_stream(indexes.reshape(-1).tolist(), cdf, lengths, offsets)
            return torch.tensor(values, dtype=torch.int32, device=indexes.device).reshape(indexes.shape)

        z_shape = (y_shape[0] // 4, y_shape[1] // 4)
        return self._walk(z_shape, tuple(y_shape), lambda idx, model, _medians: read(idx, model),
                          lambda _k, _step, idx, model, _means: read(idx, model), torch.device(device), rate)
