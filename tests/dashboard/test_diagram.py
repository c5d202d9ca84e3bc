"""The architecture diagram's DOT text: shapes, counts and scale from the adapter's config, capped ranks."""

from __future__ import annotations

import re

from dashboard.diagram import architecture_dot
from lora_core.lora import LoraConfig
from lora_core.model import MLP


def _node(dot: str, node: str) -> str:
    """The label of `node` (one line of the DOT text)."""
    match = re.search(rf"^\s*{node} \[label=\"([^\"]*)\"", dot, flags=re.MULTILINE)
    assert match, f"no node {node} in\n{dot}"
    return match.group(1)


def test_rank_4_on_linear1_and_linear2_only():
    dot = architecture_dot(MLP(), LoraConfig(r=4, alpha=8, target_modules=("linear1", "linear2")), "digit-9")
    assert _node(dot, "linear1_W").startswith("linear1 (frozen)\\nW: 1000 × 784 = 784,000\\nb: 1,000")
    assert "785,000 parameters" in _node(dot, "linear1_W")
    assert _node(dot, "linear2_W").startswith("linear2 (frozen)\\nW: 2000 × 1000 = 2,000,000")
    assert _node(dot, "linear3_W").startswith("linear3 (frozen)\\nW: 10 × 2000 = 20,000")
    assert _node(dot, "linear1_A") == "A: 4 × 784 = 3,136"
    assert _node(dot, "linear1_B") == "B: 1000 × 4 = 4,000"
    assert _node(dot, "linear2_A") == "A: 4 × 1000 = 4,000"
    assert _node(dot, "linear2_B") == "B: 2000 × 4 = 8,000"
    assert "linear3_A" not in dot and "cluster_linear3" not in dot  # linear3 is not adapted
    assert dot.count("× α/r = 2") == 2
    assert "LoRA on linear1: 7,136 trainable" in dot and "LoRA on linear2: 12,000 trainable" in dot
    assert "Adapter digit-9: rank 4 on linear1, linear2; 19,136 trainable parameters beside 2,807,010 frozen" in dot
    # the data flows input -> linear1 -> ReLU -> linear2 -> ReLU -> linear3 -> logits, through each sum
    for edge in ("input -> linear1_W", "input -> linear1_A", "linear1_sum -> relu1", "relu1 -> linear2_W"):
        assert edge in dot
    assert "relu2 -> linear3_W" in dot and "linear3_W -> logits" in dot
    assert dot.count("{") == dot.count("}")


def test_the_diagram_changes_with_the_adapter():
    four = architecture_dot(MLP(), LoraConfig(r=4, alpha=8, target_modules=("linear1", "linear2")))
    eight = architecture_dot(MLP(), LoraConfig(r=8, alpha=8, target_modules=("linear3",)))
    assert four != eight
    assert "linear1_A" not in eight and _node(eight, "linear3_A") == "A: 8 × 2000 = 16,000"
    assert "× α/r = 1" in eight
    plain = architecture_dot(MLP())
    assert "cluster_" not in plain and "no adapter chosen" in plain


def test_a_capped_rank_says_so():
    dot = architecture_dot(MLP(), LoraConfig(r=64, alpha=128))
    assert _node(dot, "linear1_A") == "A: 64 × 784 = 50,176"
    assert _node(dot, "linear3_A") == "A: 10 × 2000 = 20,000"
    assert "rank 64 capped at 10" in _node(dot, "linear3_B")
    assert "capped" not in _node(dot, "linear2_B")
    # the capped layer keeps the scale alpha/r = 2 (alpha_pattern), as LoraModel.add_adapter gives it
    assert dot.count("× α/r = 2") == 3


def test_other_hidden_sizes():
    dot = architecture_dot(MLP(32, 16), LoraConfig(r=2, alpha=4, target_modules=("linear2",)))
    assert _node(dot, "linear2_W").startswith("linear2 (frozen)\\nW: 16 × 32 = 512")
    assert _node(dot, "linear2_B") == "B: 16 × 2 = 32"


def test_on_a_fresh_start_the_diagram_waits_folded(fresh_dir) -> None:
    """Stretched to the page and open, the base-only diagram pushed Home's "Run the whole study" 3,500 px down."""
    from conftest import assert_clean, new_app

    at = new_app()  # Home, nothing saved
    assert_clean(at)
    (folded,) = [e for e in at.expander if e.label == "The network, and where LoRA sits"]
    assert folded.proto.expanded is False


def test_with_an_adapter_the_diagram_waits_folded_on_home_and_shows_on_parameters(trained_dir) -> None:
    """Folded, Home does not draw the picture at all (Graphviz costs the first page 0.16 s of the browser's time);
    opening the expander draws it."""
    from conftest import assert_clean, new_app, visit

    at = new_app()
    assert_clean(at)
    (folded,) = [e for e in at.expander if e.label == "The network, and where LoRA sits"]
    assert folded.proto.expanded is False and len(folded.get("graphviz_chart")) == 0
    at.session_state["home_network"] = True  # the user opens it
    at.run()
    assert_clean(at)
    (opened,) = [e for e in at.expander if e.label == "The network, and where LoRA sits"]
    assert len(opened.get("graphviz_chart")) == 1
    visit(at, "parameters")
    assert "The network with this adapter's LoRA branches" in [s.value for s in at.subheader]
    (shown,) = at.get("graphviz_chart")
    assert "LoRA on linear1" in shown.proto.spec
