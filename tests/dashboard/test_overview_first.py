"""Overview first, details on demand: every page opens with one sentence, and its explanations wait in expanders."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import PAGES, app_with_active, new_app, visit
from streamlit.testing.v1.element_tree import Block, Element

PARAGRAPH_CHARS = 240  # about two sentences: longer text outside an expander is a paragraph on the page
SENTENCE_END = re.compile(r"[.!?](\s|$)")


def page_texts(node: Block | Element, folded: bool = False) -> list[tuple[str, bool]]:
    """Every markdown text under `node` in page order (captions are small print and not counted), each with
    whether it sits in an expander."""
    if isinstance(node, Element):
        return [(str(node.value), folded)] if node.type == "markdown" else []
    inside = folded or node.type == "expander"
    return [t for child in node.children.values() for t in page_texts(child, inside)]


def sentences(text: str) -> int:
    return len(SENTENCE_END.findall(text.strip()))


def test_counting_sentences() -> None:
    assert sentences("A figure of 0.5 ends nothing; a colon neither: this is one sentence.") == 1
    assert sentences("Two sentences. Here is the second!") == 2
    assert sentences("Draw a digit and both models read it.") == 1


def _problems(at) -> list[str]:  # noqa: ANN001 - AppTest
    texts = page_texts(at.main)
    opening = texts[0][0]
    problems = [f"opens with {sentences(opening)} sentences: {opening!r}"] if sentences(opening) > 1 else []
    return problems + [f"paragraph: {t!r}" for t, folded in texts if not folded and len(t) > PARAGRAPH_CHARS]


def test_every_page_opens_with_one_sentence_and_no_paragraph_outside_an_expander(trained_dir: Path) -> None:
    at = new_app()
    found = {}
    for page in PAGES:
        visit(at, page)
        if problems := _problems(at):
            found[page] = problems
    for page, problems in found.items():
        print(page, *problems, sep="\n  ")
    assert not found, sorted(found)


def test_a_task_adapters_pages_keep_their_explanations_folded(results_dir: Path) -> None:
    at = app_with_active("rotate-45")
    for page in ("home", "evaluation", "parameters", "draw"):
        visit(at, page)
        assert _problems(at) == [], page
