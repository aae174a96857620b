"""The rules: how a rectification is undone on the way down, the one place the three differ.

Each rule is one small object that every way down calls: the plain engine's windows
(``engine.plain``), the general engine's walk (``engine.walk``) and its autograd path
(``engine.canonizers``). The three are one mechanism with two switches (after Captum's
deconvnet and guided backprop): whether only the positive signal passes, and whether it passes
only where the forward rectification was open. Adding a rule means one new ``Rule`` in ``_ALL``.
Users name a rule by its string (``rule="guided"``); ``rule_named`` is the one lookup.

- ``deconvnet`` (Zeiler & Fergus): the ReLU of the signal itself, whatever the forward did.
- ``guided`` (Springenberg et al.): that, and only where the forward rectification was open.
- ``gradient``: only where the forward rectification was open, as plain backprop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deconvnet.errors import DeconvNetError

# What a rule that reads the forward's mask says when the forward pass kept none.
NO_MASK = (
    "this forward record was made for the deconvnet rule, which keeps no ReLU masks: run the "
    "forward with rule='guided' (it serves all three rules)"
)


@dataclass(frozen=True)
class Rule:
    """How the signal goes down through one rectification (ReLU, ReLU6).

    ``name`` is how users ask for it. ``positive``: only the positive signal passes (the ReLU
    of the signal itself). ``needs_mask``: the signal passes only where the forward
    rectification was open (the ReLU's own backward), so a forward pass made for the rule keeps
    those masks.
    """

    name: str
    positive: bool
    needs_mask: bool

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
        if self.needs_mask and opened is None:
            raise DeconvNetError(NO_MASK)
        if self.positive:
            signal = signal.clamp_(min=0) if inplace else signal.clamp(min=0)
            # After clamp the array is the caller's or a fresh one: the mask may overwrite it.
            inplace = True
        if self.needs_mask:
            signal = signal.mul_(opened) if inplace else signal * opened
        return signal


_ALL: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("deconvnet", positive=True, needs_mask=False),
        Rule("guided", positive=True, needs_mask=True),
        Rule("gradient", positive=False, needs_mask=True),
    )
}

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
        near = rule.strip().lower() if isinstance(rule, str) else None
        hint = f"did you mean {near}? (names are exact and lowercase); " if near in _ALL else ""
        raise DeconvNetError(f"unknown rule {rule!r}; {hint}valid rules are {', '.join(RULES)}")
    return found


def check_rule(rule: str) -> None:
    """Raise ``DeconvNetError`` unless ``rule`` names a rule (``rule_named``'s check alone)."""
    rule_named(rule)
