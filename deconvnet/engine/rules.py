"""The rules: how a rectification is undone on the way down, the one place the three differ.

Each rule is one small object (after Zennit's rules) that every way down calls: the plain
engine's windows (``engine.plain``), the general engine's walk (``engine.walk``) and its
autograd path (``engine.canonizers``). Adding a rule means one new class here, listed in
``_ALL``. Users name a rule by its string (``rule="guided"``); ``rule_named`` is the one lookup.

- ``deconvnet`` (Zeiler & Fergus): the ReLU of the signal itself, whatever the forward did.
- ``guided`` (Springenberg et al.): that, and only where the forward rectification was open.
- ``gradient``: only where the forward rectification was open, as plain backprop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from deconvnet.errors import DeconvNetError

# What a rule that reads the forward's mask says when the forward pass kept none.
NO_MASK = (
    "this forward record was made for the deconvnet rule, which keeps no ReLU masks: run the "
    "forward with rule='guided' (it serves all three rules)"
)


class Rule(ABC):
    """How the signal goes down through one rectification (ReLU, ReLU6).

    ``name`` is how users ask for it; ``needs_mask`` says whether it reads where the forward
    rectification was open, so that a forward pass made for it keeps those masks.
    """

    name: ClassVar[str]
    needs_mask: ClassVar[bool]

    @abstractmethod
    def rectify(
        self, signal: torch.Tensor, opened: torch.Tensor | None, inplace: bool = False
    ) -> torch.Tensor:
        """The signal ``(T, C, h, w)`` on the way down through a rectification.

        Parameters
        ----------
        signal
            What arrives from above, ``(T, C, h, w)``.
        opened
            Where the forward rectification was open (booleans broadcastable to ``signal``), or
            None when the forward kept no mask; only read when ``needs_mask``.
        inplace
            Overwrite ``signal`` (an array of the caller's own): one pass instead of a new array.

        Returns
        -------
        torch.Tensor
            The rectified signal, same shape.

        Raises
        ------
        DeconvNetError
            When the rule needs the mask and ``opened`` is None.
        """

    def _mask(self, opened: torch.Tensor | None) -> torch.Tensor:
        if opened is None:
            raise DeconvNetError(NO_MASK)
        return opened

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Deconvnet(Rule):
    """Zeiler & Fergus: pass only the positive signal, wherever the forward unit was."""

    name = "deconvnet"
    needs_mask = False

    def rectify(
        self, signal: torch.Tensor, opened: torch.Tensor | None, inplace: bool = False
    ) -> torch.Tensor:
        return signal.clamp_(min=0) if inplace else signal.clamp(min=0)


class Guided(Rule):
    """Guided backpropagation: the positive signal, and only where the forward unit was open."""

    name = "guided"
    needs_mask = True

    def rectify(
        self, signal: torch.Tensor, opened: torch.Tensor | None, inplace: bool = False
    ) -> torch.Tensor:
        mask = self._mask(opened)
        # After clamp the array is a fresh one either way: multiply it in place.
        return (signal.clamp_(min=0) if inplace else signal.clamp(min=0)).mul_(mask)


class Gradient(Rule):
    """Plain backprop: the signal, positive or not, where the forward unit was open."""

    name = "gradient"
    needs_mask = True

    def rectify(
        self, signal: torch.Tensor, opened: torch.Tensor | None, inplace: bool = False
    ) -> torch.Tensor:
        mask = self._mask(opened)
        return signal.mul_(mask) if inplace else signal * mask


_ALL: dict[str, Rule] = {rule.name: rule for rule in (Deconvnet(), Guided(), Gradient())}

RULES: tuple[str, ...] = tuple(_ALL)  # the names users may pass, the paper's rule first


def rule_named(rule: str | Rule) -> Rule:
    """The rule a user asked for.

    Parameters
    ----------
    rule
        Its name (``"deconvnet"``, ``"guided"``, ``"gradient"``), or a ``Rule`` already.

    Returns
    -------
    Rule
        The rule's one object.

    Raises
    ------
    DeconvNetError
        For a name that is no rule.
    """
    if isinstance(rule, Rule):
        return rule
    found = _ALL.get(rule) if isinstance(rule, str) else None
    if found is None:
        raise DeconvNetError(f"unknown rule {rule!r}; valid rules are {', '.join(RULES)}")
    return found


def check_rule(rule: str) -> None:
    """Raise ``DeconvNetError`` unless ``rule`` names a rule (``rule_named``'s check alone)."""
    rule_named(rule)
