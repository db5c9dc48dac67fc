"""Embedded, offline datasets and loaders for a user's own files (DESIGN.md section 7)."""

from genfast.data.digits import (
    SPLIT_SEED,
    digits_split,
    load_digits,
    load_images,
    resize,
    split,
)

__all__ = ["SPLIT_SEED", "digits_split", "load_digits", "load_images", "resize", "split"]
