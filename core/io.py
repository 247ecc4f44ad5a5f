"""File input/output shared by every script: atomic writes, seed files, palette masks, JSON.

Every output of the project goes through :func:`atomic_output`, so a run killed at any moment
leaves either the complete file or no file at all, and skip-if-exists resumption is safe
(docs/formats.md#fixed-defects: the original left truncated files that later counted as done).
"""

import contextlib
import errno
import io
import json
import os
import pickle
import tempfile

import numpy as np
from PIL import Image

from core.errors import FormatError, MissingFileError, OutputError, ProjectError
from core.safety import TEMP_SUFFIX, hold_output, regular_file_problem, remove_stale_temp_files, temp_prefix

SEED_DIALECTS = ("rsepm", "seg")
# How the planes are stored: "float32", the authors' array (what their scripts read), or "uint8":
# each value rounded to a multiple of 1/255 (an error of at most 1/510, below the 0.05 steps of
# every threshold), the bytes deflated (zlib), about 10-20x smaller (docs/formats.md#seed-files).
SEED_FORMATS = ("float32", "uint8", "uint16")
# format -> (stored dtype, the value of 1.0); the planes go under "seed_{format}"
_QUANTIZED = {"uint8": (np.uint8, 255), "uint16": (np.uint16, 65535)}
# Largest decoded seed accepted by load_seed (--max_seed_bytes): a VOC seed is ~20 MB, a COCO one
# ~130 MB; a small pickle that repeats one array can otherwise expand to gigabytes.
DEFAULT_MAX_SEED_BYTES = 1 << 30
# errno -> the cause in words, for one-line messages about writes that failed
OS_ERROR_CAUSES = {
    errno.ENOSPC: "disk full (no space left on device)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied (operation not permitted)",
    errno.ENOTDIR: "a parent of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EIO: "input/output error of the device",
}


def describe_os_error(error, path=None):
    """One line `path: cannot write (cause)` for an OSError of a write; the cause in words when
    the errno is a known one (disk full, read-only, permission), else the system's text."""
    path = path or getattr(error, "filename", None) or "output"
    cause = OS_ERROR_CAUSES.get(error.errno) or error.strerror or str(error)
    return f"{path}: cannot write ({cause})"


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
        raise OutputError(describe_os_error(e, path)) from e
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
            raise OutputError(describe_os_error(e, path)) from e
        raise


def write_json(path, obj):
    """Write `obj` as indented UTF-8 JSON, atomically."""
    with atomic_output(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def _require_regular(path, what="file"):
    """MissingFileError when `path` is missing, FormatError when it is not a regular file (a FIFO
    would block the reader): the one check of this module's readers."""
    problem = regular_file_problem(path)
    if problem == "not found":
        raise MissingFileError(f"{path}: {what} not found")
    if problem:
        raise FormatError(f"{path}: {problem}")


def read_json(path):
    _require_regular(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise FormatError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); a JSON "
            "file of this project is written in UTF-8"
        ) from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply") from None


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
        raise pickle.UnpicklingError(
            f"refusing to load '{module}.{name}': only numpy arrays, "
            "dicts, lists and scalars are allowed in a seed file"
        )


def safe_pickle_load(path, max_bytes=None):
    """Unpickle `path` allowing only numpy arrays, dicts, lists and scalars.

    With `max_bytes`, a file larger than that is refused before it is read.
    """
    _require_regular(path)
    try:
        if max_bytes is not None and os.path.getsize(path) > max_bytes:
            raise FormatError(
                f"{path}: file of {os.path.getsize(path):,} bytes exceeds the limit of "
                f"{max_bytes:,} bytes (--max_seed_bytes)"
            )
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


