"""Datasets in the seed layout (docs/formats.md#dataset-layout), for VOC, COCO and TOY alike.

    ROOT/{domain}/image/ID.jpg   ROOT/{domain}/mask/ID.png   ROOT/{domain}/xml/ID.xml

Class names, colours and counts come from data/{dataset}.json, or from a description file
given by its path (tools/builders/prepare_own.py writes one for a user's own images). Every reading error raises
DatasetError with the offending file in the message.
"""

import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import torch
from PIL import Image

from core.errors import DatasetError, FormatError
from core.io import make_palette, read_json, read_mask
from core.safety import check_image_header, check_regular_file

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
DOMAINS = ("train", "train_aug", "validation", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# --max_image_pixels of every script that reads images (training, inference, conversion, builders;
# tools/args.py add_image_limit_arg): a 7000 x 7000 photograph (VOC and COCO images are below
# 0.5 M pixels). PIL's own decompression-bomb error (above 179 M pixels) is caught as well.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def is_dataset_path(value):
    """True when `--dataset` names a description file (ends in .json or holds a path separator),
    False for a built-in name of data/."""
    text = str(value)
    return text.lower().endswith(".json") or "/" in text or os.sep in text


def dataset_name(value):
    """The name a `--dataset` value stands for in tags: the built-in name, or the file's stem."""
    return os.path.splitext(os.path.basename(str(value)))[0] if is_dataset_path(value) else str(value)


class DatasetInfo:
    """Class names and colours of one dataset: data/{name}.json, or a description file when `name`
    is a path (is_dataset_path), e.g. one written by tools/builders/prepare_own.py.

    Attributes: name, path, class_names (background first), class_dict (name -> index),
    colors (list of [R, G, B] by index), num_classes (background included), ignore_index, palette.
    """

    def __init__(self, name):
        if is_dataset_path(name):
            path = os.path.normpath(os.path.expanduser(str(name)))
            if not os.path.isfile(path):
                raise DatasetError(f"--dataset {path}: dataset description not found")
        else:
            path = os.path.join(DATA_DIR, f"{name}.json")
            if not os.path.isfile(path):
                known = sorted(f[:-5] for f in os.listdir(DATA_DIR) if f.endswith(".json"))
                raise DatasetError(
                    f"unknown dataset {name!r}: {path} does not exist (known: {', '.join(known)}; "
                    f"or the path of a description .json)"
                )
        data = read_json(path)
        self.name = dataset_name(name)
        self.path = path
        try:
            self.class_names = [str(n) for n in data["class_names"]]
            self.class_dict = {str(k): int(v) for k, v in data["class_dict"].items()}
            self.colors = [[int(c) for c in data["color_dict"][n]] for n in self.class_names]
            self.num_classes = int(data["num_classes"])
            self.ignore_index = int(data.get("ignore_index", 255))
        except KeyError as e:
            raise DatasetError(
                f"{path}: missing {e} (a description holds class_names, class_dict, "
                f"color_dict and num_classes, as data/VOC.json)"
            ) from None
        except (TypeError, ValueError, AttributeError) as e:
            raise DatasetError(f"{path}: malformed dataset description ({e})") from None
        self.extra = {
            k: v
            for k, v in data.items()
            if k not in ("class_names", "class_dict", "color_dict", "num_classes", "ignore_index")
        }
        if self.num_classes != len(self.class_names):
            raise DatasetError(f"{path}: num_classes {self.num_classes} != {len(self.class_names)} class names")
        if self.class_dict != {n: i for i, n in enumerate(self.class_names)}:
            raise DatasetError(f"{path}: class_dict does not map each of class_names to its position")
        if not 2 <= self.num_classes <= 255 or any(
            len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in self.colors
        ):
            raise DatasetError(f"{path}: need 2..255 classes (background included) and [R, G, B] colours in 0..255")
        self.palette = make_palette(self.colors)

    @property
    def num_foreground(self):
        return self.num_classes - 1


def load_dataset_info(name):
    """DatasetInfo of a `--dataset` value: a built-in name (VOC, COCO, TOY) or a description's path."""
    return DatasetInfo(name)


def read_image(path, max_pixels=None):
    """RGB uint8 array (H, W, 3). Missing, truncated, undecodable or not 8-bit files, and files
    whose header claims more than `max_pixels` pixels (checked before decoding), and anything that
    is not a regular file (a FIFO would block the reader), raise DatasetError."""
    check_image_header(path, DatasetError, max_pixels)
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt or truncated image ({e})") from None


def parse_xml_tags(path, class_dict):
    """Image-level tags of a Pascal VOC annotation: 1-based class indices of the distinct
    `object/name` values in order of first appearance.

    Difficult objects count. An object whose box collapses to zero width or height once clamped
    to the image's pixel range [0, size - 1] is dropped, as in the original. Objects without a box
    count. An unknown class name raises DatasetError naming the file and the class.
    """
    check_regular_file(path, DatasetError, "annotation file")
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    width = _xml_number(root, "size/width", path)
    height = _xml_number(root, "size/height", path)
    for key, side in (("width", width), ("height", height)):
        if side is not None and side <= 0:
            raise DatasetError(f"{path}: <size/{key}> is {side}: an image side must be a positive number of pixels")
    tags = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_dict or class_dict[name] == 0:
            raise DatasetError(
                f"{path}: unknown class {name!r} (not among the {len(class_dict) - 1} classes of this dataset)"
            )
        box = obj.find("bndbox")
        if box is not None:
            x0, y0 = _xml_number(box, "xmin", path), _xml_number(box, "ymin", path)
            x1, y1 = _xml_number(box, "xmax", path), _xml_number(box, "ymax", path)
            if None not in (x0, y0, x1, y1):
                # The original clamps to the last pixel index and drops exactly-zero extents.
                if width is not None:
                    x0, x1 = min(max(x0, 0), width - 1), min(max(x1, 0), width - 1)
                if height is not None:
                    y0, y1 = min(max(y0, 0), height - 1), min(max(y1, 0), height - 1)
                if x1 == x0 or y1 == y0:
                    continue
        index = class_dict[name]
        if index not in tags:
            tags.append(index)
    return tags


def _xml_number(node, key, path):
    text = node.findtext(key)
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{path}: <{key}> is not a number ({text!r})") from None
    # inf, nan and 1e400 (which float() reads as inf) would stop the run in int() with a message
    # naming no file; coordinates beyond 1e9 pixels are as broken
    if not math.isfinite(value) or abs(value) > 1e9:
        raise DatasetError(f"{path}: <{key}> is not a finite pixel coordinate ({text.strip()!r})")
    return int(value)


class SeedLayout:
    """One split of a dataset in the seed layout.

    Args:
        root_dir: dataset root (with or without trailing slash).
        domain: train, train_aug, validation or test.
        info: DatasetInfo.
        require_masks / require_xml: raise at construction if the folder is missing.
        max_pixels: images whose header claims more pixels are refused by read_image (None: no limit).
    Attributes: ids (sorted image ids), has_masks, has_xml.
    """

    def __init__(self, root_dir, domain, info, require_masks=False, require_xml=False, max_pixels=None):
        self.max_pixels = max_pixels  # read_image's limit on the header size (None: no limit)
        self.root = os.path.normpath(os.path.expanduser(root_dir))
        self.domain = domain
        self.info = info
        if not os.path.isdir(self.root):
            raise DatasetError(f"{self.root}: dataset root folder not found")
        self.split_dir = os.path.join(self.root, domain)
        image_dir = os.path.join(self.split_dir, "image")
        if not os.path.isdir(image_dir):
            present = sorted(d for d in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, d)))
            raise DatasetError(
                f"{image_dir}: split {domain!r} not found under {self.root} "
                f"(present: {', '.join(present) or 'nothing'})"
            )
        self.ids = sorted(f[:-4] for f in os.listdir(image_dir) if f.endswith(".jpg"))
        if not self.ids:
            raise DatasetError(f"{image_dir}: no .jpg images")
        self.has_masks = os.path.isdir(os.path.join(self.split_dir, "mask"))
        self.has_xml = os.path.isdir(os.path.join(self.split_dir, "xml"))
        if require_masks and not self.has_masks:
            raise DatasetError(
                f"{os.path.join(self.split_dir, 'mask')}: no ground-truth masks for split "
                f"{domain!r} (the test split has none)"
            )
        if require_xml and not self.has_xml:
            raise DatasetError(f"{os.path.join(self.split_dir, 'xml')}: no annotations for split {domain!r}")

    def __len__(self):
        return len(self.ids)

    def image_path(self, image_id):
        return os.path.join(self.split_dir, "image", image_id + ".jpg")

    def mask_path(self, image_id):
        return os.path.join(self.split_dir, "mask", image_id + ".png")

    def xml_path(self, image_id):
        return os.path.join(self.split_dir, "xml", image_id + ".xml")

    def read_image(self, image_id):
        return read_image(self.image_path(image_id), self.max_pixels)

    def read_mask(self, image_id, size=None):
        """uint8 (H, W) class indices, 255 = ignore. `size` = (H, W) of the image to check against."""
        path = self.mask_path(image_id)
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: ground-truth mask not found for image {image_id}")
        try:
            mask = read_mask(path)
        except FormatError as e:
            raise DatasetError(str(e)) from None
        if size is not None and tuple(mask.shape) != tuple(size):
            raise DatasetError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image {size[1]}x{size[0]}"
            )
        return mask

    def read_tags(self, image_id, required=None):
        """1-based class indices of the image's tags; [] when the xml is absent and not required."""
        path = self.xml_path(image_id)
        if not os.path.isfile(path):
            if required or (required is None and self.has_xml):
                raise DatasetError(f"{path}: annotation not found for image {image_id}")
            return []
        return parse_xml_tags(path, self.info.class_dict)

    def multi_hot(self, tags):
        """(C,) float32 vector over the foreground classes for 1-based `tags`."""
        vector = np.zeros(self.info.num_foreground, dtype=np.float32)
        if tags and (min(tags) < 1 or max(tags) > self.info.num_foreground):
            raise ValueError(
                f"tags must be 1-based foreground class indices in 1..{self.info.num_foreground}, got {list(tags)}"
            )
        if tags:
            vector[np.asarray(tags) - 1] = 1.0
        return vector


def normalize_image(image):
    """uint8 (H, W, 3) RGB -> float32 (3, H, W) tensor, ImageNet mean/std (docs/formats.md#preprocessing)."""
    tensor = torch.from_numpy(np.require(image, requirements=("C", "W"))).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)
