"""Seed inference with a retrained segmentation network, DeepLabV3+ or DeepLabV2 (docs/formats.md#inference).

    python3 infer_seg.py --root_dir ../VOC2012/ --dataset VOC --domain validation \
        --backbone resnet101 --decoder deeplabv3+ --tag "ResNet101@VOC@RS+EPM@MS@Official"

Writes experiments/predictions/{tag}/{domain}/{ID}.pkl (seg seed dialect): the softmax
probabilities, averaged over 4 scales x 2 flips, of every class (background included) whose
maximum probability reaches 0.05.
"""

from core.dataset_layout import load_dataset_info
from core.networks import build_network
from tools.args import cli
from tools.seeds.infer_loop import inference_parser, resolve_network_args, run_inference, weights_path

DEFAULT_TAG = "ResNet101@VOC@DeepLabv3+@MS@RSCM"


def get_args_parser():
    parser = inference_parser(__doc__.splitlines()[0], backbone="resnet101", tag=DEFAULT_TAG)
    parser.add_argument(
        "--decoder",
        default=None,
        choices=("deeplabv3+", "deeplabv2"),
        help="segmentation network; default: the one config.json beside the weights records, else deeplabv3+",
    )
    parser.add_argument(
        "--output_stride",
        default=None,
        type=int,
        choices=(8, 16),
        help="backbone output stride; default: the one config.json beside the weights records, else 8",
    )
    return parser


# The flags that shape the network, with the values used when no training record says otherwise.
NETWORK_DEFAULTS = {"backbone": "resnet101", "decoder": "deeplabv3+", "output_stride": 8}


def main(args):
    resolve_network_args(args, weights_path(args), NETWORK_DEFAULTS)
    info = load_dataset_info(args.dataset)
    network = build_network(args.decoder, args.backbone, info.num_classes, output_stride=args.output_stride)
    return run_inference(args, network, "seg", same=True, interpolation="bilinear")


if __name__ == "__main__":
    cli(main, get_args_parser())
