"""Checks of the labelled data an evaluation runs on, reported beside its accuracies.

Two things make a probe's number mean less than it seems, and neither is the encoder's fault:

* **identical items with different labels**: the same sequence (or the same image, byte for byte)
  labelled as two classes. No classifier can get both right; across train and test, the one in
  test is wrong by construction. Counted as groups of identical items whose labels disagree.
* **classes too small for the probe**: a class with fewer training items than the linear probe
  needs at the smallest label fraction to both fit and validate (``MIN_PROBE_ITEMS``: one to fit
  on, one to hold out), or one missing from either split.

Also counted: items of the test split identical to a training item (leakage; for data sets whose
split does not group duplicates). :func:`check_labelled_data` returns the findings as a mapping for
``eval.json`` and as sentences for the evaluation log.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Sequence

import torch


MIN_PROBE_ITEMS = 2  # labelled items a class needs in a probe's subset: one to fit, one to validate
EXAMPLES = 5  # groups or classes named in a warning


def conflicting_labels(keys: Sequence[str], labels: Sequence[int]) -> list[dict[str, Any]]:
    """The groups of identical items (same key) that carry more than one label: each as
    ``{"items": count, "labels": sorted distinct labels, "first": index of its first item}``."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        groups[key].append(index)
    found = []
    for members in groups.values():
        distinct = sorted({int(labels[i]) for i in members})
        if len(distinct) > 1:
            found.append({"items": len(members), "labels": distinct, "first": members[0]})
    return sorted(found, key=lambda group: group["first"])


def check_labelled_data(train: Any, test: Any,
                        num_classes: int, fractions: Iterable[float]) -> tuple[dict[str, Any],
                                                                                list[str]]:
    """Findings on a labelled train/test pair: (``{"conflicting_labels": …, "small_classes": …,
    "test_in_train": …}`` for eval.json, the warning sentences; empty when all is well)."""
    names = train.classes or [str(i) for i in range(num_classes)]
    name = lambda label: names[label] if label < len(names) else str(label)  # noqa: E731
    # one key per item, equal exactly when two items are identical (the sources' own item_keys)
    train_keys, test_keys = train.item_keys(), test.item_keys()
    all_keys = train_keys + test_keys
    all_labels = train.labels.tolist() + test.labels.tolist()
    conflicts = conflicting_labels(all_keys, all_labels)
    train_set = set(train_keys)
    test_in_train = sum(key in train_set for key in test_keys)

    smallest_fraction = min(fractions)
    train_counts = torch.bincount(train.labels, minlength=num_classes).tolist()
    test_counts = torch.bincount(test.labels, minlength=num_classes).tolist()
    small = []
    for label in range(num_classes):
        count = train_counts[label]
        in_subset = max(1, round(smallest_fraction * count)) if count else 0
        if in_subset < MIN_PROBE_ITEMS or test_counts[label] == 0:
            small.append({"class": name(label), "train": train_counts[label],
                          "test": test_counts[label], "at_smallest_fraction": in_subset})

    findings: dict[str, Any] = {}
    warnings: list[str] = []
    if conflicts:
        items = sum(group["items"] for group in conflicts)
        shown = "; ".join(
            f"{group['items']} items labelled {', '.join(name(label) for label in group['labels'])}"
            for group in conflicts[:EXAMPLES])
        findings["conflicting_labels"] = {"groups": len(conflicts), "items": items,
                                          "examples": conflicts[:EXAMPLES]}
        warnings.append(f"{len(conflicts)} group(s) of identical items carry different labels "
                        f"({items} items in all; e.g. {shown}): no classifier can get them all "
                        "right; fix the labels or drop the duplicates")
    if small:
        shown = ", ".join(f"{entry['class']} ({entry['train']} train, {entry['test']} test)"
                          for entry in small[:EXAMPLES])
        findings["small_classes"] = {"min_probe_items": MIN_PROBE_ITEMS,
                                     "smallest_fraction": smallest_fraction, "classes": small}
        warnings.append(f"{len(small)} class(es) have fewer than {MIN_PROBE_ITEMS} labelled items "
                        f"at {smallest_fraction:g} of the labels, or none in a split: {shown}; "
                        "their probe accuracies rest on one example or cannot be measured")
    if test_in_train:
        findings["test_in_train"] = test_in_train
        warnings.append(f"{test_in_train} test item(s) are identical to a training item: the "
                        "split leaks; accuracies on them measure memory, not generalisation")
    return findings, warnings
