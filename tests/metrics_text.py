"""Reading a Prometheus text exposition in tests: samples by name and labels, and sums over label subsets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Sample, float]:
    """Every sample of the exposition, keyed by (sample name, its labels)."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(found: dict[Sample, float], name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 when there are none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


def label_values(found: dict[Sample, float], name: str, label: str) -> set[str]:
    return {dict(ls).get(label, "") for (n, ls) in found if n == name}
