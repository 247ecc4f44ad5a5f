"""Miniature datasets written by the tests, one copy of each writer: JPEG images, VOC annotations,
a split in the seed layout (image/, mask/, xml/), the inputs of tools/builders/prepare_own.py,
images that are not 8 bits per channel and smooth seed planes. Test modules import them as
`from mini_data import ...` (tests/ is on sys.path under pytest's default import mode)."""

import os

import numpy as np
from PIL import Image

from core.dataset_layout import DatasetInfo
from core.io import save_mask

TOY = DatasetInfo("TOY")


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def write_jpeg(path, height=20, width=24, seed=0, quality=95, pixels=None):
    """A JPEG of uniform random pixels (numpy generator `seed`), or of `pixels` ((H, W, 3) uint8)
    when given; parent folders are made."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if pixels is None:
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG", quality=quality)


def xml_text(objects, width=16, height=12):
    """VOC annotation; objects = (name, (xmin, ymin, xmax, ymax) or None, difficult), the box as
    written in the file (VOC's pixels count from 1)."""
    parts = [
        f"<annotation><filename>x.jpg</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>"
    ]
    for name, box, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>")
        if box is not None:
            parts.append(
                "<bndbox>"
                + "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
                + "</bndbox>"
            )
        parts.append("</object>")
    return "".join(parts) + "</annotation>"


def make_split(root, split, ids, masks=True, xml=True, height=12, width=16, info=TOY, draw=None, quality=95):
    """root/split in the seed layout: image/{id}.jpg for each id, mask/{id}.png (a palette PNG of
    `info`) when `masks`, xml/{id}.xml when `xml`.

    draw(k, image_id) -> (pixels (H, W, 3) uint8, mask (H, W) uint8, objects as xml_text takes
    them) gives the k-th image; without it: random pixels (seed k) of height x width, a mask of
    class k % 6 whose first row is ignored (255), and one object of class 1 + k % 5 at (2, 2, 9, 9).
    Returns {id: (mask, tags)}, tags the class indices of the objects in their order."""
    os.makedirs(os.path.join(root, split, "image"), exist_ok=True)
    samples = {}
    for k, image_id in enumerate(ids):
        if draw is None:
            pixels = np.random.default_rng(k).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            mask = np.full((height, width), k % 6, np.uint8)
            mask[0, :] = 255
            objects = [(info.class_names[1 + k % 5], (2, 2, 9, 9), 0)]
        else:
            pixels, mask, objects = draw(k, image_id)
        write_jpeg(os.path.join(root, split, "image", image_id + ".jpg"), quality=quality, pixels=pixels)
        if masks:
            save_mask(os.path.join(root, split, "mask", image_id + ".png"), mask, info.palette)
        if xml:
            write_text(
                os.path.join(root, split, "xml", image_id + ".xml"), xml_text(objects, pixels.shape[1], pixels.shape[0])
            )
        samples[image_id] = (mask, [info.class_dict[name] for name, _, _ in objects])
    return samples


# --- the inputs of tools/builders/prepare_own.py --------------------------------------------------
OWN_SIZE = (40, 48)  # height, width of each image
CAT, DOG = (230, 40, 40), (40, 40, 230)  # class 1 = cat, 2 = dog (the sorted order)


def make_own_inputs(folder, count=10, seed=0):
    """folder/images (im0 is a PNG, the rest JPEG), folder/masks, folder/tags.csv. Image i holds a
    red square (cat) when i % 3 != 1 and a blue one (dog) when i % 2 == 0; the mask marks them.
    Returns ({id: mask}, {id: tag names})."""
    height, width = OWN_SIZE
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows, masks, tags = ["image,tags"], {}, {}
    for i in range(count):
        image = rng.integers(100, 150, (height, width, 3)).astype(np.uint8)
        mask = np.zeros((height, width), np.uint8)
        names = []
        if i % 3 != 1:
            image[4:20, 4:20], mask[4:20, 4:20] = CAT, 1
            names.append("cat")
        if i % 2 == 0:
            image[22:38, 26:44], mask[22:38, 26:44] = DOG, 2
            mask[22, 26:44] = 255  # a void border
            names.append("dog")
        name = f"im{i}.png" if i == 0 else f"im{i}.jpg"
        Image.fromarray(image).save(folder / "images" / name, quality=95)
        Image.fromarray(mask).save(folder / "masks" / f"im{i}.png")  # grey (L): indices as they are
        rows.append(f"{name},{';'.join(names)}")
        masks[f"im{i}"], tags[f"im{i}"] = mask, names
    (folder / "tags.csv").write_text("\n".join(rows) + "\n")
    return masks, tags


# --- images that are not 8 bits per channel, under a .jpg name ------------------------------------
def save_as_jpg_name(path, image, fmt):
    """Save `image` in format `fmt` under a .jpg name (PIL then reads it by its content)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return path


def sixteen_bit(path):
    # a dark 16-bit photograph: every value is far below 65535, but above 255
    values = np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 7 + 300
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return save_as_jpg_name(path, image, "PNG")


def float_image(path):
    image = Image.fromarray(np.full((20, 24), 0.25, np.float32))
    assert image.mode == "F"
    return save_as_jpg_name(path, image, "TIFF")


# --- seeds ------------------------------------------------------------------------------------------
def smooth_planes(k=2, h=60, w=80, seed=0):
    """k foreground planes of a softmax over k + 1 smooth logit fields: class probabilities with
    borders a few pixels wide, as a trained network's seeds."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    logits = np.stack(
        [
            12 * np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6))
            for _ in range(k + 1)
        ]
    )
    probabilities = np.exp(logits - logits.max(0))
    return (probabilities / probabilities.sum(0))[1:].astype(np.float32)
