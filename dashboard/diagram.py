"""The network as a picture: a Graphviz DOT description for st.graphviz_chart (rendered by Streamlit itself).

input 784 -> linear1 -> ReLU -> linear2 -> ReLU -> linear3 -> logits, each frozen layer with its W's shape
and parameter count, and beside each adapted layer its LoRA branch: A (r x in), B (out x r), the scale, the
counts, and a note where a rank was capped at the layer's limit. architecture_dot is pure (no Streamlit) so
that tests read the DOT text; the numbers come from lora_core.params.parameter_table.
"""

from __future__ import annotations

from torch import nn

from dashboard import palette
from lora_core.lora import LoraConfig
from lora_core.model import IN_FEATURES
from lora_core.params import parameter_table


def _quote(text: str) -> str:
    """A DOT string literal: quotes and backslashes escaped, line breaks as DOT's centred \\n."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(shape: tuple[int, ...]) -> str:
    return " × ".join(map(str, shape))


def architecture_dot(model: nn.Module, config: LoraConfig | None = None, adapter: str | None = None) -> str:
    """DOT text of the MLP `model` (a plain MLP or a LoraModel) with adapter `config`'s LoRA branches.

    Ranks are those LoraModel.add_adapter gives (r capped at min(in, out) per layer, PEFT's rank_pattern);
    a capped layer's branch says "rank R capped at C"."""
    plain = getattr(model, "model", model)
    table = parameter_table(plain, config)
    capped = config.capped_for(plain) if config is not None else None
    lines = [
        "digraph lora {",
        "  rankdir=TB; nodesep=0.35; ranksep=0.3;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, fillcolor="white"];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    title = "Base model only: no adapter chosen"
    if config is not None and capped is not None:
        layers = ", ".join(config.target_modules)
        title = (
            f"{'Adapter ' + adapter if adapter else 'Adapter'}: rank {config.r} on {layers}; "
            f"{table.lora_params:,} trainable parameters beside {table.base_params:,} frozen "
            f"({table.lora_percent:.2f}%)"
        )
    lines.append(f"  labelloc=t; fontname=Helvetica; fontsize=12; label={_quote(title)};")
    lines.append(f"  input [shape=box, style=rounded, label={_quote(f'input x: {IN_FEATURES} pixels (28 × 28)')}];")
    previous = "input"
    for i, layer in enumerate(table.layers):
        name = layer.layer
        frozen = (
            f"{name} (frozen)\nW: {_shape(layer.weight_shape)} = {layer.weight_count:,}\n"
            f"b: {layer.bias_count:,}  ·  {layer.base_count:,} parameters"
        )
        frozen_colors = f'color="{palette.FROZEN}", fillcolor="{palette.light(palette.FROZEN)}"'
        lines.append(f"  {name}_W [label={_quote(frozen)}, {frozen_colors}];")
        output = f"{name}_W"
        lines.append(f"  {previous} -> {name}_W;")  # first, so that the frozen path is drawn on the left
        if layer.a_shape is not None and layer.b_shape is not None and capped is not None:
            rank = capped.rank_for(name)
            scale = capped.scale_for(name)
            cap_note = ""
            if config is not None and rank < config.r:  # PEFT's rank_pattern: the layer cannot hold rank r
                cap_note = f"\nrank {config.r} capped at {rank} = min(out, in)"
            lines += [
                f"  subgraph cluster_{name} {{",
                f'    label={_quote(f"LoRA on {name}: {layer.lora_count:,} trainable")}; color="{palette.ADAPTER}"; '
                f'style="dashed,rounded"; fontcolor="{palette.MARK}"; fontsize=10;',
                f"    {name}_A [label={_quote(f'A: {_shape(layer.a_shape)} = {layer.a_count:,}')}, "
                f'color="{palette.ADAPTER}", fillcolor="{palette.light(palette.ADAPTER)}"];',
                f"    {name}_B [label={_quote(f'B: {_shape(layer.b_shape)} = {layer.b_count:,}{cap_note}')}, "
                f'color="{palette.ADAPTER}", fillcolor="{palette.light(palette.ADAPTER)}"];',
                "  }",
                f'  {name}_sum [shape=circle, label="+", width=0.3, fixedsize=true, color="{palette.ADAPTED}", '
                f'fillcolor="{palette.light(palette.ADAPTED)}"];',
                f"  {previous} -> {name}_A;",
                f"  {name}_A -> {name}_B [label={_quote(f' r = {rank}')}];",
                f'  {name}_B -> {name}_sum [label={_quote(f" × α/r = {scale:g}")}, color="{palette.ADAPTER}"];',
                f"  {name}_W -> {name}_sum;",
            ]
            output = f"{name}_sum"
        if i < len(table.layers) - 1:
            lines.append(f'  relu{i + 1} [shape=ellipse, label="ReLU"];')
            lines.append(f"  {output} -> relu{i + 1} [label={_quote(f' {layer.weight_shape[0]:,}')}];")
            previous = f"relu{i + 1}"
        else:
            out_features = layer.weight_shape[0]
            lines.append(f"  logits [shape=box, style=rounded, label={_quote(f'logits: {out_features} digits')}];")
            lines.append(f"  {output} -> logits;")
    lines.append("}")
    return "\n".join(lines)


def show(model: nn.Module, config: LoraConfig | None = None, adapter: str | None = None) -> None:
    """The diagram on a page (st.graphviz_chart renders DOT in the browser; no Graphviz install needed)."""
    import streamlit as st

    # at its own size: stretched to the page, the narrow base-only graph grew to 2,000 px tall with 40 px text
    st.graphviz_chart(architecture_dot(model, config, adapter), width="content")
    if config is None:
        st.caption("Grey: the frozen layers. Choose or fine-tune an adapter to see its LoRA branches beside them.")
    else:
        st.caption(
            "Grey: the frozen layers (W and b never change). Orange: the adapter's LoRA branch beside each layer "
            "it adapts. Blue: where its output, scaled by α/r, is added to the layer's, as the adapted model "
            "(blue in every chart) computes it."
        )
