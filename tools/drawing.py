"""Pictures of the pipeline's maps, shared by the TensorBoard panels (tools/engine/panels.py) and the
notebook (demo.py), so the two draw every map the same way.

Everything is numpy and Pillow on uint8 RGB (H, W, 3) arrays: no matplotlib, and no OpenCV (its
thread pool, once started in a training's main process, deadlocks the loader workers forked after
it). A composite is one picture per image: titled tiles in pipeline order, wrapped into rows, and a
legend strip of the classes shown (colour, name) under them.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.io import IGNORE_INDEX

HEAT_ALPHA = 0.5  # weight of the heat map over the image
TILE_SIDE = 256  # longest side of a tile in a composite (smaller images keep their size)
COLUMNS = 6  # tiles per row of a composite
PAD = 4  # pixels between tiles and around the composite
TITLE_HEIGHT = 14
SWATCH = 12  # legend colour square
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)
OUTLINE = (255, 255, 255)  # the pasted region's outline (with a black inner line: visible on any colour)


# --- colours ---------------------------------------------------------------------------------
def heat(values):
    """(H, W) in [0, 1] -> RGB jet colours: dark blue (0), cyan, yellow, dark red (1); NaN as 0."""
    x = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)
    return (rgb * 255.0).round().astype(np.uint8)


def overlay(image, values):
    """The heat map of `values` blended over the RGB image."""
    return (image * (1.0 - HEAT_ALPHA) + heat(values) * HEAT_ALPHA).round().astype(np.uint8)


def colorize(labels, palette):
    """Class indices (H, W) -> RGB in the dataset palette (768 values, as DatasetInfo.palette; 255 =
    ignore in its own colour)."""
    return np.asarray(palette, np.uint8).reshape(256, 3)[np.asarray(labels, np.uint8)]


def color_of(index, palette):
    return tuple(int(v) for v in np.asarray(palette, np.uint8).reshape(256, 3)[index])


def outline(image, region, width=1):
    """The image with the border of the bool (H, W) `region` drawn: an OUTLINE line just outside
    the region's pixels and a black one on its edge pixels. Border pixels are found by comparing
    each pixel with its 4 neighbours (no per-pixel loop)."""
    region = np.asarray(region, bool)
    out = np.array(image, np.uint8, copy=True)
    inner = region & ~_eroded(region)
    outer = ~region & _dilated(region)
    for _ in range(width - 1):
        outer = ~region & _dilated(outer | region)
    out[outer] = OUTLINE
    out[inner] = (0, 0, 0)
    return out


def _neighbours(region, fill):
    padded = np.pad(region, 1, constant_values=fill)
    return padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]


def _eroded(region):
    up, down, left, right = _neighbours(region, True)
    return region & up & down & left & right


def _dilated(region):
    up, down, left, right = _neighbours(region, False)
    return region | up | down | left | right


# --- sizes -------------------------------------------------------------------------------------
def shrink(array, interpolation, side):
    """Scale a uint8 (H, W[, 3]) array down to `side` on its longest side (a PIL resample filter);
    smaller ones unchanged."""
    height, width = array.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return np.ascontiguousarray(array)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, interpolation))


def tile_size(height, width, side=TILE_SIDE):
    """(h, w) of a tile of an (height, width) image in a composite."""
    scale = min(1.0, side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


# --- composites ---------------------------------------------------------------------------------
def font():
    return ImageFont.load_default()


def _fit(text, width, face):
    """`text`, cut with '...' so that it fits in `width` pixels."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def legend_entries(labels, palette, class_names, always=(0,)):
    """[(name, colour)] of the class indices found in any of the uint8 label maps `labels`, plus
    `always`, in index order; ignore (255) last when a map holds it. One np.bincount per map."""
    present = np.zeros(256, bool)
    present[list(always)] = True
    for label_map in labels:
        if label_map is not None:
            present |= np.bincount(np.asarray(label_map, np.uint8).ravel(), minlength=256) > 0
    names = {IGNORE_INDEX: "ignore", **dict(enumerate(class_names))}
    return [(names.get(int(i), str(int(i))), color_of(int(i), palette)) for i in np.flatnonzero(present)]


def legend_strip(entries, width):
    """A white (h, width, 3) strip: a colour square and the name of each (name, colour) entry, left
    to right, wrapped onto further lines when `width` is reached."""
    face, line_height = font(), max(SWATCH, TITLE_HEIGHT) + PAD
    placed, x, y = [], PAD, 0
    for name, colour in entries:
        text = _fit(name, width - 3 * PAD - SWATCH, face)
        step = SWATCH + PAD + int(np.ceil(face.getlength(text))) + 3 * PAD
        if x > PAD and x + step > width:
            x, y = PAD, y + line_height
        placed.append((x, y, text, colour))
        x += step
    height = (y + line_height if entries else 0) + PAD
    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for x, y, text, colour in placed:
        top = y + PAD + (TITLE_HEIGHT - SWATCH) // 2
        draw.rectangle([x, top, x + SWATCH - 1, top + SWATCH - 1], fill=tuple(colour), outline=(96, 96, 96))
        draw.text((x + SWATCH + PAD, y + PAD), text, fill=TEXT, font=face)
    return np.asarray(strip)


def composite(tiles, legend=(), columns=COLUMNS, side=TILE_SIDE):
    """One picture of an image's maps: `tiles` [(title, uint8 RGB (H, W, 3)[, is_label_map])] in
    reading order, each shrunk to `side` (a label map by nearest neighbour, so that no class colour
    is blended; a photo or heat map by area), titled, `columns` to a row; `legend` [(name,
    colour)] as a strip underneath. Returns uint8 (H, W, 3)."""
    if not tiles:
        raise ValueError("a composite needs at least one tile")
    shrunk = [
        (title, shrink(np.asarray(t, np.uint8), Image.NEAREST if labels else Image.BOX, side))
        for title, t, labels in ((*tile, False)[:3] for tile in tiles)
    ]
    rows = [shrunk[k : k + columns] for k in range(0, len(shrunk), columns)]
    cell_w = max(t.shape[1] for _, t in shrunk)
    cell_h = max(t.shape[0] for _, t in shrunk)
    width = PAD + len(rows[0]) * (cell_w + PAD)
    height = PAD + len(rows) * (TITLE_HEIGHT + cell_h + PAD)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw, face = ImageDraw.Draw(canvas), font()
    for r, row in enumerate(rows):
        for c, (title, image) in enumerate(row):
            x, y = PAD + c * (cell_w + PAD), PAD + r * (TITLE_HEIGHT + cell_h + PAD)
            draw.text((x, y), _fit(title, cell_w, face), fill=TEXT, font=face)
            canvas.paste(Image.fromarray(image), (x, y + TITLE_HEIGHT))
    picture = np.asarray(canvas)
    if legend:
        picture = np.concatenate([picture, legend_strip(legend, width)])
    return picture