def save_seed(path, keys, seed, dialect, seed_format="float32"):
    """Write a seed file atomically.

    Args:
        keys: int array. rsepm dialect: [0, c1, ..., cK] (0 = placeholder background, not stored);
            seg dialect: the K class indices of the stored planes (0 = real background).
        seed: float32 array (K, H, W), values in [0, 1] for seed_format "uint8".
        dialect: "rsepm" or "seg"; recorded under the extra key "dialect".
        seed_format: "float32" (the authors' file: "seed" is the array), "uint8" or "uint16" (the
            planes rounded to multiples of 1/255 or 1/65535 and deflated under "seed_uint8" or
            "seed_uint16", with their "shape").
    """
    import zlib

    if dialect not in SEED_DIALECTS:
        raise ValueError(f"unknown seed dialect {dialect!r}; expected one of {SEED_DIALECTS}")
    if seed_format not in SEED_FORMATS:
        raise ValueError(f"unknown seed format {seed_format!r}; expected one of {SEED_FORMATS}")
    keys = np.asarray(keys, dtype=np.int64)
    seed = np.asarray(seed, dtype=np.float32)
    _check_seed(path, keys, seed, dialect)
    if seed_format == "float32":
        content = {"keys": keys, "seed": seed, "dialect": dialect}
    else:
        if seed.size and not (np.isfinite(seed).all() and seed.min() >= 0 and seed.max() <= 1):
            raise ValueError(f"{path}: the {seed_format} seed format stores values in [0, 1]; write float32 instead")
        dtype, one = _QUANTIZED[seed_format]
        quantized = np.rint(seed.astype(np.float64) * one).astype(dtype)
        content = {
            "keys": keys,
            f"seed_{seed_format}": zlib.compress(quantized.tobytes(), 6),
            "shape": list(seed.shape),
            "dialect": dialect,
        }
    with atomic_output(path) as f:
        pickle.dump(content, f, protocol=4)


def _decode_quantized(path, data, seed_format, max_bytes):
    """The float32 planes of a uint8 or uint16 seed file, its size checked before anything is inflated."""
    import zlib

    shape = data.get("shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(v, int) and v >= 0 for v in shape)):
        raise FormatError(f"{path}: a uint8 seed needs 'shape' [K, H, W], found {shape!r}")
    count = shape[0] * shape[1] * shape[2]
    if max_bytes is not None and count * 4 > max_bytes:
        raise FormatError(
            f"{path}: the seed would decode to more than {max_bytes:,} bytes (over the limit --max_seed_bytes)"
        )
    dtype, one = _QUANTIZED[seed_format]
    width = np.dtype(dtype).itemsize
    packed = data[f"seed_{seed_format}"]
    if not isinstance(packed, bytes):
        raise FormatError(f"{path}: 'seed_{seed_format}' must be bytes, found {type(packed).__name__}")
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed, count * width + 1)  # never more than the shape says, plus one to tell
    except zlib.error as e:
        raise FormatError(f"{path}: corrupt {seed_format} seed ({e})") from None
    if len(raw) != count * width or inflater.unconsumed_tail:
        raise FormatError(f"{path}: {seed_format} seed of {len(raw) // width:,}+ values for a shape of {count:,}")
    return (np.frombuffer(raw, dtype=dtype).reshape(shape).astype(np.float64) / one).astype(np.float32)


def seed_dialect_from_tag(tag):
    """The original rule for files without a recorded dialect: tags containing 'MS' are seg."""
    return "seg" if "MS" in (tag or "") else "rsepm"


def decoded_nbytes(obj, limit):
    """Bytes that np.asarray(obj) (as float32 or wider) would take, counted without allocating.

    Nested lists/tuples are counted once per reference: a pickle may hold one array referenced
    a million times (a few kilobytes on disk) which np.asarray would copy a million times.
    Counting stops as soon as `limit` is passed. Arrays count their own nbytes (at least 4 bytes
    per element: load_seed converts to float32).
    """
    if isinstance(obj, np.ndarray):
        return int(obj.size) * max(obj.itemsize, 4)
    if isinstance(obj, (list, tuple)):
        total = 0
        for item in obj:
            total += decoded_nbytes(item, limit - total)
            if total > limit:
                return total
        return total
    return 8


