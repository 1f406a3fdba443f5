"""Picture grids: tiles in place, column titles drawn in a strip above them."""
import numpy as np

from etc_core.tracking.pictures import colorize, grid

TITLES = ["frame", "label", "prediction", "next prediction warped", "disagreement"]


def _tiles(h=32, w=48):
    return [np.full((h, w, 3), 40 * (j + 1), np.uint8) for j in range(5)]


def test_grid_places_tiles_with_gaps():
    out = grid([_tiles(), _tiles()], pad=2)
    assert out.shape == (2 * 32 + 2, 5 * 48 + 4 * 2, 3)
    assert (out[:32, :48] == 40).all() and (out[34:, 50:98] == 80).all()
    assert (out[32:34] == 255).all()  # the white gap between rows


def test_titles_strip_sits_above_the_columns_and_holds_text():
    plain = grid([_tiles()], pad=2)
    titled = grid([_tiles()], pad=2, titles=TITLES)
    strip_h = titled.shape[0] - plain.shape[0]
    assert strip_h > 8 and titled.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(titled[strip_h:], plain)  # the tiles are unchanged, only moved down
    strip = titled[:strip_h]
    for j in range(5):  # every column has dark title pixels over it, nothing else is dark
        column = strip[:, j * 50:j * 50 + 48]
        assert (column < 128).any(), TITLES[j]
    gaps = [strip[:, j * 50 + 48:j * 50 + 50] for j in range(4)]
    assert all((g == 255).all() for g in gaps)  # titles stay inside their columns here


def test_long_title_wraps_to_more_lines():
    short = grid([_tiles()], titles=["a"] * 5)
    wrapped = grid([_tiles()], titles=["next prediction warped"] * 5)
    assert wrapped.shape[0] > short.shape[0]


def test_colorize_uses_the_palette_and_black_for_ignore():
    rgb = colorize(np.array([[0, 1], [255, 2]], np.uint8), 3)
    assert rgb.shape == (2, 2, 3) and (rgb[1, 0] == 0).all() and len({tuple(p) for p in rgb.reshape(-1, 3)}) == 4
