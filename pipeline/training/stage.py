"""One training stage on one worker: the modules, optimizers, schedules and the per-step update.

Plain PyTorch, no Ray: the Ray Train loop (``pipeline.training.loop``) wraps the modules in
DDP through ``distribute`` and passes the all-reduce; tests call :meth:`StageTrainer.train_step`
directly.

What trains (ARCHITECTURE.md §1): every parameter ``SPRDiff.freeze_pretrained`` leaves
trainable -- LoRA adapters of the VAE encoder and UNet, fusion, E_l/D_l, entropy model, T, P,
semantic projection -- plus the discriminator in stage 2. Optimizers (CompressAI's convention):
the main one takes all of those except the EntropyBottleneck ``quantiles`` (the factorized
prior's density in a group of its own when ``prior_lr_scale`` is not 1, the rate points' gains and
side offsets in one when ``rate_lr_scale`` is not 1); an auxiliary Adam minimises
``entropy.aux_loss()`` over the quantiles alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from compressai.entropy_models import EntropyBottleneck
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipeline.training.config import PRETRAINED_COMPONENTS, StageConfig, TrainConfig
from pipeline.training.discriminator import PatchDiscriminator
from pipeline.training.losses import VGGFeatures, codec_loss, discriminator_loss
from pipeline.training.memory import prepare_for_training, trains_in_bf16
from sprdiff import SPRDiff
from sprdiff.entropy import SpaceChannelEntropyModel
from sprdiff.rates import RateGains, add_rate_points

AUX_PARAMETER_SUFFIX = ".quantiles"  # CompressAI: EntropyBottleneck quantiles go to the aux optimizer
Wrap = Callable[[nn.Module], nn.Module]
SyncGrads = Callable[[Iterable[nn.Parameter]], None]
ReduceMean = Callable[[torch.Tensor], torch.Tensor]


class PiecewiseConstant:
    """LambdaLR factor: 1 until the first drop, then ``drop_lr / base_lr`` (JSON-able state)."""

    def __init__(self, base_lr: float, drops: Iterable[tuple[int, float]]):
        self.base_lr = base_lr
        self.drops = [[int(step), float(lr)] for step, lr in drops]

    def copy(self) -> PiecewiseConstant:
        """A LambdaLR's own instance: loading the scheduler's state overwrites its lambda's attributes."""
        return PiecewiseConstant(self.base_lr, self.drops)

    def __call__(self, step: int) -> float:
        factor = 1.0
        for at, lr in self.drops:
            if step >= at:
                factor = lr / self.base_lr
        return factor


