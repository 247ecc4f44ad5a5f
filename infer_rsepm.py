"""Seed inference with a single-stage RS+EPM network (docs/formats.md#inference).

    python3 infer_rsepm.py --root_dir ../VOC2012/ --dataset VOC --domain validation \
        --backbone resnet50 --tag "ResNet50@VOC@RS+EPM@Official" --conf_th 0.34

Writes experiments/predictions/{tag}/{domain}/{ID}.pkl (rsepm seed dialect): the decoder's
foreground probabilities of the present classes, averaged over 4 scales x 2 flips. Present
classes are the ground-truth tags (--conf_th -1) or the classes scoring >= --conf_th.
"""

from core.dataset_layout import load_dataset_info
from core.networks import RSEPM
from tools.args import cli, compatibility_group, conf_threshold, str2bool
from tools.seeds.infer_loop import inference_parser, resolve_network_args, run_inference, weights_path

DEFAULT_TAG = "ResNet50@RS(ep=5, cam=1.0, seg=1.0)+CF(c=0.55, u=0.10)+CM(ep=15, cls=1.0, cam=1.0, seg=1.0)"


def get_args_parser():
    parser = inference_parser(__doc__.splitlines()[0], backbone="resnet50", tag=DEFAULT_TAG)
    parser.add_argument(
        "--conf_th",
        default=-1,
        type=conf_threshold,
        help="-1: use the ground-truth tags; else keep classes with score >= conf_th",
    )
    parser.add_argument(
        "--class_fn", default="sigmoid", choices=("sigmoid", "softmax"), help="class score of the logits, for --conf_th"
    )
    parser.add_argument(
        "--same", default=True, type=str2bool, help="resize decoder logits to each pass's input size before the softmax"
    )
    parser.add_argument(
        "--interpolation",
        default="nearest",
        choices=("nearest", "bilinear"),
        help="resizing mode of the decoder outputs",
    )
    parser.add_argument(
        "--seed_source",
        default="decoder",
        choices=("decoder", "cam"),
        help="decoder: RS+EPM seeds (the published method); cam: the classifier's CAMs "
        "(ReLU, max-normalised), the classic CAM seed, for comparison",
    )
    # Accepted so the original commands run unchanged; they selected training-time options
    # (pooling, SCG thresholds, unused CAM/SCG outputs) and have no effect on the seeds.
    compatibility = compatibility_group(parser)
    for name, default, kind in (
        ("pool_type", "gap", str),
        ("use_cam", True, str2bool),
        ("use_scg", True, str2bool),
        ("first_th", 0.50, float),
        ("second_th", 0.10, float),
        ("foreground_th", 0.30, float),
        ("background_th", 0.05, float),
        ("end_th", 0.70, float),
    ):
        compatibility.add_argument(f"--{name}", default=default, type=kind, help="accepted for compatibility; unused")
    return parser


def main(args):
    resolve_network_args(args, weights_path(args), {"backbone": "resnet50"})
    info = load_dataset_info(args.dataset)
    network = RSEPM(backbone=args.backbone, num_classes=info.num_classes, output_stride=16)
    kind = "rsepm" if args.seed_source == "decoder" else "cam"
    return run_inference(args, network, kind, same=args.same, interpolation=args.interpolation, class_fn=args.class_fn)


if __name__ == "__main__":
    cli(main, get_args_parser())
