"""Stand-in for ImageNet pretraining on the toy dataset: a multi-label classifier on a separate set.

    python tools/toy/pretrain_toy.py --root_dir toy_data/PRETRAIN --out toy_data/resnet18_toy.pth

The paper starts both training stages from ImageNet weights (docs/method.md#network). The toy
run cannot download them, so it trains the ResNet-18 backbone here on image-level labels only
(multi-label soft-margin loss on global-average-pooled features, as a classification
pretraining does) on a toy set generated with a *different* generator seed than the experiment's
own data: no image and no pixel label of the experiment reaches this stage, and no pixel label of
any set is read here (only the xml tags). The output is the backbone's state_dict in torchvision's
key layout, without `fc.*`, which `train_rsepm.py` and `train_seg.py` load with `--pretrained PATH`.
After training, the classifier tags the images of `--val_domain` (a held-out split of the same
pretraining set, xml tags only) and reports the average precision per class; the settings, the
loss per epoch and that score are saved next to the weights (OUT with .json for its extension).
Deterministic on one machine for a fixed seed and thread count (CPU kernels, per-sample
augmentation seeds, sample order from (seed, epoch)).
"""

import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image  # noqa: E402
from core.errors import DatasetError, NonFiniteError  # noqa: E402
from core.io import atomic_output, write_json  # noqa: E402
from core.progress import progress  # noqa: E402
from core.resnet import ARCHITECTURES, build_resnet  # noqa: E402
from core.train_datasets import ClassificationDataset  # noqa: E402
from core.transforms import TrainTransform  # noqa: E402
from tools.args import cli, deprecated_alias, make_parser  # noqa: E402
from tools.engine import data_loading, distributed  # noqa: E402
from tools.engine.script_parts import add_color_jitter_arg  # noqa: E402
from tools.metrics import average_precision  # noqa: E402


