"""Charts and grids drawn with Pillow: real PNGs whose pixels sit where the numbers say."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from bigmodel.images import COLOURS, MARGIN, PANEL, grid, line_chart


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def near(img: np.ndarray, x: float, y: float, colour: tuple[int, int, int], r: int = 3) -> bool:
    patch = img[int(y) - r : int(y) + r + 1, int(x) - r : int(x) + r + 1]
    return bool((np.abs(patch.astype(int) - colour).sum(-1) < 40).any())


def test_a_chart_draws_each_series_where_its_points_are_one_panel_per_title():
    up = [(1, 0.0), (2, 1.0), (3, 2.0)]
    down = [(1, 2.0), (2, 1.0), (3, 0.0)]
    img = pixels(line_chart({"loss": {"train": up, "val": down}, "kl": {"train": up}}))
    assert img.shape == (PANEL[1], 2 * PANEL[0], 3)
    train, val = COLOURS[0], COLOURS[1]
    left, right, top, bottom = MARGIN[0], PANEL[0] - MARGIN[1], MARGIN[2] + 14, PANEL[1] - MARGIN[3]
    # the data span 5% inside the axes: first point low-left for "up", high-left for "down"
    x_first = left + (right - left) * 0.05 / 1.1
    y_low, y_high = bottom - (bottom - top) * 0.05 / 1.1, top + (bottom - top) * 0.05 / 1.1
    assert near(img, x_first, y_low, train) and not near(img, x_first, y_high, train)
    assert near(img, x_first, y_high, val) and not near(img, x_first, y_low, val)
    # the second panel has its own copy of the axes, offset by one panel width
    assert near(img, PANEL[0] + x_first, y_low, train)


def test_non_finite_points_are_left_out_and_a_single_point_still_draws():
    png = line_chart({"loss": {"train": [(1, math.nan), (2, math.inf), (3, 5.0)], "val": [(1, 4.0)]}})
    img = pixels(png)
    assert img.shape == (PANEL[1], PANEL[0], 3)
    assert (np.abs(img.astype(int) - COLOURS[0]).sum(-1) < 40).any()  # the one finite train point is there
    empty = pixels(line_chart({"loss": {"train": [(1, math.nan)]}}))  # nothing to draw: axes only, no crash
    assert not (np.abs(empty.astype(int) - COLOURS[0]).sum(-1) < 40).any()


def test_grid_places_image_i_at_row_i_div_ncol():
    images = np.zeros((3, 1, 4, 4), np.float32)
    images[2] = 1.0
    g = grid(images, ncol=2, pad=1)
    assert g.shape == (2 * 5 + 1, 2 * 5 + 1, 1)
    assert g[6:10, 1:5].min() == 255 and g[1:5, 1:5].max() == 0 and g[6:10, 6:10].max() == 0
