"""Guards against hostile or broken inputs that would otherwise be accepted silently.

- output ids taken from annotation files (COCO `file_name`, list files) must be bare names, and
  every output path built from one must stay inside its output folder;
- images must decode to 8 bits per channel (a 16-bit PNG under a .jpg name would be clipped to
  white by the RGB conversion);
- every input file is checked to be a regular file before it is opened: a FIFO (named pipe) or a
  device named like an image would block the reader for ever;
- the temporary files of this project's atomic writes carry one recognisable name pattern and
  their writer's identity, so those left behind by killed runs can be found and removed at the
  start of the next run, however soon it starts;
- every output (a folder of seeds, masks or labels, an evaluation, a training tag, a built dataset)
  has one live writer: an exclusive lock beside it, held for as long as its writer runs.
"""

import hashlib
import json
import os
import re
import secrets
import socket
import stat
import time

from core.errors import ProjectError

# ---------------------------------------------------------------------------------------------
# Output paths from external ids
# ---------------------------------------------------------------------------------------------


class UnsafePathError(ProjectError, ValueError):
    """An id or relative path from an input file would leave its output folder."""


MAX_NAME_BYTES = 255


def check_output_id(value, source, error=UnsafePathError):
    """Return `value` if it is a bare file name that can safely become an output name. The one
    name check of the project: ids from annotation files, and tags and folder names from flags.

    Refused: non-strings, empty names, `.` / `..`, names with a path separator (either slash),
    absolute paths, names starting with a dot (hidden files: this project's temporary files
    start with one), control characters and names over 255 bytes. `source` (the annotation or list file, with the
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
    elif len(value.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes (the file systems' limit for one name)"
    if problem:
        raise error(
            f"{source}: refusing the name {value!r}: it {problem}; output names must be "
            "plain file names (no folders, no '..'), so nothing is written for it"
        )
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
        raise UnsafePathError(
            f"refusing to write {relative!r}: it resolves to {target}, outside the output folder {base}"
        )
    return os.path.join(root, relative)


# ---------------------------------------------------------------------------------------------
# Input files
# ---------------------------------------------------------------------------------------------
_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def regular_file_problem(path):
    """None when `path` (links followed) is a regular file; else a phrase saying what it is
    ("not found", "a FIFO (named pipe)", ...). Opening a FIFO for reading blocks until a writer
    appears, and no signal handler of Python runs meanwhile: every reader asks this first. An open
    file object (not a path) is the caller's own and passes."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"is {kind}, not a regular file"


def check_regular_file(path, error, what="file"):
    """Raise `error` naming `path` unless it is a regular file (links followed)."""
    problem = regular_file_problem(path)
    if problem == "not found":
        raise error(f"{path}: {what} not found")
    if problem:
        raise error(f"{path}: {problem}")


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
    return (
        f"image mode {mode!r} is not 8 bits per channel; an 8-bit RGB, grey or palette image is "
        "expected (converting it would clip the values to 0..255)"
    )


def image_size_problem(size, max_pixels):
    """None when a (width, height) header fits `max_pixels` (None: no limit), else the reason."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        return (
            f"image header claims {width}x{height} = {width * height:,} pixels, more than the limit "
            f"of {max_pixels:,} (--max_image_pixels); skipped before decoding"
        )
    return None


def check_image_header(path, error=ValueError, max_pixels=None, eight_bit=True):
    """(width, height) of the image at `path` from its header, nothing decoded: the one guarded
    open of every image reader and builder. Raises `error` naming `path` when it is not a regular
    file (a FIFO would block), is missing or unreadable, is too large for PIL's decompression-bomb
    limit, is not 8 bits per channel (`eight_bit`; a 16-bit PNG would clip to white) or claims
    more than `max_pixels` pixels."""
    from PIL import Image

    check_regular_file(path, error, "image file")
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
    except FileNotFoundError:
        raise error(f"{path}: image file not found") from None
    except Image.DecompressionBombError as e:  # not an OSError: PIL's own limit on the header size
        raise error(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise error(f"{path}: corrupt or truncated image ({e})") from None
    problem = (image_mode_problem(mode) if eight_bit else None) or image_size_problem(size, max_pixels)
    if problem:
        raise error(f"{path}: {problem}")
    return size


# ---------------------------------------------------------------------------------------------
# Temporary files of atomic writes
# ---------------------------------------------------------------------------------------------
# `.{target name}.{writer}.{8 random characters}.rsepm.tmp`, beside the target. The writer is
# `{host}-{pid}-{start}`: a hash of the host name, the writing process's id and its start time in
# clock ticks since boot (a pid alone is reused, and every fresh container starts at the same
# pids). mkstemp's random part uses [a-z0-9_]; temp_path's uses hex digits. Names without a writer
# (written by earlier releases) are still recognised.
TEMP_SUFFIX = ".rsepm.tmp"
_TEMP_NAME = re.compile(
    r"\..+?(?:\.(?P<host>[0-9a-f]{6})-(?P<pid>[0-9]+)-(?P<start>[0-9]+))?\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX)
)
HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def process_start_ticks(pid):
    """Start time of process `pid` in clock ticks since boot (/proc/PID/stat field 22); None when
    the process does not exist or /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


_WRITER = {}


def writer_token():
    """`{host}-{pid}-{start}` of the calling process (computed per pid: forked workers differ)."""
    pid = os.getpid()
    if pid not in _WRITER:
        _WRITER[pid] = f"{HOST}-{pid}-{process_start_ticks(pid) or 0}"
    return _WRITER[pid]


# writer token (at most 6 + 1 + 7 + 1 + 20 characters), separators, 8 random characters, suffix
_TEMP_OVERHEAD = 2 + 35 + 1 + 8 + len(TEMP_SUFFIX)