def load_seed(path, tag=None, max_bytes=DEFAULT_MAX_SEED_BYTES):
    """Read a seed file (either dialect) and validate it.

    Returns a dict with "keys" (int64), "seed" (float32, (K, H, W)) and "dialect". Files written
    by the original scripts carry no dialect; the original `MS`-in-tag rule decides for them.
    Raises FormatError naming the file on anything that is not a seed file, and on a file or
    decoded content larger than `max_bytes` (None: no limit), checked before the arrays are built.
    """
    data = safe_pickle_load(path, max_bytes)
    stored = [f for f in _QUANTIZED if isinstance(data, dict) and f"seed_{f}" in data]
    if stored and "seed" not in data:
        data = dict(data, seed=_decode_quantized(path, data, stored[0], max_bytes))
    if not isinstance(data, dict) or "keys" not in data or "seed" not in data:
        raise FormatError(
            f"{path}: not a seed file (expected a dict with 'keys' and 'seed', "
            f"found {type(data).__name__}"
            + (f" with keys {sorted(map(str, data))}" if isinstance(data, dict) else "")
            + ")"
        )
    dialect = data.get("dialect") or seed_dialect_from_tag(tag)
    if dialect not in SEED_DIALECTS:
        raise FormatError(f"{path}: unknown seed dialect {dialect!r}")
    if max_bytes is not None:
        size = decoded_nbytes(data["keys"], max_bytes) + decoded_nbytes(data["seed"], max_bytes)
        if size > max_bytes:
            raise FormatError(
                f"{path}: the seed would decode to more than {max_bytes:,} bytes (over "
                "the limit --max_seed_bytes; a small pickle can repeat one array many times)"
            )
    keys = np.asarray(data["keys"])
    seed = np.asarray(data["seed"])
    if keys.dtype.kind not in "iu" or seed.dtype.kind != "f":
        raise FormatError(f"{path}: 'keys' must be integers and 'seed' floats, found {keys.dtype} and {seed.dtype}")
    keys = keys.astype(np.int64)
    seed = seed.astype(np.float32, copy=False)
    _check_seed(path, keys, seed, dialect, exc=FormatError)
    return {"keys": keys, "seed": seed, "dialect": dialect}


def _check_seed(path, keys, seed, dialect, exc=ValueError):
    if keys.ndim != 1 or seed.ndim != 3:
        raise exc(
            f"{path}: expected keys of shape (N,) and seed of shape (K, H, W), found {keys.shape} and {seed.shape}"
        )
    expected = seed.shape[0] + 1 if dialect == "rsepm" else seed.shape[0]
    if len(keys) != expected:
        raise exc(f"{path}: {dialect} dialect needs {expected} keys for {seed.shape[0]} seed planes, found {len(keys)}")
    if dialect == "rsepm" and keys[0] != 0:
        raise exc(f"{path}: rsepm keys must start with the background placeholder 0, found {keys[:3]}")


