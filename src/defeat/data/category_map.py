"""Matching a model's classes to a dataset's categories by name (pure functions, no I/O).

A COCO-trained model used on COCO-named data with other ids (e.g. coco128 imported from YOLO: the same 80 names,
ids 0..79 or 1..80 instead of COCO's 1..90 with gaps) must report the dataset's ids. Names are compared after
:func:`normalize_name` (case, surrounding spaces, ``_`` vs space).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def normalize_name(name: str) -> str:
    """``"Traffic_Light "`` -> ``"traffic light"``."""
    return " ".join(str(name).replace("_", " ").split()).casefold()


@dataclass
class CategoryMap:
    """Model label (1..K) -> dataset category id, for the labels whose class the dataset has."""

    label_to_id: dict[int, int]
    unmatched: list[str] = field(default_factory=list)  # model class names the dataset lacks (their boxes drop)
    by_name: bool = False  # False: the dataset's categories are the model's own (ids and names)

    def categories(self, dataset_categories: list[dict]) -> list[dict]:
        """The dataset categories the model can predict, in dataset order."""
        ids = set(self.label_to_id.values())
        return [c for c in dataset_categories if c["id"] in ids]


def identity_map(model_categories: list[dict]) -> CategoryMap:
    """The model's own ids: label k -> ``model_categories[k-1]["id"]``."""
    return CategoryMap({k + 1: c["id"] for k, c in enumerate(model_categories)})


def map_by_name(
    model_categories: list[dict], dataset_categories: list[dict], dataset: str = "the dataset"
) -> CategoryMap:
    """Map the model's labels (label k is ``model_categories[k-1]``) to ``dataset_categories`` ids.

    Identical lists (ids and names) map to themselves. Otherwise labels map by name; model classes the dataset
    lacks are listed in ``unmatched``. One-line ``ValueError`` when no name is in common or a name occurs twice
    in the dataset (ambiguous).
    """
    ours = [(c["id"], c["name"]) for c in model_categories]
    if ours == [(c["id"], c["name"]) for c in dataset_categories]:
        return identity_map(model_categories)
    by_name: dict[str, int] = {}
    for c in dataset_categories:
        key = normalize_name(c["name"])
        if key in by_name:
            raise ValueError(
                f"{dataset}: category name {c['name']!r} occurs twice (ids {by_name[key]} and {c['id']}); "
                "cannot map the model's classes by name"
            )
        by_name[key] = c["id"]
    label_to_id, unmatched = {}, []
    for k, c in enumerate(model_categories):
        cat_id = by_name.get(normalize_name(c["name"]))
        if cat_id is None:
            unmatched.append(c["name"])
        else:
            label_to_id[k + 1] = cat_id
    if not label_to_id:
        theirs = [c["name"] for c in dataset_categories]
        raise ValueError(
            f"{dataset}: none of its {len(theirs)} category names is a class of the model "
            f"({len(model_categories)} classes, e.g. {', '.join(n for _, n in ours[:3])}; "
            f"the dataset has e.g. {', '.join(theirs[:3])})"
        )
    return CategoryMap(label_to_id, unmatched, by_name=True)
