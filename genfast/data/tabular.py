"""Offline tabular data for mixture models: iris (inside scikit-learn's wheel) and a user's
points from .npy / .npz / .csv."""

from __future__ import annotations

import os

import numpy as np
import torch


def load_iris() -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """(x (150, 4) float64 in cm, species (150,) int64, feature names, species names).

    The file ships in scikit-learn (sklearn/datasets/data/iris.csv; Fisher 1936 via UCI,
    CC BY 4.0); scikit-learn is the models/test extra, imported only here.
    """
    try:
        from sklearn.datasets import load_iris as _sk_load_iris
    except ImportError as e:
        raise ImportError("the iris data ship inside scikit-learn: pip install "
                          "'genfast[models]' (or scikit-learn)") from e
    d = _sk_load_iris()
    x = torch.from_numpy(d.data.astype(np.float64))
    return x, torch.from_numpy(d.target.astype(np.int64)), list(d.feature_names), list(
        d.target_names)


def load_points(path: str | os.PathLike[str]) -> torch.Tensor:
    """A user's points (n_samples, n_features) as float64 from .npy, .npz (array 'x' or the
    only one) or .csv (comma-separated numbers; a non-numeric first line is a header)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data: no such file: {path}")
    if path.endswith(".npy"):
        a = np.load(path, allow_pickle=False)
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
            if key is None:
                raise ValueError(f"--data {path}: name the points array 'x'; arrays: {names}")
            a = z[key]
    elif path.endswith(".csv"):
        with open(path) as f:
            first = f.readline()
        try:
            [float(v) for v in first.split(",")]
            skip = 0
        except ValueError:
            skip = 1
        a = np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2)
    else:
        raise ValueError(f"--data: expected a .npy, .npz or .csv file, got {path}")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"--data {path}: expected numbers of shape (n_samples, n_features), "
                         f"got {a.dtype} {a.shape}")
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"--data {path}: holds NaN or infinite values")
    return x