def temp_prefix(path):
    """Prefix for tempfile.mkstemp(prefix=..., suffix=TEMP_SUFFIX) of a temporary beside `path`.
    The target's name is kept when the whole temporary name fits the file systems' 255 bytes, else
    replaced by a hash of it, so every name that check_output_id accepts can be written."""
    name = os.path.basename(path)
    if len(name.encode("utf-8", "surrogateescape")) + _TEMP_OVERHEAD > MAX_NAME_BYTES:
        name = "h" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    return f".{name}.{writer_token()}."


def temp_path(path):
    """A fresh temporary name beside `path` following the project's pattern (not created)."""
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, temp_prefix(path) + secrets.token_hex(4) + TEMP_SUFFIX)


def is_temp_name(name):
    """True when the file name `name` is one of this project's temporary names."""
    return _TEMP_NAME.fullmatch(name) is not None


def writer_alive(pid, start):
    """Whether the process that wrote a temporary is still running: same pid and same start time
    (a recycled pid has another). Where /proc says nothing, a process with that pid counts as
    alive (keeping a file is the safe error)."""
    ticks = process_start_ticks(pid)
    if ticks is not None:
        return ticks == start or start == 0
    if os.path.isdir("/proc/self"):
        return False  # /proc works and has no such process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _process_start():
    """Start time of this process (epoch seconds), from /proc where available.

    The smaller of /proc's value and the import time, so an unreadable or odd /proc can only make
    the cleanup keep more files, never remove a file written after the start.
    """
    imported = time.time()
    try:
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return min(imported, boot + process_start_ticks(os.getpid()) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, TypeError, StopIteration):
        return imported


PROCESS_START = _process_start()


def remove_stale_temp_files(folder, before=None):
    """Remove this project's temporary files in `folder` (not its subfolders) whose writer is
    gone, and its temporary build folders (a dataset builder's, named the same way) by the same
    rule; returns their paths.

    Such files are what a killed atomic write leaves behind. A name that carries its writer (this
    host, pid, start time) is removed as soon as that process no longer runs, however recent the
    file. A name without one (an earlier release), or written on another host sharing the folder,
    falls back to time: removed when last modified before `before` (default: the start of this
    process). Names that do not match the pattern exactly are never touched; a missing folder is
    not an error.
    """
    before = PROCESS_START if before is None else before
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if match["host"] == HOST:
                if writer_alive(int(match["pid"]), int(match["start"])):
                    continue
            elif info.st_mtime >= before:
                continue
            if stat.S_ISDIR(info.st_mode):
                import shutil

                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)
        except FileNotFoundError:  # removed meanwhile (another run cleaning the same folder)
            continue
        removed.append(entry.path)
    return removed


# ---------------------------------------------------------------------------------------------
# One live writer per output
# ---------------------------------------------------------------------------------------------
LOCK_SUFFIX = ".lock"
_HELD = {}  # absolute lock path -> (pid, file descriptor) of the locks this process holds


class OutputBusyError(ProjectError):
    """Another live process is writing the same output."""


def lock_path(output):
    """The lock of an output: the hidden file `.{name}.lock` beside it (a folder keeps only its
    outputs, and a listing of the folder above shows none)."""
    path = os.path.normpath(os.path.abspath(output))
    return os.path.join(os.path.dirname(path), "." + os.path.basename(path) + LOCK_SUFFIX)


def _holder_text(fd):
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        holder = json.loads(text)
        return (
            f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}, command: {holder['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that is still starting"


def _held_here(path):
    """Whether this process (not a forked child) holds the lock file `path`."""
    held = _HELD.get(path)
    return bool(held) and held[0] == os.getpid()


def hold_output(output, flag=None):
    """Take the exclusive writer lock of `output` (a folder or a file) for the rest of this process.

    The lock is an flock on `.{name}.lock` beside the output, which records who holds it (host, pid, start time,
    command). The kernel releases it when the holder ends however it ends (SIGKILL included), so the
    lock of a writer that is gone is simply taken over; worker processes forked by the holder share
    it. Taking a lock this process already holds is a no-op. A second live writer is refused with
    OutputBusyError naming the one that runs (`flag`: the option that named the output, for the
    message). Under torchrun the ranks of one run share rank 0's lock: another rank takes none (the
    scripts let it write only after rank 0 has taken it, behind a barrier). Returns the lock path."""
    import fcntl
    import sys

    path = lock_path(output)
    if _held_here(path) or (os.environ.get("WORLD_SIZE") and os.environ.get("RANK", "0") != "0"):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder_text(fd)
        os.close(fd)
        named = f" ({flag})" if flag else ""
        raise OutputBusyError(
            f"{output}{named}: another run is writing it: {holder}. Two writers would mix "
            "their outputs; wait for it to end (or stop it), or write elsewhere"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(PROCESS_START)),
        "command": " ".join(sys.argv),
    }
    data = json.dumps(record).encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    _HELD[path] = (os.getpid(), fd)
    return path


def output_writer(output):
    """None when no other live process holds the lock of `output`, else who does (a sentence)."""
    import fcntl

    path = lock_path(output)
    if _held_here(path) or not os.path.isfile(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _holder_text(fd)
    finally:
        os.close(fd)  # closing releases the shared lock taken for the test


def release_output(output=None):
    """Release the lock of `output` (None: every lock this process holds); for long-lived
    processes and tests, since a lock otherwise lasts as long as its process."""
    paths = list(_HELD) if output is None else [lock_path(output)]
    for path in paths:
        held = _HELD.pop(path, None)
        if held and held[0] == os.getpid():
            os.close(held[1])
