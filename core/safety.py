"""Guards against hostile or broken inputs that would otherwise be accepted silently.

- output ids taken from annotation files (COCO `file_name`, list files) must be bare names, and
  every output path built from one must stay inside its output folder;
- images must decode to 8 bits per channel (a 16-bit PNG under a .jpg name would be clipped to
  white by the RGB conversion);
- the temporary files of this project's atomic writes carry one recognisable name pattern, so
  those left behind by killed runs can be found and removed at the start of the next run.
"""
import os
import re
import secrets
import stat
import time

from core.errors import ProjectError

# ---------------------------------------------------------------------------------------------
# Output paths from external ids
# ---------------------------------------------------------------------------------------------


class UnsafePathError(ProjectError, ValueError):
    """An id or relative path from an input file would leave its output folder."""


def check_output_id(value, source, error=UnsafePathError):
    """Return `value` if it is a bare file name that can safely become an output name.

    Refused: non-strings, empty names, `.` / `..`, names with a path separator (either slash),
    absolute paths, names starting with a dot (hidden files: this project's temporary files
    start with one) and control characters. `source` (the annotation or list file, with the
    entry) goes into the message; `error` is the exception class raised.
    """
    problem = None
    if not isinstance(value, str):
        problem = f"is a {type(value).__name__}, not a file name"
    elif not value.strip():
        problem = "is empty"
    elif "/" in value or "\\" in value or os.sep in value or (os.altsep and os.altsep in value):
        problem = "contains a path separator"
    elif value in (".", "..") or os.path.isabs(value):
        problem = "is not a file name"
    elif value.startswith("."):
        problem = "starts with a dot (hidden file)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains a control character"
    if problem:
        raise error(f"{source}: refusing the name {value!r}: it {problem}; output names must be "
                              "plain file names (no folders, no '..'), so nothing is written for it")
    return value


def safe_output_path(root, relative):
    """`root/relative`, after checking that it lies strictly inside `root`.

    The check is on the normalised absolute path (`..` components resolved), so an id such as
    `../../x` or an absolute path is refused with UnsafePathError. Symbolic links inside `root`
    are the user's own layout and are not followed.
    """
    base = os.path.normpath(os.path.abspath(root))
    target = os.path.normpath(os.path.join(base, relative))
    if os.path.isabs(relative) or target == base or os.path.commonpath([base, target]) != base:
        raise UnsafePathError(f"refusing to write {relative!r}: it resolves to {target}, outside the output "
                              f"folder {base}")
    return os.path.join(root, relative)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
# PIL modes with 8 bits per channel (or 1 bit): converting them to RGB keeps the pixel values.
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def image_mode_problem(mode):
    """None for an 8-bit image mode, else a sentence saying why the image is refused.

    16-bit ('I;16', 'I;16B', ...), 32-bit integer ('I') and float ('F') images are clipped to
    0..255 by PIL's RGB conversion: a 16-bit photograph becomes almost all white.
    """
    if mode in EIGHT_BIT_MODES:
        return None
    return (f"image mode {mode!r} is not 8 bits per channel; an 8-bit RGB, grey or palette image is "
            "expected (converting it would clip the values to 0..255)")


def check_image_file(path, error=ValueError):
    """Raise `error` naming `path` unless its header is an 8-bit image (reads the header only)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            problem = image_mode_problem(image.mode)
    except FileNotFoundError:
        raise error(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise error(f"{path}: unreadable image ({e})") from None
    if problem:
        raise error(f"{path}: {problem}")


# ---------------------------------------------------------------------------------------------
# Temporary files of atomic writes
# ---------------------------------------------------------------------------------------------
# `.{target name}.{8 random characters}.rsepm.tmp`, beside the target. mkstemp's random part
# uses [a-z0-9_]; temp_path's uses hex digits.
TEMP_SUFFIX = ".rsepm.tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX))


def temp_prefix(path):
    """Prefix for tempfile.mkstemp(prefix=..., suffix=TEMP_SUFFIX) of a temporary beside `path`."""
    return "." + os.path.basename(path) + "."


def temp_path(path):
    """A fresh temporary name beside `path` following the project's pattern (not created)."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, temp_prefix(path) + secrets.token_hex(4) + TEMP_SUFFIX)


def is_temp_name(name):
    """True when the file name `name` is one of this project's temporary names."""
    return _TEMP_NAME.fullmatch(name) is not None


def _process_start():
    """Start time of this process (epoch seconds), from /proc where available.

    The smaller of /proc's value and the import time, so an unreadable or odd /proc can only make
    the cleanup keep more files, never remove a file written after the start.
    """
    imported = time.time()
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return min(imported, boot + int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return imported


PROCESS_START = _process_start()


def remove_stale_temp_files(folder, before=None):
    """Remove this project's temporary files in `folder` (not its subfolders) that were last
    modified before `before` (default: the start of this process); returns their paths.

    Such files are what a killed atomic write leaves behind. Files written after this process
    started may belong to a write in progress (of this or another run) and are kept; names that
    do not match the pattern exactly are never touched. A missing folder is not an error.
    """
    before = PROCESS_START if before is None else before
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not is_temp_name(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) or info.st_mtime >= before:
                continue
            os.remove(entry.path)
        except FileNotFoundError:  # removed meanwhile (another run cleaning the same folder)
            continue
        removed.append(entry.path)
    return removed