class Classifier(torch.nn.Module):
    """Backbone + global average pooling + linear layer: images (B, 3, S, S) -> logits (B, C)."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = build_resnet(backbone, output_stride=16, pretrained=None)
        channels = self.backbone.layer4[-1].conv1.in_channels  # 512 (resnet18/34) or 2048
        self.fc = torch.nn.Linear(channels, num_classes)

    def forward(self, images):
        features = self.backbone(images)[-1]
        return self.fc(features.mean(dim=(2, 3)))


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--root_dir", required=True, help="toy dataset root (its train_aug split is used)")
    parser.add_argument("--dataset", default="TOY", help="class list name (data/NAME.json)")
    parser.add_argument("--out", required=True, help="backbone state_dict file to write")
    parser.add_argument(
        "--backbone",
        default="resnet18",
        choices=sorted(ARCHITECTURES),
        help="backbone to pretrain (the training stages must use the same)",
    )
    parser.add_argument("--max_epoch", default=6, type=int, help="passes over the pretraining set")
    deprecated_alias(parser, "--epochs", "--max_epoch")  # the training scripts' name of the same setting
    parser.add_argument("--batch_size", default=16, type=int, help="images per iteration")
    parser.add_argument("--lr", default=0.05, type=float, help="initial SGD learning rate (poly decay to 0)")
    parser.add_argument("--wd", default=1e-4, type=float, help="SGD weight decay")
    parser.add_argument("--crop_size", default=96, type=int, help="square training crop in pixels")
    parser.add_argument(
        "--min_image_size", default=96, type=int, help="smallest random long side (rescale before the crop)"
    )
    parser.add_argument("--max_image_size", default=144, type=int, help="largest random long side")
    add_color_jitter_arg(parser)
    parser.add_argument("--num_workers", default=2, type=int, help="DataLoader worker processes")
    parser.add_argument("--seed", default=0, type=int, help="seed of initialisation, data order and augmentation")
    parser.add_argument(
        "--val_domain",
        default="validation",
        help="held-out split of --root_dir whose tags score the classifier (average precision); "
        "skipped when the split is absent; none = never",
    )
    return parser


def record_path(out):
    """The JSON record saved beside the weights: OUT with .json for its extension."""
    return os.path.splitext(out)[0] + ".json"


def record_settings(args):
    """The settings as the record stores them: every argument but --out, in JSON's types (a tuple
    becomes a list), so that a record read back compares equal to the settings of a new run."""
    return json.loads(json.dumps({k: v for k, v in vars(args).items() if k != "out"}))


# Files whose content makes the pretrained backbone besides the modules pretrain_toy.py loads: the
# generator of the pretraining set (run by toy_pipeline.py before this) and the class list.
RECIPE_FILES = ("tools/builders/make_toy_dataset.py", "data/TOY.json")


def source_digests(extra=RECIPE_FILES):
    """{repository-relative path: sha256} of every project source file this process has loaded
    (sys.modules, files under the repository) plus `extra`: the code that made the weights, so a
    backbone cached by other code is recognised (toy_pipeline.py compares them before reusing it)."""
    import hashlib

    from tools.paths import REPO_ROOT

    root = os.path.realpath(REPO_ROOT)
    paths = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and path.endswith(".py") and os.path.isabs(path):
            real = os.path.realpath(path)
            if (
                os.path.isfile(real)
                and os.path.commonpath([real, root]) == root
                and os.sep + ".venv" + os.sep not in real[len(root) :]
            ):
                paths.add(os.path.relpath(real, root))
    paths.update(extra)
    digests = {}
    for relative in sorted(paths):
        with open(os.path.join(root, relative), "rb") as f:
            digests[relative.replace(os.sep, "/")] = hashlib.sha256(f.read()).hexdigest()
    return digests


def pretrain(args):
    """Train the classifier; returns (the trained Classifier, per-epoch mean losses)."""
    distributed.seed_everything(args.seed)
    info = load_dataset_info(args.dataset)
    layout = SeedLayout(args.root_dir, "train_aug", info, require_xml=True)
    dataset = ClassificationDataset(
        layout,
        TrainTransform(args.crop_size, args.min_image_size, args.max_image_size, jitter=args.color_jitter),
        seed=args.seed,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampler = data_loading.EpochSampler(len(dataset), args.seed, shuffle=True)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.num_workers,
        drop_last=True,
        worker_init_fn=data_loading.seed_worker,
        generator=torch.Generator(),
    )
    if len(loader) == 0:
        raise DatasetError(
            f"{layout.split_dir}: {len(dataset)} images give no batch of {args.batch_size}; lower --batch_size"
        )
    model = Classifier(args.backbone, info.num_foreground).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.wd)
    total = args.max_epoch * len(loader)
    # Poly decay as in the training scripts (docs/method.md#optimisation).
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: (1 - i / total) ** 0.9)
    losses = []
    bar = progress(total=total, desc="pretrain_toy")
    for epoch in range(args.max_epoch):
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader.generator.manual_seed(distributed.derive_seed(args.seed, epoch))
        model.train()
        running = []
        for batch in loader:
            images, tags = batch["image"].to(device), batch["tags"].to(device)
            # tags (B, C) multi-hot over the foreground classes; background is not a class here.
            loss = F.multilabel_soft_margin_loss(model(images), tags)
            if not math.isfinite(loss.item()):
                raise NonFiniteError(f"non-finite loss in epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")  # first: a progress line printed by update shows it
            bar.update(1)
        losses.append(sum(running) / len(running))
    bar.close()
    return model, losses


@torch.no_grad()
def tag_scores(model, layout):
    """Image-level scores of every image of `layout` at its full size: (scores (N, C), labels (N, C))."""
    model.eval()
    device = next(model.parameters()).device
    scores, labels = [], []
    for image_id in progress(layout.ids, desc="pretrain_toy: scoring", unit="img"):
        image = normalize_image(layout.read_image(image_id))[None].to(device)
        scores.append(torch.sigmoid(model(image))[0].cpu())
        labels.append(torch.from_numpy(layout.multi_hot(layout.read_tags(image_id, required=True))))
    return torch.stack(scores).numpy(), torch.stack(labels).numpy()


def validation_scores(model, args, info):
    """{domain, num_images, AP per class (%), mAP (%)} on --val_domain, or None when there is none."""
    if args.val_domain == "none" or not os.path.isdir(os.path.join(args.root_dir, args.val_domain, "image")):
        return None
    layout = SeedLayout(args.root_dir, args.val_domain, info, require_xml=True)
    scores, labels = tag_scores(model, layout)
    ap = {name: 100 * average_precision(scores[:, c], labels[:, c]) for c, name in enumerate(info.class_names[1:])}
    defined = [v for v in ap.values() if not math.isnan(v)]
    return {
        "domain": args.val_domain,
        "num_images": len(layout.ids),
        "AP": ap,
        "mAP": sum(defined) / len(defined) if defined else float("nan"),
    }


def main(args):
    start = time.perf_counter()
    model, losses = pretrain(args)
    seconds = time.perf_counter() - start
    validation = validation_scores(model, args, load_dataset_info(args.dataset))
    state = {k: v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # The record first: a weights file without its record is made again by toy_pipeline.py.
    write_json(
        record_path(args.out),
        {
            "settings": record_settings(args),
            "code": source_digests(),
            "loss_per_epoch": losses,
            "seconds": round(seconds, 1),
            "validation": validation,
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            },
        },
    )
    with atomic_output(args.out, "wb") as f:
        torch.save(state, f)
    scored = (
        ""
        if validation is None
        else (
            f"; {validation['domain']} ({validation['num_images']} images) AP "
            + " ".join(f"{k} {v:.1f}" for k, v in validation["AP"].items())
            + f", mAP {validation['mAP']:.1f}"
        )
    )
    print(
        f"pretrain_toy: loss per epoch {', '.join(f'{v:.3f}' for v in losses)}; "
        f"{seconds:.0f} s{scored}; backbone saved to {args.out}, its record to {record_path(args.out)}"
    )
    return {"weights": args.out, "record": record_path(args.out), "loss_per_epoch": losses, "validation": validation}


if __name__ == "__main__":
    cli(main, get_args_parser())