def follow_schedule(scheduler: LambdaLR, schedule: PiecewiseConstant, base_lrs: list[float]) -> None:
    """Put ``schedule`` (a factor of each parameter group's ``base_lrs``) back into a LambdaLR whose
    state was just loaded: LambdaLR's state holds its lambda's attributes, so loading it would
    otherwise bring back the checkpoint's drops."""
    groups = scheduler.optimizer.param_groups
    scheduler.lr_lambdas = [schedule.copy() for _ in groups]
    factor = schedule(scheduler.last_epoch)
    scheduler.base_lrs = list(base_lrs)
    for group, base_lr in zip(groups, base_lrs, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor
    scheduler._last_lr = [base_lr * factor for base_lr in base_lrs]


def factorized_prior_parameters(module: nn.Module) -> set[nn.Parameter]:
    """The density parameters of ``module``'s EntropyBottlenecks (the factorized priors of
    hyper-latents), without their ``quantiles``."""
    return {p for sub in module.modules() if isinstance(sub, EntropyBottleneck)
            for name, p in sub.named_parameters() if name != "quantiles"}


def rate_point_parameters(module: nn.Module) -> set[nn.Parameter]:
    """The rate points' own parameters (``sprdiff.rates``): the per-rate gains and inverse gains and
    the entropy model's per-rate side offsets; empty for a one-rate model."""
    gains = {p for sub in module.modules() if isinstance(sub, RateGains) for p in sub.parameters()}
    return gains | {sub.rate_side for sub in module.modules()
                    if isinstance(sub, SpaceChannelEntropyModel) and hasattr(sub, "rate_side")}


def saved_group_names(param_groups: list[dict]) -> list[str]:
    """The names of a saved optimizer's groups. Checkpoints from before groups were named hold
    ``main`` and, when ``prior_lr_scale`` was not 1, ``prior``."""
    if all("name" in group for group in param_groups):
        return [group["name"] for group in param_groups]
    return ["main", "prior"][:len(param_groups)]


def frozen_modules(model: SPRDiff) -> dict[str, nn.Module]:
    """Pretrained parts kept in eval mode (their LoRA adapters still train)."""
    return {name: getattr(model, name) for name in PRETRAINED_COMPONENTS}


class OptimizedTrainer:
    """What the trainers of every stage share: CompressAI's two optimizers over the trainable
    parameters, one update (clipped main step, then the auxiliary quantile step), and metrics
    averaged over the workers."""

    config: TrainConfig
    device: torch.device
    sync_grads: SyncGrads = staticmethod(lambda params: None)
    reduce_mean: ReduceMean = staticmethod(lambda t: t)

    def set_up_optimizers(self, module: nn.Module, lr: float, lr_drops: Iterable[tuple[int, float]],
                          prior_lr_scale: float = 1.0, rate_lr_scale: float = 1.0) -> None:
        """The main AdamW takes every trainable parameter of ``module`` but the EntropyBottleneck
        ``quantiles``; an auxiliary Adam takes those alone. With ``prior_lr_scale != 1`` the
        EntropyBottlenecks' density parameters are a group of the main AdamW of their own, at that
        multiple of the lr (same schedule); with ``rate_lr_scale != 1`` so are the rate points'
        parameters (``rate_point_parameters``). Groups are named, so a resume can tell them apart."""
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.main_names = [n for n, _ in named if not n.endswith(AUX_PARAMETER_SUFFIX)]
        self.aux_names = [n for n, _ in named if n.endswith(AUX_PARAMETER_SUFFIX)]
        params = dict(named)
        self.main_params = [params[n] for n in self.main_names]
        self.aux_params = [params[n] for n in self.aux_names]
        opt = self.config.optimizer
        own = {"prior": (prior_lr_scale, factorized_prior_parameters(module)),
               "rate_points": (rate_lr_scale, rate_point_parameters(module))}
        own = {name: (scale, members) for name, (scale, members) in own.items() if scale != 1.0}
        taken = set().union(*(members for _, members in own.values()))
        groups = [{"name": "main", "params": [p for p in self.main_params if p not in taken], "lr": lr}]
        groups += [{"name": name, "params": [p for p in self.main_params if p in members], "lr": lr * scale}
                   for name, (scale, members) in own.items()]
        self.group_names = [group["name"] for group in groups]
        self.base_lrs = [group["lr"] for group in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=opt.betas, weight_decay=opt.weight_decay)
        self.aux_optimizer = torch.optim.Adam(self.aux_params, lr=opt.aux_lr)
        self.schedule = PiecewiseConstant(lr, lr_drops)  # the config's; the schedulers get copies
        self.scheduler = LambdaLR(self.optimizer, self.schedule.copy())

    def load_optimizer_state(self, state: dict) -> None:
        """Restore both optimizers and the step count of the schedule from a checkpoint. The schedule
        itself (base lr and drops) stays the config's: a resumed run that edits ``lr_drops`` follows
        the edit from the restored step on."""
        saved = saved_group_names(state["optimizer"]["param_groups"])
        if saved != self.group_names:
            raise ValueError(f"the checkpoint's optimizer has the parameter groups {saved}, this run's config makes "
                             f"{self.group_names}: a group of its own exists when prior_lr_scale (prior) or "
                             f"rate_lr_scale (rate_points) is not 1; resume with the checkpoint's scales or start "
                             f"a new --output")
        self.optimizer.load_state_dict(state["optimizer"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        follow_schedule(self.scheduler, self.schedule, self.base_lrs)

    def backward_micro_batches(self, nets: Iterable[nn.Module | None], micro_batches: list,
                               loss_of: Callable[[Any], tuple[torch.Tensor, dict[str, torch.Tensor]]],
                               ) -> dict[str, torch.Tensor]:
        """Gradient accumulation: backward ``loss_of(x) / n`` for each of the n micro-batches, so the
        summed gradients are those of the mean loss over all of them -- the same update as one batch
        of them all, for models whose samples do not interact. DDP (``nets`` wrapped by
        ``distribute``) all-reduces only after the last one. Returns the metrics averaged over the
        micro-batches."""
        n = len(micro_batches)
        totals: dict[str, torch.Tensor] = {}
        for i, x in enumerate(micro_batches):
            with contextlib.ExitStack() as stack:
                if i < n - 1:
                    for net in nets:
                        if hasattr(net, "no_sync"):  # DDP: accumulate locally, sync once
                            stack.enter_context(net.no_sync())
                loss, metrics = loss_of(x)
                (loss / n).backward()
            for name, value in {"loss": loss, **metrics}.items():
                totals[name] = totals.get(name, 0) + value.detach().float() / n
        return totals

    def step_optimizers(self, aux_loss: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip and step the main optimizer on the accumulated gradients; then minimise ``aux_loss()``
        (CompressAI's auxiliary loss, fitting the EntropyBottleneck quantiles). Returns (grad norm,
        aux loss)."""
        clip = self.config.optimizer.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.main_params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()

        self.aux_optimizer.zero_grad(set_to_none=True)
        aux = aux_loss()
        aux.backward()
        self.sync_grads(self.aux_params)  # outside DDP's forward: averaged by hand
        self.aux_optimizer.step()
        return grad_norm, aux

    def averaged(self, metrics: dict[str, torch.Tensor], lr: float, started: float) -> dict[str, float]:
        """The step's metrics averaged over workers, plus the lr used and the step's seconds."""
        names = list(metrics)
        values = self.reduce_mean(torch.stack([metrics[n].float().to(self.device) for n in names]))
        result = dict(zip(names, values.tolist()))
        result["lr"] = lr
        result["step_s"] = time.perf_counter() - started
        return result


def give_rate_points(model: SPRDiff, stage: StageConfig, lambda_rate: float) -> tuple[float, ...]:
    """The λ_b of each rate id when ``stage`` trains rate points (else ()): a one-rate model gets
    them here (``sprdiff.rates.add_rate_points``, default rate: the one at ``lambda_rate``); a model
    that has them must have as many."""
    if not stage.rate_points:
        return ()
    lambdas = tuple(float(p.lambda_rate) for p in stage.rate_points)
    if lambda_rate not in lambdas:
        raise ValueError(f"lambda_rate {lambda_rate} is not one of the rate points' {list(lambdas)}")
    if model.config.rates == 1:
        add_rate_points(model, [p.init_gain for p in stage.rate_points], lambdas.index(lambda_rate))
    elif model.config.rates != len(lambdas):
        raise ValueError(f"model {model.model_id!r} has {model.config.rates} rate points, the config trains "
                         f"{len(lambdas)}: give a one-rate model or one with as many")
    return lambdas


def micro_batch_list(x: torch.Tensor | list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """A batch, or the micro-batches of one accumulated update, as a list on ``device``."""
    batches = [x] if isinstance(x, torch.Tensor) else list(x)
    if not batches:
        raise ValueError("train_step needs at least one micro-batch")
    return [b.to(device, non_blocking=True) for b in batches]


class StageTrainer(OptimizedTrainer):
    def __init__(self, model: SPRDiff, config: TrainConfig, stage: int, lambda_rate: float | None = None,
                 device: torch.device | str = "cpu"):
        self.config = config
        self.stage_number = stage
        self.stage: StageConfig = config.stage(stage)
        self.lambda_rate = self.stage.lambda_rate if lambda_rate is None else float(lambda_rate)
        self.device = torch.device(device)
        self.use_bf16 = trains_in_bf16(config, self.device)
        self.rate_lambdas = give_rate_points(model, self.stage, self.lambda_rate)
        self.model = model.to(self.device)
        model.freeze_pretrained()
        for component in config.train_pretrained:  # no pretrained prior to keep (models trained from scratch)
            getattr(model, component).requires_grad_(True)
        prepare_for_training(model, config, self.device)
        self.set_up_optimizers(model, self.stage.lr, self.stage.lr_drops, self.stage.prior_lr_scale,
                               self.stage.rate_lr_scale)
        self.vgg = (VGGFeatures(config.vgg_weights, config.vgg_layer).to(self.device)
                    if self.stage.weights.perceptual > 0 else None)
        self.discriminator: PatchDiscriminator | None = None
        if self.stage.weights.adversarial > 0:
            d = config.discriminator
            self.discriminator = PatchDiscriminator(d.channels, d.layers).to(self.device)
            self.d_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=d.lr, betas=d.betas)
            self.d_scheduler = LambdaLR(self.d_optimizer, self.schedule.copy())
        self.net: nn.Module = self.model  # what the forward pass calls (DDP-wrapped by distribute)
        self.d_net: nn.Module | None = self.discriminator
        self.step = 0  # finished updates

    # ---- distribution

    def distribute(self, wrap: Wrap, sync_grads: SyncGrads, reduce_mean: ReduceMean) -> None:
        """Wrap the trained modules (DDP) and set how gradients/metrics are averaged across workers."""
        self.net = wrap(self.model)
        if self.discriminator is not None:
            self.d_net = wrap(self.discriminator)
        self.sync_grads, self.reduce_mean = sync_grads, reduce_mean

    def set_train_mode(self) -> None:
        self.model.train()
        for name, module in frozen_modules(self.model).items():
            if name not in self.config.train_pretrained:
                module.eval()
        if self.discriminator is not None:
            self.discriminator.train()

    def _autocast(self):
        if self.use_bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---- one update

    def train_step(self, x: torch.Tensor | list[torch.Tensor]) -> dict[str, float]:
        """One update on a batch x (B, 3, H, W) in [0, 1], or on a list of micro-batches whose
        gradients are accumulated (``grad_accum``); returns the metrics averaged over workers."""
        started = time.perf_counter()
        micro_batches = micro_batch_list(x, self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        fakes: list[torch.Tensor] = []

        first_sample = [0]

        def generator_loss(xb: torch.Tensor):
            rate, lambda_rate = self.sample_rates(first_sample[0], xb.shape[0])
            first_sample[0] += xb.shape[0]
            with self._autocast():
                out = self.net(xb) if rate is None else self.net(xb, rate)
                fake_logits = self.d_net(out["x_hat"]) if self.d_net is not None else None
            fakes.append(out["x_hat"].detach())
            loss, terms = codec_loss(xb, out, self.vgg, self.stage.weights, lambda_rate, fake_logits)
            if rate is not None:
                terms["rate_id"] = rate.float().mean()
            return loss, terms

        metrics = self.backward_micro_batches([self.net, self.d_net], micro_batches, generator_loss)
        grad_norm, aux_loss = self.step_optimizers(self.model.entropy.aux_loss)
        metrics.update(aux_loss=aux_loss.detach(), grad_norm=grad_norm.detach())

        if self.discriminator is not None:
            self.d_optimizer.zero_grad(set_to_none=True)  # drop what the generator loss left there

            def d_loss_of(real_and_fake: tuple[torch.Tensor, torch.Tensor]):
                with self._autocast():
                    logits = self.d_net(torch.cat(real_and_fake))  # one forward: real and fake
                real_logits, fake_logits = logits.float().chunk(2)
                return discriminator_loss(real_logits, fake_logits), {}

            pairs = list(zip(micro_batches, fakes, strict=True))
            metrics["d_loss"] = self.backward_micro_batches([self.d_net], pairs, d_loss_of)["loss"]
            self.d_optimizer.step()
            self.d_scheduler.step()
        self.step += 1
        return self.averaged(metrics, lr, started)

    def sample_rates(self, first: int, count: int) -> tuple[torch.Tensor | None, float | torch.Tensor]:
        """Rate ids and λ_b of ``count`` samples starting at the update's sample ``first``: with rate
        points the samples take them in turn, continuing from update to update (one sample an
        update: rate ``step % R``), so each rate gets an equal share; else (None, λ_b)."""
        if not self.rate_lambdas:
            return None, self.lambda_rate
        per_update = self.config.data.batch_size * self.config.grad_accum
        n = len(self.rate_lambdas)
        ids = (torch.arange(count) + self.step * per_update + first) % n
        return ids.to(self.device), torch.tensor(self.rate_lambdas, device=self.device)[ids.to(self.device)]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """The codec loss on x without updating anything: eval mode, so quantisation is rounding
        (deterministic) instead of training noise; the adversarial term is left out."""
        self.model.eval()
        try:
            with self._autocast():
                out = self.model(x.to(self.device))
            loss, terms = codec_loss(x.to(self.device), out, self.vgg, self.stage.weights, self.lambda_rate)
        finally:
            self.set_train_mode()
        return {"loss": loss.item(), **{k: v.item() for k, v in terms.items()}}

    @property
    def rate_id(self) -> int | None:
        """The rate id the exported model stamps into its records (from the config's rate_ids)."""
        return self.stage.rate_id_for(self.lambda_rate)

    def exportable(self) -> SPRDiff:
        return self.model

    # ---- state (checkpoints)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        state = {
            "step": self.step, "stage": self.stage_number, "lambda_rate": self.lambda_rate,
            "rate_lambdas": list(self.rate_lambdas),
            "model": self.trainable_state(),
            "parameter_names": {"main": self.main_names, "aux": self.aux_names},
            "optimizer": self.optimizer.state_dict(), "aux_optimizer": self.aux_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }
        if self.discriminator is not None:
            state.update(discriminator=self.discriminator.state_dict(), d_optimizer=self.d_optimizer.state_dict(),
                         d_scheduler=self.d_scheduler.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["stage"] != self.stage_number:
            raise ValueError(f"checkpoint is from stage {state['stage']}, this run is stage {self.stage_number}: "
                             f"use a new --output for the other stage")
        if float(state["lambda_rate"]) != self.lambda_rate:
            raise ValueError(f"checkpoint was trained with lambda_rate {state['lambda_rate']}, this run asks for "
                             f"{self.lambda_rate}: each rate point needs its own --output")
        if [float(v) for v in state.get("rate_lambdas", [])] != list(self.rate_lambdas):
            raise ValueError(f"checkpoint was trained with rate points at λ_b {state.get('rate_lambdas', [])}, this "
                             f"run's are {list(self.rate_lambdas)}: use a new --output for other rate points")
        if state["parameter_names"] != {"main": self.main_names, "aux": self.aux_names}:
            raise ValueError("checkpoint's trainable parameters differ from this model's: was it written for "
                             "another --model?")
        with torch.no_grad():
            params = self.trainable_state()
            for name, tensor in state["model"].items():
                params[name].copy_(tensor)
        self.load_optimizer_state(state)
        if self.discriminator is not None:
            if "discriminator" not in state:
                raise ValueError("checkpoint has no discriminator but this stage trains one")
            self.discriminator.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
            self.d_scheduler.load_state_dict(state["d_scheduler"])
            follow_schedule(self.d_scheduler, self.schedule, [self.config.discriminator.lr])
        self.step = int(state["step"])
        self.model.entropy.invalidate_tables()
        self.model.invalidate_fingerprint()
