from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from st_hist2st.nn._augment import random_dihedral, random_stain_jitter
from st_hist2st.nn._losses import correlation_loss, distillation_loss, zinb_nll
from st_hist2st.nn._module import Architecture, Hist2STModule
from st_hist2st.nn._training import Training


def crop_section(
    batch: dict, fraction: float | None = None, max_spots: int | None = None, generator: torch.Generator | None = None
) -> dict:
    """The spots nearest (on the grid) to a random spot of the section, with their subgraph.

    As many as ``fraction`` of the section's spots and at most ``max_spots``; the whole section when neither
    asks for fewer spots than it has.
    """
    from torch_geometric.utils import subgraph

    n = batch["positions"].shape[0]
    k = n if fraction is None else max(2, int(round(fraction * n)))
    if max_spots is not None:
        k = min(k, max_spots)
    if k >= n:
        return batch
    centre = int(torch.randint(n, (1,), generator=generator))
    dist = (batch["positions"] - batch["positions"][centre]).float().norm(dim=1)
    keep = torch.argsort(dist, stable=True)[:k].sort().values
    out = {key: value[keep] for key, value in batch.items() if key != "edge_index"}
    out["edge_index"], _ = subgraph(keep, batch["edge_index"], relabel_nodes=True, num_nodes=n)
    return out


