"""Entity-level precision, recall and F1 of BIO tag sequences, scored as conlleval (and seqeval's
default mode) score them: an entity is a maximal run of one type that starts at B-X, or at an
I-X that follows O or another type, and continues while I-X follows; a predicted entity counts
only if its type, start and end all equal a gold entity's. tests/test_token_classification.py
checks the scores against seqeval 1.2.2."""

from __future__ import annotations

from collections.abc import Sequence


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """[(type, start, end)] of the entities in `tags` (end exclusive)."""
    spans, kind, start = [], None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            spans.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return spans


def entity_scores(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Micro-averaged precision, recall and F1 over all entities of all sentences, and the
    F1 of each entity type ("f1_<type>")."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    found: dict[str, list[int]] = {}  # type -> [correct, predicted, gold]
    for gold_tags, predicted_tags in zip(gold, predicted):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError("a predicted sentence differs in length from its gold one")
        gold_spans, predicted_spans = (
            set(entity_spans(gold_tags)),
            set(entity_spans(predicted_tags)),
        )
        for kind, *_ in gold_spans:
            found.setdefault(kind, [0, 0, 0])[2] += 1
        for span in predicted_spans:
            counts = found.setdefault(span[0], [0, 0, 0])
            counts[1] += 1
            counts[0] += span in gold_spans
    correct, predicted_count, gold_count = (sum(c[i] for c in found.values()) for i in range(3))
    scores = _prf(correct, predicted_count, gold_count)
    for kind, (c, p, g) in sorted(found.items()):
        scores[f"f1_{kind}"] = _prf(c, p, g)["f1"]
    return scores


def _prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
