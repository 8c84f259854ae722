"""The training settings of each config A-G of the paper's Table 1, in one table (standard library
only, like edm2.train.options).

    CONFIG_TRAINING["A"].loss              'edm': lambda(sigma) weighting (EDM2 Eq. 15)
    CONFIG_TRAINING["B"].ema               'power': power-function EMA, post-hoc (EDM2 Sec. 3)
    config_training("E").adam_betas        (0.9, 0.99)

What a config computes comes from three places: its network (`Precond(config=...)`,
edm2.nn.ablation: architecture, biases, normalisations, attention, the "partial" or "full" fp16
split of each tensor, the +-256 activation clamp), its preset (edm2.presets: batch, learning
rate alpha_ref and decay t_ref, dropout, P_mean/P_std, loss scaling, as the hyper-parameter
boxes of EDM2 Figs. 16-22 print them for size S) and this table: what the training loop does
differently for it. Config A is "ADM as implemented in EDM" (EDM2 Appendix B.1), so it trains
as NVlabs/edm's training_loop.py and loss.py (`EDMLoss`) do; B-G train as NVlabs/edm2's
(EDM2 Appendix B.2-B.7, D.2). See docs/method.md#ablation-ladder and docs/training.md.
"""

import dataclasses
import math

CONFIG_NAMES = ("A", "B", "C", "D", "E", "F", "G")  # the rows of Table 1 (edm2.nn.ablation.CONFIGS)

LOSSES = ("edm", "uncertainty")
EMAS = ("traditional", "power")


@dataclasses.dataclass(frozen=True)
class ConfigTraining:
    """What the training loop does for one config (EDM2 Table 1 and Figs. 16-22)."""

    loss: str  # 'edm': lambda(sigma) (D - y)^2 (EDM2 Eq. 15, EDM's EDMLoss); 'uncertainty': EDM2 Eq. 21.
    adam_betas: tuple[float, float]  # Adam (beta1, beta2); eps 1e-8 in every config (as both official codes).
    ema: str  # 'traditional': one EMA with a half-life (EDM2 Eq. 110/120, A); 'power': power-function EMAs (Eq. 2).
    ema_halflife_nimg: int | None  # Half-life of the traditional EMA in images (EDM: ema_halflife_kimg=50000).
    ema_rampup_ratio: float | None  # Half-life at most this fraction of the images seen (EDM: 0.05).
    inf_gradient: float  # Non-finite gradients: NaN -> 0, +-Inf -> +-this (A: EDM's nan_to_num 1e5; B-G: 0, D.2).
    precision: str  # 'partial' (A-B: attention logits and softmax in fp32) or 'full' fp16 (C-G); in the network.

    @property
    def uses_logvar(self) -> bool:
        """Whether the loss trains the network's uncertainty head u(sigma) (EDM2 Eq. 21)."""
        return self.loss == "uncertainty"

    def traditional_ema_std(self, nimg: int) -> float:
        """The relative std of the traditional EMA after `nimg` images, h / (ln 2 * nimg) with the
        half-life h = min(ema_halflife_nimg, ema_rampup_ratio * nimg) (edm2.ema.HalfLifeEMA): the
        EMA length its snapshot is named by and scored at (config A; 0.034 at 2^31 images)."""
        if self.ema != "traditional":
            raise ValueError("only a traditional EMA has a fixed relative std")
        ratio = self.ema_rampup_ratio if self.ema_rampup_ratio is not None else math.inf
        if nimg <= 0:
            return ratio / math.log(2)
        return min(float(self.ema_halflife_nimg), ratio * nimg) / (math.log(2) * nimg)


_A = ConfigTraining(
    loss="edm",
    adam_betas=(0.9, 0.999),
    ema="traditional",
    ema_halflife_nimg=50_000_000,
    ema_rampup_ratio=0.05,
    inf_gradient=1e5,
    precision="partial",
)
_B = ConfigTraining(
    loss="uncertainty",
    adam_betas=(0.9, 0.99),
    ema="power",
    ema_halflife_nimg=None,
    ema_rampup_ratio=None,
    inf_gradient=0.0,
    precision="partial",
)
_C = dataclasses.replace(_B, precision="full")

CONFIG_TRAINING: dict[str, ConfigTraining] = {"A": _A, "B": _B, "C": _C, "D": _C, "E": _C, "F": _C, "G": _C}
"""{config: its training settings} (EDM2 Table 1; Figs. 16-22; Appendix D.2 for the safety measures)."""


def config_training(config: str) -> ConfigTraining:
    """The training settings of `config` 'A'..'G'; ValueError naming it otherwise."""
    try:
        return CONFIG_TRAINING[config]
    except KeyError:
        raise ValueError(f"unknown config {config!r}; use one of {', '.join(CONFIG_NAMES)}") from None