def pearson_per_gene(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson r between columns of two ``(N, G)`` tensors; NaN for a column constant in either."""
    pred, target = pred.double(), target.double()
    pc, tc = pred - pred.mean(0), target - target.mean(0)
    denom = pc.norm(dim=0) * tc.norm(dim=0)
    r = (pc * tc).sum(0) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the random draws of one training step: a function of the fit's seed, the step and the process."""
    return (seed * 1_000_003 + step * 7_919 + rank) % (2**63 - 1)


def check_step_in_backward(trainer: L.Trainer) -> None:
    """Refuse ``step_in_backward=True`` with several processes or with a gradient scaler (fp16)."""
    if trainer.world_size > 1:
        raise ValueError(
            f"`step_in_backward=True` trains in one process only ({trainer.world_size} here): data-parallel "
            "training averages the gradients once all of them are complete. Leave it off with several devices."
        )
    if str(trainer.precision).startswith("16"):
        raise ValueError(
            f"`step_in_backward=True` cannot unscale fp16 gradients (`precision={trainer.precision!r}`); use "
            "'bf16-mixed' or '32-true'."
        )


def epoch_ran_all_batches(trainer: L.Trainer) -> bool:
    """Whether the epoch ending now ran all its batches (``max_time`` or a callback can stop it within)."""
    return bool(trainer.fit_loop.epoch_loop.batch_progress.current.completed >= trainer.num_training_batches)


class Hist2STPlan(L.LightningModule):
    """Lightning training plan: one section per step, losses of the paper, validation Pearson r per section.

    Each batch is a dict with ``patches`` ``(N, 3, H, W)`` uint8, ``positions`` ``(N, 2)``, ``edge_index``,
    ``targets`` ``(N, G)``, ``counts`` ``(N, G)`` and ``size_factors`` ``(N,)``.

    Parameters
    ----------
    architecture
        Keyword arguments of :class:`~st_hist2st.nn.Architecture`.
    training
        Keyword arguments of :class:`~st_hist2st.nn.Training`.
    history_path
        JSON file the rank-0 process rewrites after every epoch with the history (it survives spawned
        processes).
    net
        The network to train in place; a new one is built from ``architecture`` when ``None``. Passing the
        caller's network saves holding a second copy of the weights.
    seed
        Seed of the random draws (augmentations, dropout, windows): each step reseeds from it and the step
        number, so a fit resumed from a checkpoint continues exactly.
    """

    def __init__(
        self,
        architecture: dict,
        training: dict,
        history_path: str | None = None,
        net: Hist2STModule | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net"])
        if net is not None and net.arch != Architecture(**architecture):
            raise ValueError(f"`net` was built with {net.arch}, not with `architecture` {architecture}.")
        self.net = Hist2STModule(Architecture(**architecture)) if net is None else net
        self.settings = Training(**training)
        self.seed = int(seed)
        self.net.gradient_checkpointing = self.settings.gradient_checkpointing
        self.history: list[dict] = []
        self.history_path = history_path
        self._epoch_sums: dict[str, list[float]] = {}
        self._val_r: list[float] = []
        self._val_mse: list[float] = []
        self.register_buffer("gene_weights", None, persistent=False)
        # with step_in_backward the optimiser runs from hooks on the weights, not from Lightning's loop
        self.automatic_optimization = not self.settings.step_in_backward
        self._step_hooks: list = []

    def set_gene_statistics(self, mean: torch.Tensor, var: torch.Tensor, *, init_bias: bool = True) -> None:
        """Use the training targets' per-gene ``mean`` and ``var`` as the settings say (output bias, gene weights).

        ``init_bias=False`` keeps the expression head's bias (a re-fit continues from trained weights); the
        gene weights of ``standardize_genes`` are set either way, since they are not saved with the weights.
        """
        if self.settings.init_output_bias and init_bias:
            with torch.no_grad():
                self.net.gene_head.linear.bias.copy_(mean)
        if self.settings.standardize_genes:
            # a floor keeps genes that barely vary in the training spots from dominating
            weights = 1 / var.clamp_min(0.01 * float(var.mean()))
            self.gene_weights = (weights / weights.mean()).float()

    def set_count_statistics(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Start the ZINB head at each gene's count distribution (``Training.init_zinb_bias``).

        ``mean`` and ``var`` are per gene, of the counts divided by the size factors: the mean's bias becomes
        ``log(mean)``, the dispersion's the moment estimate ``mean**2 / (var - mean)`` (within [0.1, 100]) and
        the dropout probability's 0.05; the ZINB loss then starts near its value for the gene means.
        """
        if not self.settings.init_zinb_bias or self.net.zinb is None:
            return
        mean = mean.double().clamp_min(1e-3)
        disp = (mean.square() / (var.double() - mean).clamp_min(1e-6)).clamp(0.1, 100.0)
        head = self.net.zinb
        with torch.no_grad():
            head.mean.bias.copy_(mean.log())
            head.disp.bias.copy_(disp + torch.log(-torch.expm1(-disp)))  # the inverse of softplus
            head.pi.bias.fill_(math.log(0.05 / 0.95))

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """All terms of the loss for one section."""
        cfg, net = self.settings, self.net
        patches, positions, edge_index = batch["patches"], batch["positions"], batch["edge_index"]
        passes = cfg.bake if (cfg.lamb > 0 and net.pass_weight is not None) else 0
        if passes and cfg.batch_passes:
            if net.gradient_checkpointing:
                # each pass is made chunk by chunk in the encoder: the augmented copies are never held together
                h = net.encode(patches, positions, edge_index, views=[None, *net.augment.draw(passes)])
            else:
                h = net.encode(torch.cat([patches.unsqueeze(0), net.augment(patches, passes)]), positions, edge_index)
            h_clean, h_aug = h[0], h[1:]
        else:
            h_clean = net.encode(patches, positions, edge_index)[0]
            h_aug = (
                torch.cat([net.encode(net.augment(patches, 1), positions, edge_index) for _ in range(passes)])
                if passes
                else None
            )
        pred = net.gene_head(h_clean).float()
        if self.gene_weights is None:
            out = {"mse": F.mse_loss(pred, batch["targets"])}
        else:
            out = {"mse": ((pred - batch["targets"]).square() * self.gene_weights).mean()}
        loss = out["mse"]
        if cfg.pearson > 0:
            out["pearson"] = correlation_loss(pred, batch["targets"])
            loss = loss + cfg.pearson * out["pearson"]
        if cfg.zinb > 0 and net.zinb is not None:
            mean, disp, pi = net.zinb(h_clean.float())
            out["zinb"] = zinb_nll(batch["counts"], mean.float(), disp.float(), pi.float(), batch["size_factors"])
            loss = loss + cfg.zinb * out["zinb"]
        if h_aug is not None:
            out["distill"] = distillation_loss(pred, net.gene_head(h_aug).float(), net.pass_weight(h_aug).float())
            loss = loss + cfg.lamb * out["distill"]
        out["loss"] = loss
        return out

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.settings.dihedral:
            batch = {**batch, "patches": random_dihedral(batch["patches"])}
        if self.settings.stain_jitter is not None:
            batch = {**batch, "patches": random_stain_jitter(batch["patches"], self.settings.stain_jitter)}
        out = self.losses(batch)
        for name, value in out.items():
            self._epoch_sums.setdefault(name, []).append(float(value.detach()))
        self.log("loss", out["loss"].detach(), prog_bar=True, batch_size=1)
        if self.automatic_optimization:
            return out["loss"]
        # Lightning runs training_step under the precision's autocast; a backward pass belongs outside it
        with torch.autocast(self.device.type, enabled=False):
            self.manual_backward(out["loss"])
        # every weight was updated in the backward pass and its gradient dropped, so this step changes no weight;
        # it advances Lightning's step count, which callbacks and `max_steps` read
        self.optimizers().step()
        return None

    def on_train_start(self) -> None:
        if not self.settings.step_in_backward:
            return
        check_step_in_backward(self.trainer)
        optimizer = self.optimizers().optimizer

        def step(param: torch.Tensor) -> None:
            optimizer.step()  # only `param` holds a gradient now: Adam skips weights whose gradient is None
            param.grad = None

        self._step_hooks = [p.register_post_accumulate_grad_hook(step) for p in self.parameters() if p.requires_grad]

    def on_train_end(self) -> None:
        self.remove_step_hooks()

    def remove_step_hooks(self) -> None:
        """Take the hooks of ``step_in_backward`` off the weights (also after training failed)."""
        for hook in self._step_hooks:
            hook.remove()
        self._step_hooks = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        from st_hist2st._inference import predict_windows

        precision = "bf16-mixed" if str(self.trainer.precision).startswith("bf16") else "32-true"
        pred = predict_windows(
            self.net,
            lambda index: batch["patches"][torch.as_tensor(index, device=batch["patches"].device)],
            batch["positions"],
            batch["edge_index"],
            self.device,
            precision=precision,
            max_spots=self.settings.max_spots,
            colour_ridge=False,  # fitted after the network; the history follows the network alone
        )
        pred = torch.from_numpy(pred).to(batch["targets"].device)
        r = pearson_per_gene(pred, batch["targets"])
        self._val_r.append(float(torch.nanmean(r)) if torch.isfinite(r).any() else float("nan"))
        self._val_mse.append(float(F.mse_loss(pred, batch["targets"])))

    def _gather_mean(self, values: list[float]) -> float:
        local = torch.tensor([np.nansum(values), np.isfinite(values).sum()], dtype=torch.float64, device=self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            local = self.all_gather(local).sum(0)
        return float(local[0] / local[1]) if local[1] > 0 else float("nan")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._val_r, self._val_mse = [], []
            return
        self._val_stats = {"val_pearson": self._gather_mean(self._val_r), "val_mse": self._gather_mean(self._val_mse)}
        self.log("val_pearson", self._val_stats["val_pearson"], prog_bar=True, batch_size=1, rank_zero_only=True)
        self._val_r, self._val_mse = [], []

    def on_train_epoch_start(self) -> None:
        # read now: Lightning steps the schedule after the epoch's last batch, before on_train_epoch_end
        self._epoch_lr = self.optimizers().param_groups[0]["lr"]

    def on_train_epoch_end(self) -> None:
        # an epoch that `max_time` or a callback cut short keeps its row, marked, since its steps changed the weights
        row = {"epoch": self.current_epoch, "lr": self._epoch_lr, "complete": epoch_ran_all_batches(self.trainer)}
        row.update({f"train_{k}": self._gather_mean(v) for k, v in self._epoch_sums.items()})
        row.update(getattr(self, "_val_stats", {}))
        self._epoch_sums, self._val_stats = {}, {}
        self.history.append(row)
        if not self.automatic_optimization:
            self.lr_schedulers().step()
        if self.history_path is not None and self.global_rank == 0:
            Path(self.history_path).write_text(json.dumps(self.history))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning keeps weights, optimiser, schedule and loop counters; these make a resumed fit continue exactly
        checkpoint["hist2st_history"] = list(self.history)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("hist2st_history", []))

    def training_window(self, batch: dict) -> dict:
        """The spots of ``batch`` this step trains on: a window (``crop_fraction``, ``max_spots``) or all."""
        # a stream of its own, apart from the step's dropout and augmentations
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.global_step, self.global_rank) ^ 0x5EED)
        return crop_section(batch, self.settings.crop_fraction, self.settings.max_spots, generator=generator)

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        # the training window is cut before the batch goes to the device: a section of 50,000 spots holds
        # 1.9 GB of patches, of which a step of 1,024 spots needs 39 MB
        return self.training_window(batch) if self.trainer.training else batch

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # each step draws its augmentations and dropout from a seed of its own, so a fit resumed from a
        # checkpoint makes exactly the draws of an uninterrupted one
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning drops the gradients only before the next backward pass; dropping them now keeps them out of
        # the next forward pass's peak memory (0.3 GB at the paper's size)
        optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self):
        cfg = self.settings
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cfg.lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
