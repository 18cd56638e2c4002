"""Turning `--slides` entries into slide ids, and slide ids into loaded `Slide`s.

A slide id is either `synthetic-<i>` (the generator, seeded by i) or the path of an `.h5ad` file.
The image embedding of an `.h5ad` slide comes from `obsm[image_key]` when one is named, else from the
embedding cache beside it (`<stem>.image.npz`), validated against the slide's spot ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gauntlet.fusion.anndata_io import read_h5ad
from gauntlet.fusion.embedding_cache import load_embedding_cache
from gauntlet.fusion.errors import SlideSpecError
from gauntlet.fusion.expression import prepare_expression, standardise
from gauntlet.fusion.slide import Slide
from gauntlet.fusion.synthetic import SyntheticConfig, make_synthetic_slide

SYNTHETIC_PREFIX = "synthetic"


@dataclass(frozen=True)
class SlideLoadOptions:
    """How slides are read and preprocessed (the same for every slide of a sweep)."""

    # template for synthetic slides; slide `synthetic-i` uses seed = template.seed + i
    synthetic: SyntheticConfig = SyntheticConfig()
    # most-variable genes kept as expression features
    max_genes: int = 512
    # obs column with layer labels; None tries the usual names (layer_guess, ground_truth, ...)
    label_key: str | None = None
    # obsm key holding the image embedding; None reads the `<stem>.image.npz` cache instead
    image_key: str | None = None
    # encoder the image cache must have been made with; None accepts any
    image_encoder: str | None = None


def image_cache_path(h5ad_path: str | Path) -> Path:
    """Where the image embedding cache of an `.h5ad` slide is expected."""
    p = Path(h5ad_path)
    return p.with_name(p.stem + ".image.npz")


def expand_slide_specs(specs: Sequence[str]) -> list[str]:
    """`synthetic:N` -> N synthetic ids; a directory -> its `.h5ad` files; a file -> itself.

    Paths that do not exist are rejected here (a typo should stop the sweep before it starts);
    problems inside a file are found when its trials load it, and only fail those trials.
    """
    ids: list[str] = []
    for spec in specs:
        if spec.startswith(SYNTHETIC_PREFIX + ":"):
            count = spec.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise SlideSpecError(f"--slides {spec!r}: expected synthetic:N with N >= 1")
            ids.extend(f"{SYNTHETIC_PREFIX}-{i}" for i in range(int(count)))
            continue
        path = Path(spec)
        if path.is_dir():
            found = sorted(str(p.resolve()) for p in path.glob("*.h5ad"))
            if not found:
                raise SlideSpecError(f"--slides {spec!r}: directory holds no .h5ad files")
            ids.extend(found)
        elif path.is_file():
            ids.append(str(path.resolve()))
        else:
            raise SlideSpecError(f"--slides {spec!r}: neither synthetic:N nor an existing .h5ad file/directory")
    if len(set(ids)) != len(ids):
        raise SlideSpecError(f"--slides names the same slide twice: {ids}")
    return ids


def slide_display_name(slide_id: str) -> str:
    """Short name for tables: the id of a synthetic slide, the file stem of an `.h5ad`."""
    return slide_id if slide_id.startswith(SYNTHETIC_PREFIX + "-") else Path(slide_id).stem


def load_slide(slide_id: str, options: SlideLoadOptions = SlideLoadOptions()) -> Slide:
    """Loads one slide by id; raises a FusionError subclass naming the file and field on bad input."""
    if slide_id.startswith(SYNTHETIC_PREFIX + "-"):
        index = slide_id.split("-", 1)[1]
        if not index.isdigit():
            raise SlideSpecError(f"slide id {slide_id!r}: expected synthetic-<integer>")
        config = dataclasses.replace(options.synthetic, seed=options.synthetic.seed + int(index))
        return make_synthetic_slide(config, max_genes=options.max_genes, name=slide_id)

    spots = read_h5ad(slide_id, label_key=options.label_key, image_key=options.image_key)
    if spots.image is not None:
        image = spots.image
    else:
        image, _ = load_embedding_cache(
            image_cache_path(slide_id), spot_ids=spots.obs_names, encoder=options.image_encoder, modality="image"
        )
    return Slide(
        name=slide_display_name(slide_id),
        expression=prepare_expression(spots.X, max_genes=options.max_genes),
        image=standardise(image),
        coords=spots.coords,
        labels=spots.labels,
        label_names=spots.label_names,
    )
