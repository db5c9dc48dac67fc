"""genfast.data.photos: offline photos, deterministic crops, the held-out strip, colour space."""

import socket

import pytest
import torch

from genfast.data import photos
from genfast.data.photos import PhotoCrops, grey, rgb_to_ycbcr, ycbcr_to_rgb


@pytest.fixture(scope="module")
def crops():
    return PhotoCrops("sklearn", window=(32, 96))


def test_sklearn_photos_load_offline(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("photos must not touch the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(photos, "_cache", {})
    for name in photos.SKLEARN_PHOTOS:
        x = photos.load_photo(name)
        assert x.shape == (3, 427, 640) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    assert photos.resolve_photos("sklearn") == ("china", "flower")
    assert set(photos.SKLEARN_PHOTOS) <= set(photos.available_photos())


def test_skimage_photos_when_installed():
    if not photos.skimage_available():
        with pytest.raises(ImportError, match="scikit-image"):
            photos.load_photo("astronaut")
        assert photos.available_photos() == photos.SKLEARN_PHOTOS
        return
    for name in photos.SKIMAGE_PHOTOS:
        x = photos.load_photo(name)
        assert x.shape[0] == 3 and x.dim() == 3 and float(x.max()) <= 1.0


def test_train_batches_are_a_function_of_seed_and_step(crops):
    a = crops.train_batch(6, 32, seed=0, step=5)
    assert a.shape == (6, 3, 32, 32) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    torch.testing.assert_close(a, crops.train_batch(6, 32, seed=0, step=5), rtol=0, atol=0)
    assert not torch.equal(a, crops.train_batch(6, 32, seed=0, step=6))
    assert not torch.equal(a, crops.train_batch(6, 32, seed=1, step=5))
    # The same windows at another resolution: progressive resizing sees the same content.
    b = crops.train_batch(6, 16, seed=0, step=5)
    small = torch.nn.functional.interpolate(a, size=16, mode="bilinear", antialias=True)
    assert (b - small).abs().mean() < 0.03


def test_training_crops_never_see_the_held_out_strip():
    c = PhotoCrops(("china",), window=(16, 64))
    h, w = c.photos[0].shape[-2:]
    marked = torch.zeros(3, h, w)
    marked[:, :, c.train_width[0]:] = 1.0  # the held-out strip
    c.photos = [marked]
    for step in range(40):
        assert float(c.train_batch(8, 16, seed=0, step=step).max()) == 0.0
    test = c.test_crops(16)
    assert float(test.min()) == 1.0
    assert c.train_width[0] == w - round(w * photos.HOLDOUT)


def test_test_crops_fixed_grid(crops):
    t = crops.test_crops(32)
    # 128-pixel windows, stride 64, over 427 rows of a 128-column strip: 6 per photo.
    assert t.shape == (12, 3, 32, 32)
    torch.testing.assert_close(t, crops.test_crops(32), rtol=0, atol=0)
    t2, which = crops.labelled_test_crops(32)
    assert torch.equal(t, t2) and which.tolist() == [0] * 6 + [1] * 6


def test_labelled_batches_name_the_photo():
    c = PhotoCrops("sklearn", window=(32, 96))
    x, which = c.labelled_train_batch(16, 16, seed=0, step=0)
    assert torch.equal(x, c.train_batch(16, 16, seed=0, step=0))
    assert set(which.tolist()) == {0, 1}
    # Each crop really comes from the photo it is labelled with: swap the photos' contents
    # for constants and the crops follow.
    c.photos = [torch.zeros_like(c.photos[0]), torch.ones_like(c.photos[1])]
    x, which = c.labelled_train_batch(16, 16, seed=0, step=0)
    torch.testing.assert_close(x.flatten(1).mean(1), which.float(), rtol=0, atol=1e-6)


def test_colour_space_round_trip():
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, rtol=0, atol=1e-6)
    g = torch.full((1, 3, 2, 2), 0.3)
    torch.testing.assert_close(rgb_to_ycbcr(g)[:, 1:], torch.zeros(1, 2, 2, 2), atol=1e-7,
                               rtol=0)
    torch.testing.assert_close(grey(g), torch.full((1, 1, 2, 2), 0.3))
    # BT.601 luma weights.
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1.0
    assert float(grey(red)) == pytest.approx(0.299)


def test_bad_arguments(crops):
    with pytest.raises(ValueError, match="unknown photo 'lena'"):
        photos.resolve_photos(["lena"])
    with pytest.raises(ValueError, match="at least one"):
        photos.resolve_photos([])
    with pytest.raises(ValueError, match="duplicate"):
        photos.resolve_photos(["china", "china"])
    with pytest.raises(ValueError, match="window"):
        PhotoCrops("sklearn", window=(64, 32))
    with pytest.raises(ValueError, match="window max side 1000"):
        PhotoCrops("sklearn", window=(64, 1000))
    with pytest.raises(ValueError, match="holdout"):
        PhotoCrops("sklearn", holdout=1.0)
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        crops.train_batch(2, 4, 0, 0)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        crops.train_batch(0, 16, 0, 0)
