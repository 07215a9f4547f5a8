"""The mode check: BatchNorm and Dropout left in eval mode while the model trains.

A leftover ``module.eval()`` (or a ``model.eval()`` for validation with no ``model.train()``
after it) raises no error: a BatchNorm in eval mode normalises with running statistics that never
move again, a Dropout in eval mode drops nothing. ``EvalModeCheck`` looks at every optimiser step:
a BatchNorm (with running statistics) or Dropout (p > 0) module in eval mode gets
``eval-mode:<top-level module>``, one flag per top-level module with the modules named in the
evidence. Freezing BatchNorm is also a common fine-tuning choice: modules named in ``intended``
(a top-level name covers everything under it) are recorded as intended, not flagged.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from harness.checks.flags import eval_mode

_KINDS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _behaves_differently(module: nn.Module) -> bool:
    """Train and eval mode compute different things: BN with running stats, Dropout with p > 0."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    return False


def _top(name: str) -> str:
    return name.split(".", 1)[0] if name else "(model)"


def _covered(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class EvalModeCheck:
    """The BatchNorm/Dropout modules of ``model`` (found now); ``check`` reads their modes."""

    def __init__(self, model: nn.Module, intended: Iterable[str] = ()) -> None:
        self.model = model
        self.intended = tuple(intended)
        self.modules = [(name, m) for name, m in model.named_modules() if _behaves_differently(m)]
        self.total: dict[str, int] = {}  # such modules per top-level module, for the evidence
        for name, _ in self.modules:
            self.total[_top(name)] = self.total.get(_top(name), 0) + 1

    def check(self, step: int) -> tuple[dict[str, str], dict[str, str]]:
        """``(flagged, intended)``: ``eval-mode:<module>`` with its evidence, split by whether
        the modules were declared intended. Nothing while no such module is in eval mode."""
        off: dict[str, list[tuple[str, nn.Module]]] = {}
        for name, m in self.modules:  # every step: only the mode flags are read here
            if not m.training:
                off.setdefault(_top(name), []).append((name, m))
        flagged: dict[str, str] = {}
        intended: dict[str, str] = {}
        for top, mods in off.items():
            text = self._evidence(top, mods, self.total[top], step)
            if all(_covered(name, self.intended) for name, _ in mods):
                intended[eval_mode(top)] = text
            else:
                flagged[eval_mode(top)] = text
        return flagged, intended

    def _evidence(self, top: str, mods: list[tuple[str, nn.Module]], total: int, step: int) -> str:
        names = ", ".join(f"{name} ({type(m).__name__})" for name, m in mods[:6])
        if len(mods) > 6:
            names += f", ... ({len(mods) - 6} more)"
        effects = []
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for _, m in mods):
            effects.append("BatchNorm running statistics do not move")
        if any(isinstance(m, nn.modules.dropout._DropoutNd) for _, m in mods):
            effects.append("Dropout drops nothing")
        where = (
            "the whole model is in eval mode (model.eval() with no model.train() after it?)"
            if not self.model.training
            else "while the model trains"
        )
        return (
            f"{top}: {len(mods)} of {total} BatchNorm/Dropout modules in eval mode at step {step}"
            f" {where}: {names}; {' and '.join(effects)}"
        )
