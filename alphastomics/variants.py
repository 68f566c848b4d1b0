"""Attention variants: one vocabulary and one table, used by config, model, samples, params and reports.

Three orthogonal settings (``TransformerLayer_setting``) choose a variant:

- ``attention``: the kernel, ``linear`` (Shen et al.'s efficient attention, LUNA's baseline) or ``softmax``;
- ``gate``: the output gate of Qiu et al. (NeurIPS 2025), ``none`` | ``headwise`` | ``elementwise``;
- ``qk_norm``: RMSNorm over the head dimension on q and k.

The design note spelled them ``use_gated_attention`` (which chose the *kernel*: false = linear, and then
ignored the other two), ``gate_type`` and ``use_qk_norm``; ``from_design_note`` maps a section written that way
onto the three settings, so the design note's ablation YAML keeps working. ``VARIANTS`` names the design note's
four ablation rows plus the ungated softmax control; every other combination is named by ``variant_name``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Kernel = Literal["linear", "softmax"]
Gate = Literal["none", "headwise", "elementwise"]



# The design note's spelling of the three settings, with the type each value must have.
DESIGN_NOTE_KEYS: dict[str, Any] = {"use_gated_attention": bool, "gate_type": Gate, "use_qk_norm": bool}


@dataclass(frozen=True)
class Variant:
    attention: Kernel
    gate: Gate
    qk_norm: bool

    def settings(self) -> dict[str, Any]:
        """The ``TransformerLayer_setting`` keys of this variant."""
        return asdict(self)

    def attention_parameters(self, d_model: int, num_heads: int) -> int:
        """Parameters of one attention layer of this variant, counted without building it (the report has
        no torch): q, k, v and output projections (4 d^2, no bias), the gate fused into the query projection
        (d x heads headwise, d x d elementwise) and QK-norm's two RMSNorm scales over the head dimension.
        tests/test_model.py holds it equal to ``model.count_parameters`` of the module itself."""
        gate = {"none": 0, "headwise": num_heads, "elementwise": d_model}[self.gate]
        return 4 * d_model * d_model + d_model * gate + (2 * d_model // num_heads if self.qk_norm else 0)


VARIANTS: dict[str, Variant] = {
    "linear": Variant("linear", "none", False),
    "gated_headwise": Variant("softmax", "headwise", True),
    "gated_elementwise": Variant("softmax", "elementwise", True),
    "gated_headwise_no_qknorm": Variant("softmax", "headwise", False),
    "softmax": Variant("softmax", "none", True),
}


def variant_name(attention: str, gate: str, qk_norm: bool) -> str:
    """The table's name of these settings, or a descriptive one (e.g. ``linear_headwise_qknorm``)."""
    for name, v in VARIANTS.items():
        if (v.attention, v.gate, v.qk_norm) == (attention, gate, qk_norm):
            return name
    return "_".join([attention, *([gate] if gate != "none" else []), *(["qknorm"] if qk_norm else [])])


def from_design_note(section: dict[str, Any]) -> dict[str, Any]:
    """A ``TransformerLayer_setting`` mapping with the design note's keys rewritten to the three settings.

    ``use_gated_attention: false`` is the linear baseline exactly as the design note meant it: no gate, no
    QK-norm, whatever ``gate_type``/``use_qk_norm`` say beside it. Keys already in the new spelling win.
    """
    if not any(k in section for k in DESIGN_NOTE_KEYS):
        return section
    out = {k: v for k, v in section.items() if k not in DESIGN_NOTE_KEYS}
    mapped: dict[str, Any] = {}
    if "gate_type" in section:
        mapped["gate"] = section["gate_type"]
    if "use_qk_norm" in section:
        mapped["qk_norm"] = section["use_qk_norm"]
    gated = section.get("use_gated_attention")
    if gated is not None:
        mapped["attention"] = "softmax" if gated is True else "linear" if gated is False else gated
        if gated is False:
            mapped.update(gate="none", qk_norm=False)
    return {**mapped, **out}
