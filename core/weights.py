"""The one checkpoint reader/writer of the project (docs/formats.md#networks-and-checkpoints).

Weights are saved as plain flat state_dicts (no `module.` prefix, no wrapper dict). Reading also
accepts a `module.` prefix (weights saved from DataParallel/DDP) and a dict wrapping the weights
under `model` or `state_dict`. Loading is strict by default and a mismatch names every missing,
unexpected and mis-shaped key, so a researcher sees at once which file does not fit which model.
"""

import collections
import re

import torch
from torch import nn

from core.errors import CheckpointError
from core.io import atomic_output

WRAPPER_KEYS = ("model", "state_dict")
PREFIX = "module."
MAX_LISTED = 3  # keys shown of each kind: the counts come first, a dump helps nobody


def unwrap(model):
    """The module inside nn.DataParallel / DistributedDataParallel (any nesting), else `model`."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def read_state_dict(path, map_location="cpu"):
    """Read a state_dict from `path` as an OrderedDict of tensors, without `module.` prefixes.

    Accepts a plain state_dict or a dict wrapping it under 'model' or 'state_dict'. Only tensors
    and plain containers are unpickled (weights_only=True), so a file cannot run code.
    Raises CheckpointError naming the file when it is absent or not a torch state_dict.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except Exception as e:  # pickle, zip and EOF errors alike: the file is not a checkpoint
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(e).__name__}: {e})") from None
    state = _extract_state_dict(path, obj)
    return collections.OrderedDict((k[len(PREFIX) :] if k.startswith(PREFIX) else k, v) for k, v in state.items())


def _extract_state_dict(path, obj):
    """The tensor dict inside a loaded object (plain or wrapped); CheckpointError otherwise."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a non-empty state_dict")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: not a state_dict (entry {key!r} is a {type(value).__name__}, not a tensor)")
    return obj


def _listed(keys):
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


_RESNETS = {
    ((2, 2, 2, 2), False): "ResNet-18",
    ((3, 4, 6, 3), False): "ResNet-34",
    ((3, 4, 6, 3), True): "ResNet-50",
    ((3, 4, 23, 3), True): "ResNet-101",
    ((3, 8, 36, 3), True): "ResNet-152",
}


def guess_resnet(keys):
    """'ResNet-50' etc. from the block counts of a state_dict's layer1..layer4 keys, else None."""
    blocks, bottleneck = {}, False
    for key in keys:
        match = re.search(r"(?:^|\.)layer([1-4])\.(\d+)\.(conv3)?", key)
        if match:
            layer = int(match.group(1))
            blocks[layer] = max(blocks.get(layer, 0), int(match.group(2)) + 1)
            bottleneck = bottleneck or match.group(3) is not None
    return _RESNETS.get((tuple(blocks.get(i, 0) for i in range(1, 5)), bottleneck))


def describe_mismatch(expected, given, strict=True):
    """Compare two state_dicts by key and shape; '' when they fit, else a readable summary.

    expected: the model's state_dict; given: the file's. With strict=False only mis-shaped
    keys count (missing and unexpected keys are allowed). The summary starts with the counts
    and, when the two are different ResNets, both names; then at most MAX_LISTED keys of each kind.
    """
    missing = [k for k in expected if k not in given] if strict else []
    unexpected = [k for k in given if k not in expected] if strict else []
    misshaped = [
        f"{k} (file {tuple(given[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or misshaped):
        return ""
    counts = [
        f"{len(missing)} missing" if missing else "",
        f"{len(unexpected)} unexpected" if unexpected else "",
        f"{len(misshaped)} mis-shaped" if misshaped else "",
    ]
    summary = ", ".join(c for c in counts if c) + " key(s)"
    file_net, model_net = guess_resnet(given), guess_resnet(expected)
    if file_net and model_net and file_net != model_net:
        summary += f" (is it a {file_net} checkpoint for a {model_net} model? check --backbone)"
    parts = [summary, f"the file has {len(given)} keys, the model expects {len(expected)}"]
    if missing:
        parts.append(f"missing (in the model, not in the file): {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected (in the file, not in the model): {_listed(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped: {_listed(misshaped)}")
    return "; ".join(parts)


def load_checkpoint(model, path, strict=True, map_location="cpu"):
    """Load the weights in `path` into `model` (DataParallel/DDP unwrapped), strictly by default.

    Returns the unwrapped model. Raises CheckpointError naming the file and the offending keys
    on any mismatch (with strict=False, only on mis-shaped keys).
    """
    target = unwrap(model)
    state = read_state_dict(path, map_location)
    problem = describe_mismatch(target.state_dict(), state, strict)
    if problem:
        raise CheckpointError(f"{path}: does not fit {type(target).__name__}: {problem}")
    target.load_state_dict(state, strict=strict)
    return target


def save_weights(model, path):
    """Write the model's weights as a plain flat CPU state_dict (no `module.` prefix), atomically."""
    state = collections.OrderedDict((k, v.detach().cpu()) for k, v in unwrap(model).state_dict().items())
    save_atomically(state, path)


def save_atomically(obj, path):
    """torch.save(obj) to `path` atomically; a failed write (disk full, read-only folder,
    permission) raises OutputError naming the path and the cause.

    torch.save reports an OSError of the file's write() as a RuntimeError ("unexpected pos" /
    "PytorchStreamWriter failed writing file"), so the first OSError is kept and raised in its
    place, where atomic_output turns it into the OutputError (and removes the temporary file).
    """
    with atomic_output(path, "wb") as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise


class _RecordingWriter:
    """A binary file wrapper that remembers the first OSError of write()."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()
