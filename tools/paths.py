"""The experiment folder (docs/formats.md#experiment-folder), one definition for every script.

    {pred_dir}/models/{tag}/{strategy}.pth
    {pred_dir}/predictions/{tag}/{domain}/{ID}.pkl
    {pred_dir}/pseudo-labels/{tag}/{domain}/{ID}.png
"""
import os

from core.errors import UsageError

DEFAULT_PRED_DIR = "./experiments/"
# The one definition of the repository root: tools/paths.py sits one folder below it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def output_domain(domain):
    """The original rule: train_aug outputs go into the `train` folder."""
    return "train" if domain == "train_aug" else domain


def model_dir(pred_dir, tag):
    return os.path.join(pred_dir, "models", tag)


def model_path(pred_dir, tag, strategy="last"):
    return os.path.join(model_dir(pred_dir, tag), f"{strategy}.pth")


def output_dir(pred_dir, folder, tag, domain):
    """`{pred_dir}/{folder}/{tag}/{domain}` with the train_aug -> train rule."""
    if not folder or os.sep in folder or folder in (".", "..", "models"):
        raise UsageError(f"--folder must be a folder name such as 'predictions' or 'pseudo-labels', got {folder!r}")
    return os.path.join(pred_dir, folder, tag, output_domain(domain))


def predictions_dir(pred_dir, tag, domain):
    return output_dir(pred_dir, "predictions", tag, domain)


def pseudo_labels_dir(pred_dir, tag, domain):
    return output_dir(pred_dir, "pseudo-labels", tag, domain)


def evaluation_path(pred_dir, folder, tag, domain):
    """evaluate.py's JSON result, beside the evaluated folder: `{folder}/{tag}/{domain}.eval.json`."""
    return output_dir(pred_dir, folder, tag, domain).rstrip(os.sep) + ".eval.json"
