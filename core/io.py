"""File input/output shared by every script: atomic writes, seed files, palette masks, JSON.

Every output of the project goes through :func:`atomic_output`, so a run killed at any moment
leaves either the complete file or no file at all, and skip-if-exists resumption is safe
(docs/formats.md#fixed-defects: the original left truncated files that later counted as done).
"""
import contextlib
import io
import json
import os
import pickle
import tempfile

import numpy as np
from PIL import Image

from core.errors import FormatError, MissingFileError, OutputError, ProjectError
from core.safety import TEMP_SUFFIX, temp_prefix

SEED_DIALECTS = ("rsepm", "seg")
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp creates files 0600, outputs get the usual 0666 & ~umask
IGNORE_INDEX = 255  # label of pixels no loss and no metric counts (object borders, crowds, crop padding)
IGNORE_COLOR = (224, 224, 192)  # its palette colour


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Open a temporary file beside `path`; on success move it onto `path` with os.replace.

    On any exception the temporary file is removed and `path` is left untouched; an OSError
    (disk full, no permission) becomes an OutputError naming `path`.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:  # a read-only or full disk, a file where a folder should be: one line naming the path
        os.makedirs(directory, exist_ok=True)
        # one name pattern for every temporary, so core.safety.remove_stale_temp_files finds those of killed runs
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e})") from e
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, ProjectError):
            raise OutputError(f"{path}: cannot write ({e})") from e
        raise


def write_json(path, obj):
    """Write `obj` as indented UTF-8 JSON, atomically."""
    with atomic_output(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# Seed files (docs/formats.md#seed-files)
# ---------------------------------------------------------------------------------------------
class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers and refuses everything else.

    A pickle can name any importable callable; only the handful numpy needs to rebuild an
    ndarray (and its dtype) are allowed, so a malicious file cannot run code.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}': only numpy arrays, "
                                     "dicts, lists and scalars are allowed in a seed file")


def safe_pickle_load(path):
    """Unpickle `path` allowing only numpy arrays, dicts, lists and scalars."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise FormatError(f"{path}: not a valid seed file ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise FormatError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


def save_seed(path, keys, seed, dialect):
    """Write a seed file atomically.

    Args:
        keys: int array. rsepm dialect: [0, c1, ..., cK] (0 = placeholder background, not stored);
            seg dialect: the K class indices of the stored planes (0 = real background).
        seed: float32 array (K, H, W).
        dialect: "rsepm" or "seg"; recorded under the extra key "dialect".
    """
    if dialect not in SEED_DIALECTS:
        raise ValueError(f"unknown seed dialect {dialect!r}; expected one of {SEED_DIALECTS}")
    keys = np.asarray(keys, dtype=np.int64)
    seed = np.asarray(seed, dtype=np.float32)
    _check_seed(path, keys, seed, dialect)
    with atomic_output(path) as f:
        pickle.dump({"keys": keys, "seed": seed, "dialect": dialect}, f, protocol=4)


def seed_dialect_from_tag(tag):
    """The original rule for files without a recorded dialect: tags containing 'MS' are seg."""
    return "seg" if "MS" in (tag or "") else "rsepm"


def load_seed(path, tag=None):
    """Read a seed file (either dialect) and validate it.

    Returns a dict with "keys" (int64), "seed" (float32, (K, H, W)) and "dialect". Files written
    by the original scripts carry no dialect; the original `MS`-in-tag rule decides for them.
    Raises FormatError naming the file on anything that is not a seed file.
    """
    data = safe_pickle_load(path)
    if not isinstance(data, dict) or "keys" not in data or "seed" not in data:
        raise FormatError(f"{path}: not a seed file (expected a dict with 'keys' and 'seed', "
                          f"found {type(data).__name__}"
                          + (f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else "") + ")")
    dialect = data.get("dialect") or seed_dialect_from_tag(tag)
    if dialect not in SEED_DIALECTS:
        raise FormatError(f"{path}: unknown seed dialect {dialect!r}")
    keys = np.asarray(data["keys"])
    seed = np.asarray(data["seed"])
    if keys.dtype.kind not in "iu" or seed.dtype.kind != "f":
        raise FormatError(f"{path}: 'keys' must be integers and 'seed' floats, "
                          f"found {keys.dtype} and {seed.dtype}")
    keys = keys.astype(np.int64)
    seed = seed.astype(np.float32, copy=False)
    _check_seed(path, keys, seed, dialect, exc=FormatError)
    return {"keys": keys, "seed": seed, "dialect": dialect}


def _check_seed(path, keys, seed, dialect, exc=ValueError):
    if keys.ndim != 1 or seed.ndim != 3:
        raise exc(f"{path}: expected keys of shape (N,) and seed of shape (K, H, W), "
                  f"found {keys.shape} and {seed.shape}")
    expected = seed.shape[0] + 1 if dialect == "rsepm" else seed.shape[0]
    if len(keys) != expected:
        raise exc(f"{path}: {dialect} dialect needs {expected} keys for {seed.shape[0]} seed planes, "
                  f"found {len(keys)}")
    if dialect == "rsepm" and keys[0] != 0:
        raise exc(f"{path}: rsepm keys must start with the background placeholder 0, found {keys[:3]}")


# ---------------------------------------------------------------------------------------------
# Palette masks (docs/formats.md#pseudo-masks)
# ---------------------------------------------------------------------------------------------
def make_palette(colors):
    """768-entry palette list: `colors[i]` at index i, IGNORE_COLOR at IGNORE_INDEX, black elsewhere."""
    palette = [0] * 768
    for i, rgb in enumerate(colors):
        palette[3 * i:3 * i + 3] = [int(v) for v in rgb]
    palette[3 * IGNORE_INDEX:3 * IGNORE_INDEX + 3] = list(IGNORE_COLOR)
    return palette


def save_mask(path, mask, palette):
    """Write a uint8 (H, W) class-index mask as an 8-bit palette PNG, atomically.

    Pillow pitfalls (docs/formats.md#pseudo-masks): the palette is passed as a list, and always set, so
    the file keeps 8 bits per pixel and the indices survive.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{path}: mask must be (H, W), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"{path}: mask values must lie in 0..255")
        mask = mask.astype(np.uint8)
    image = Image.fromarray(mask)  # mode "L"; putpalette turns it into "P" with the same indices
    image.putpalette(list(palette))
    with atomic_output(path) as f:
        image.save(f, format="PNG", bits=8)


def read_mask(path):
    """Read a class-index PNG as uint8 (H, W) without any palette conversion."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise FormatError(f"{path}: mask must be a palette or grey PNG of class indices, "
                                  f"found mode {image.mode}")
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: mask file not found") from None
    except (OSError, SyntaxError) as e:
        raise FormatError(f"{path}: cannot read mask ({e})") from None
