from pathlib import Path

from lipcheck.docs import operators_markdown
from lipcheck.graph import OpKind
from lipcheck.rules import RULES

ROOT = Path(__file__).resolve().parents[1]


def test_operators_doc_is_generated_from_the_registry():
    assert (ROOT / "docs" / "operators.md").read_text() == operators_markdown(), \
        "docs/operators.md is stale: run `make docs`"


def test_every_op_kind_has_a_rule():
    missing = [op.value for op in OpKind if op not in RULES]
    assert not missing, f"ops without a rule: {missing}"