# ---------------------------------------------------------------------------------------------
# Palette masks (docs/formats.md#pseudo-masks)
# ---------------------------------------------------------------------------------------------
def make_palette(colors):
    """768-entry palette list: `colors[i]` at index i, IGNORE_COLOR at IGNORE_INDEX, black elsewhere."""
    palette = [0] * 768
    for i, rgb in enumerate(colors):
        palette[3 * i : 3 * i + 3] = [int(v) for v in rgb]
    palette[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = list(IGNORE_COLOR)
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
    _require_regular(path, "mask file")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("P", "L"):
                raise FormatError(
                    f"{path}: mask must be a palette or grey PNG of class indices, found mode {image.mode}"
                )
            return np.array(image, dtype=np.uint8)
    except FileNotFoundError:
        raise MissingFileError(f"{path}: mask file not found") from None
    except Image.DecompressionBombError as e:  # not an OSError: a header claiming a huge image
        raise FormatError(f"{path}: mask too large to decode safely ({e})") from None
    except (OSError, SyntaxError) as e:
        raise FormatError(f"{path}: cannot read mask ({e})") from None


# ---------------------------------------------------------------------------------------------
# Settings records of output folders
# ---------------------------------------------------------------------------------------------
SETTINGS_SUFFIX = ".settings.json"


def settings_path(folder):
    """The settings record of an output folder: beside it, `{folder}.settings.json`, so the folder
    itself holds only outputs (like evaluate.py's `{folder}.eval.json`)."""
    return os.path.normpath(folder) + SETTINGS_SUFFIX


def file_fingerprint(path):
    """{"path", "size", "sha256"} of an input file whose content shapes the outputs (weights)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "size": os.path.getsize(path), "sha256": digest.hexdigest()}


def claim_output_folder(
    folder, settings, extension, overwrite=False, ignore=("path",), root=None, instead="use a new --tag"
):
    """The one preparation of every stage's output folder: take its writer lock (one live writer
    per folder, core.safety.hold_output, held until this process ends), create it, remove the
    temporaries of killed runs, make sure the outputs in it all come from `settings`, then record them.

    `settings` (JSON-able) is written to settings_path(folder) atomically; it names what shapes
    the outputs: the flags, weights by sha256 (file_fingerprint), an input folder's own record by
    content. When the folder already holds outputs (files ending in `extension`) made with other
    values, or outputs but no record, the run is refused with UsageError naming the differences,
    unless `overwrite`: then those outputs and the results derived from them (the evaluation
    `{folder}.eval.json` beside it) are deleted first. A record beside no outputs guards nothing
    and never blocks (a run that failed before writing leaves nothing in the way: its writer is gone,
    since a live one holds the lock and refuses this run first). Values under a
    key in `ignore` (at any depth, e.g. the weights' path) are recorded but not compared.
    `root` (the experiment root, --pred_dir): `overwrite` refuses a folder whose real path lies
    outside it (a link to a folder elsewhere), since it deletes files. `instead`: the other way out
    named in the refusal, in the words of the flag that names the folder. Returns the number of
    outputs deleted.
    """
    from core.errors import UsageError

    settings = json.loads(json.dumps(settings))  # tuples -> lists, as they are read back
    if overwrite and root is not None:
        real, real_root = os.path.realpath(folder), os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise UsageError(
                f"--overwrite refuses {folder}: it resolves to {real}, outside the experiment root "
                f"{root} ({real_root}), and overwriting deletes files there"
            )
    hold_output(folder)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temp_files(folder)
    record = settings_path(folder)
    outputs = sorted(f for f in os.listdir(folder) if f.endswith(extension))
    old = read_json(record) if os.path.isfile(record) and outputs else None
    if old is None and outputs:
        problem = f"holds {len(outputs)} {extension} file(s) but no settings record {record}"
    else:
        changed = [] if old is None else _differences(old, settings, ignore)
        problem = ("was written with other settings: " + "; ".join(changed[:8])) if changed else None
    if problem and not overwrite:
        raise UsageError(
            f"{folder}: {problem}. Adding to it would mix results of two settings: pass "
            f"--overwrite true to delete its {len(outputs)} {extension} file(s) and start "
            f"again, or {instead}"
        )
    deleted = 0
    if overwrite:
        for path in [os.path.join(folder, name) for name in outputs] + derived_results(folder):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                deleted += path.endswith(extension)
    write_json(record, settings)
    if deleted:
        print(f"--overwrite: deleted {deleted} {extension} file(s) of {folder} and what was derived from them")
    return deleted


def derived_results(folder):
    """Files beside `folder` computed from its contents: evaluate.py's `{folder}.eval.json`."""
    return [os.path.normpath(folder) + ".eval.json"]


def _differences(old, new, ignore, prefix=""):
    """'key: old -> new' for every differing leaf of two JSON dicts (keys in `ignore` skipped)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [f"{prefix or 'settings'}: {old!r} -> {new!r}"]
    changes = []
    for key in list(old) + [k for k in new if k not in old]:
        if key in ignore:
            continue
        name = f"{prefix}.{key}" if prefix else key
        if key not in old or key not in new:
            changes.append(f"{name}: {old.get(key, '(absent)')!r} -> {new.get(key, '(absent)')!r}")
        else:
            changes.extend(_differences(old[key], new[key], ignore, name))
    return changes
