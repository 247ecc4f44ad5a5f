"""The experiment folder (docs/formats.md#experiment-folder), one definition for every script.

{pred_dir}/models/{tag}/{strategy}.pth
{pred_dir}/predictions/{tag}/{domain}/{ID}.pkl
{pred_dir}/pseudo-labels/{tag}/{domain}/{ID}.png
"""

import os

from core.errors import UsageError
from core.safety import check_output_id

DEFAULT_PRED_DIR = "./experiments/"
# The one definition of the repository root: tools/paths.py sits one folder below it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def output_domain(domain):
    """The original rule: train_aug outputs go into the `train` folder."""
    return "train" if domain == "train_aug" else domain


def check_tag(tag, flag="--tag"):
    """A tag becomes a folder name: the project's one name check (no separators, not empty, not
    `.` or `..`, at most 255 bytes); a bad one is a usage error naming the flag."""
    return check_output_id(tag, flag, error=UsageError)


def model_dir(pred_dir, tag, flag="--tag"):
    """`{pred_dir}/models/{tag}`; `flag`: the option that gave the tag, named if it is refused."""
    return os.path.join(pred_dir, "models", check_tag(tag, flag))


def model_path(pred_dir, tag, strategy="last", flag="--tag"):
    return os.path.join(
        model_dir(pred_dir, tag, flag), check_output_id(f"{strategy}.pth", "--strategy", error=UsageError)
    )


def output_dir(pred_dir, folder, tag, domain, flag="--tag"):
    """`{pred_dir}/{folder}/{tag}/{domain}` with the train_aug -> train rule; `flag`: the option
    that gave the tag (--seed_tag, --label_tag, ...), named if it is refused."""
    if not folder or os.sep in folder or folder in (".", "..", "models"):
        raise UsageError(f"--folder must be a folder name such as 'predictions' or 'pseudo-labels', got {folder!r}")
    return os.path.join(
        pred_dir, folder, check_tag(tag, flag), check_output_id(output_domain(domain), "--domain", error=UsageError)
    )


def predictions_dir(pred_dir, tag, domain, flag="--tag"):
    return output_dir(pred_dir, "predictions", tag, domain, flag)


def pseudo_labels_dir(pred_dir, tag, domain, flag="--tag"):
    return output_dir(pred_dir, "pseudo-labels", tag, domain, flag)


def evaluation_path(pred_dir, folder, tag, domain):
    """evaluate.py's JSON result, beside the evaluated folder: `{folder}/{tag}/{domain}.eval.json`."""
    return output_dir(pred_dir, folder, tag, domain).rstrip(os.sep) + ".eval.json"
