"""The one table of trial options that other parts of the harness name by a short key.

Each row ties together the names one hyperparameter goes by: the dotted ``TrialConfig`` field
(``optim.lr``), the flat key that W&B config, parallel-coordinates panels and sweep files use
(``lr``), whether it is searched and plotted on a log scale, and whether it is one of the
BatchNorm switches the story is about. The CLI, the sweep file parser, W&B tracking, the
study-level outlier detector and the report all read it from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    flat: str  # W&B config key and sweep-file short name
    dotted: str  # the TrialConfig field
    log: bool = False  # spans orders of magnitude: compared and plotted on a log scale
    bn_switch: bool = False  # one of the BatchNorm switches (encoder / FCN / decoder)


OPTIONS: tuple[Option, ...] = (
    Option("model", "model.name"),
    Option("lr", "optim.lr", log=True),
    Option("f_lr", "optim.f_lr", log=True),
    Option("encoder_bn", "model.encoder_bn", bn_switch=True),
    Option("fcn_bn", "model.fcn_bn", bn_switch=True),
    Option("decoder_bn", "model.decoder_bn", bn_switch=True),
    Option("optimizer", "optim.name"),
    Option("weight_decay", "optim.weight_decay", log=True),
    Option("scheduler", "optim.scheduler"),
    Option("width", "model.width"),
    Option("fc_channels", "model.fc_channels"),
    Option("fc_kernel", "model.fc_kernel"),
    Option("dropout", "model.dropout"),
    Option("pretrained", "model.pretrained"),
    Option("image_size", "data.image_size"),
    Option("overlap", "data.overlap"),
    Option("augment", "data.augment"),
    Option("batch_size", "train.batch_size"),
    Option("epochs", "train.epochs"),
    Option("seed", "train.seed"),
    Option("inject_bug", "train.inject_bug"),
)

# flat key -> dotted field
FLAT_KEYS: dict[str, str] = {o.flat: o.dotted for o in OPTIONS}
# names (flat or dotted) of options on a log scale
LOG_PARAMS: tuple[str, ...] = tuple(n for o in OPTIONS if o.log for n in (o.flat, o.dotted))
# the BatchNorm switches, by flat key, in model order
BN_SWITCHES: tuple[str, ...] = tuple(o.flat for o in OPTIONS if o.bn_switch)
# an injected bug is what the checks must find, never a hyperparameter that explains a result
HIDDEN_PARAMS: tuple[str, ...] = ("inject_bug", "train.inject_bug")


def short_name(name: str) -> str:
    """``optim.lr`` -> ``lr``; names without a flat key stay as they are."""
    for o in OPTIONS:
        if name == o.dotted:
            return o.flat
    return name
