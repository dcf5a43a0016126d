"""Human labeling: projects, annotators, leased overlap assignments, agreement, export.

    store.py      the database (SQLAlchemy Core; SQLite by default, PostgreSQL by URL)
    sources.py    items from ready responses or sampled from a model
    display.py    per-annotator response order, safe rendering, answers back to item terms
    app.py        the Flask web app and JSON API
    agreement.py  percent agreement, Cohen's kappa, Krippendorff's alpha
    export.py     TRL preference JSONL, `load_preferences_from_db`
    cli.py        `rlhf label create|serve|user|stats|export`
"""


def load_preferences_from_db(url: str, project: str | None = None, **options) -> list[dict]:
    """Preference rows in TRL format from a labeling database (see `rlhf.labeling.export`)."""
    from rlhf.labeling.export import load_preferences_from_db as load

    return load(url, project, **options)
