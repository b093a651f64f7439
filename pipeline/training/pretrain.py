"""Stage 0: pretraining the parts the paper takes from elsewhere, for models built without outside weights.

The paper freezes a pretrained SD VAE, an MSE-optimised learned codec (its ``g_a``/``g_s``) and
DINOv2. A model trained from scratch (the ``demo`` preset) first trains each of them here, on
the same batches, each with its own objective:

* **VAE** (diffusers ``AutoencoderKL``): reconstruction MSE through a sampled latent (or the
  posterior mean, which is what the codec encodes with: ``vae_latent``) + a small KL term (SD's
  recipe without its LPIPS and GAN terms, which would need outside weights), plus an optional
  extra weight on the colour error (``vae_chroma``). Colour has a fraction of luminance's
  variance, and a deep autoencoder trained from scratch learns it last (the figures are in
  docs/demo-model.md). Its LoRA adapters stay at zero: they belong to stages 1-2.
* **Distortion codec**: the whole CompressAI model of the configured architecture (hyperprior,
  context model, entropy bottleneck), trained with CompressAI's loss λ·255²·MSE + bpp and its
  auxiliary quantile loss. Only ``g_a``/``g_s`` are kept, as the paper keeps them.
* **Semantic encoder** (transformers ``Dinov2Model``): masked-patch prediction. A share of
  the patch embeddings is replaced by DINOv2's mask token and a linear head predicts those
  patches' pixels, normalised per patch (MAE's target), from the output tokens.

Afterwards the VAE latent scale is set as SD set it: ``scaling_factor = 1 / std`` of the latents.
Same interface as :class:`pipeline.training.stage.StageTrainer`, so the Ray Train loop runs it.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from compressai.zoo.image import model_architectures
from torch import nn

from pipeline.training.config import PretrainConfig, TrainConfig
from pipeline.training.losses import chroma_mse, estimated_bpp
from pipeline.training.memory import prepare_for_training
from pipeline.training.stage import OptimizedTrainer, ReduceMean, SyncGrads, Wrap, micro_batch_list
from sprdiff import SPRDiff

LATENT_STD_MOMENTUM = 0.99


class PretrainNets(nn.Module):
    """The three pretrained parts of one SPRDiff plus what only their pretraining needs (the
    distortion codec's entropy model, the masked-patch head). Shares modules with the model."""

    def __init__(self, model: SPRDiff):
        super().__init__()
        self.model_ref = [model]  # a list: not registered, so DDP does not see the rest of the model
        self.vae = model.vae
        self.dino = model.dino
        arch = model.config.distortion_config
        codec = model_architectures[arch["arch"]](**{k: v for k, v in arch.items() if k in ("N", "M")})
        codec.g_a, codec.g_s = model.distortion.g_a, model.distortion.g_s  # train the model's own transforms
        self.codec = codec
        patch = model.dino.config.patch_size
        self.patch_head = nn.Linear(model.dino.config.hidden_size, patch * patch * 3)

    def forward(self, x: torch.Tensor, mask_ratio: float, vae_latent: str) -> dict[str, torch.Tensor]:
        model = self.model_ref[0]
        # VAE: reconstruction through a sampled latent or the posterior mean
        posterior = self.vae.encode(x * 2 - 1).latent_dist
        latent = posterior.sample() if vae_latent == "sample" else posterior.mean
        recon = (self.vae.decode(latent).sample + 1) / 2
        out = {"vae_mse": F.mse_loss(recon, x), "vae_chroma": chroma_mse(recon, x),
               "vae_kl": posterior.kl().mean() / x[0].numel(),
               "latent_std": posterior.mean.detach().std()}
        # distortion codec: CompressAI's rate-distortion training pass
        coded = self.codec(x)
        out["codec_mse"] = F.mse_loss(coded["x_hat"], x)
        out["bpp"] = estimated_bpp(coded["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        # semantic encoder: masked-patch prediction
        pixels, (h, w) = model.semantic_input(x)
        mask = torch.rand(x.shape[0], h * w, device=x.device) < mask_ratio
        tokens = self.dino(pixel_values=pixels, bool_masked_pos=mask).last_hidden_state[:, 1:]
        patch = self.dino.config.patch_size
        target = F.unfold(pixels, patch, stride=patch).transpose(1, 2)  # (B, h*w, 3*p*p)
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        out["mim"] = F.mse_loss(self.patch_head(tokens)[mask], target[mask])
        return out


class PretrainTrainer(OptimizedTrainer):
    """Stage 0 on one worker (see the module docstring)."""

    lambda_rate = 0.0  # stage 0 has no λ_b; the distortion codec's λ is in the config
    rate_id = None

    def __init__(self, model: SPRDiff, config: TrainConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.stage_number = 0
        self.stage: PretrainConfig = config.stage0
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.nets = PretrainNets(model).to(self.device)
        model.requires_grad_(False)
        self.nets.requires_grad_(True)
        for name, p in self.nets.named_parameters():
            if "lora_" in name:
                p.requires_grad_(False)  # adapters are trained in stages 1-2 on top of this base
        prepare_for_training(self.nets, config, self.device)
        self.set_up_optimizers(self.nets, self.stage.lr, self.stage.lr_drops)
        self.net: nn.Module = self.nets
        self.latent_std = torch.ones((), device=self.device)  # running estimate, for the latent scale
        self.step = 0

    def distribute(self, wrap: Wrap, sync_grads: SyncGrads, reduce_mean: ReduceMean) -> None:
        self.net = wrap(self.nets)
        self.sync_grads, self.reduce_mean = sync_grads, reduce_mean

    def set_train_mode(self) -> None:
        self.nets.train()

    def train_step(self, x: torch.Tensor | list[torch.Tensor]) -> dict[str, float]:
        """One update on a batch, or on a list of micro-batches whose gradients are accumulated."""
        started = time.perf_counter()
        micro_batches = micro_batch_list(x, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        s = self.stage
        self.optimizer.zero_grad(set_to_none=True)

        def pretrain_loss(xb: torch.Tensor):
            terms = self.net(xb, s.mask_ratio, s.vae_latent)
            vae_loss = terms["vae_mse"] + s.vae_chroma * terms["vae_chroma"] + s.vae_kl * terms["vae_kl"]
            codec_loss = s.distortion_lambda * 255 ** 2 * terms["codec_mse"] + terms["bpp"]
            return vae_loss + codec_loss + terms["mim"], terms

        terms = self.backward_micro_batches([self.net], micro_batches, pretrain_loss)
        grad_norm, aux_loss = self.step_optimizers(self.nets.codec.aux_loss)

        self.step += 1
        std = self.reduce_mean(terms["latent_std"].reshape(1)).squeeze(0)
        momentum = 0.0 if self.step == 1 else LATENT_STD_MOMENTUM
        self.latent_std = momentum * self.latent_std + (1 - momentum) * std
        metrics = {**terms, "aux_loss": aux_loss.detach(), "grad_norm": grad_norm.detach(),
                   "vae_psnr": -10 * torch.log10(terms["vae_mse"]), "codec_psnr": -10 * torch.log10(terms["codec_mse"])}
        return self.averaged(metrics, lr, started)

    @torch.no_grad()
    def exportable(self) -> SPRDiff:
        """The model with its pretrained parts updated and the VAE latent scale set to 1/std."""
        scale = float(1.0 / self.latent_std.clamp_min(1e-3))
        model = self.model
        model.vae.register_to_config(scaling_factor=scale)
        model.config = model.config.replace(vae_config={**model.config.vae_config, "scaling_factor": scale})
        model.invalidate_fingerprint()
        return model

    # ---- state (checkpoints)

    def state_dict(self) -> dict:
        return {
            "step": self.step, "stage": 0, "lambda_rate": 0.0,
            "model": {n: p for n, p in self.nets.named_parameters() if p.requires_grad},
            "latent_std": self.latent_std,
            "parameter_names": {"main": self.main_names, "aux": self.aux_names},
            "optimizer": self.optimizer.state_dict(), "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["stage"] != 0:
            raise ValueError(f"checkpoint is from stage {state['stage']}, this run is stage 0: use a new --output")
        if state["parameter_names"] != {"main": self.main_names, "aux": self.aux_names}:
            raise ValueError("checkpoint's trainable parameters differ from this model's: was it written for "
                             "another --model?")
        with torch.no_grad():
            params = dict(self.nets.named_parameters())
            for name, tensor in state["model"].items():
                params[name].copy_(tensor)
            self.latent_std = state["latent_std"].to(self.device).clone()
        self.load_optimizer_state(state)
        self.step = int(state["step"])
        self.model.invalidate_fingerprint()
