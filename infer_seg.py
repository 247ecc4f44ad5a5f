"""Seed inference with a retrained segmentation network, DeepLabV3+ or DeepLabV2 (docs/formats.md#inference).

    python3 infer_seg.py --root_dir ../VOC2012/ --dataset VOC --domain validation \
        --backbone resnet101 --decoder deeplabv3+ --tag "ResNet101@VOC@RS+EPM@MS@Official"

Writes experiments/predictions/{tag}/{domain}/{ID}.pkl (seg seed dialect): the softmax
probabilities, averaged over 4 scales x 2 flips, of every class (background included) whose
maximum probability reaches 0.05.
"""
from core.datasets import load_dataset_info
from core.networks import build_network
from tools.args import cli
from tools.seeds.inference import inference_parser, run_inference

DEFAULT_TAG = "ResNet101@VOC@DeepLabv3+@MS@RSCM"


def get_args_parser():
    parser = inference_parser(__doc__.splitlines()[0], backbone="resnet101", tag=DEFAULT_TAG)
    parser.add_argument("--decoder", default="deeplabv3+", choices=("deeplabv3+", "deeplabv2"),
                        help="segmentation network")
    parser.add_argument("--output_stride", default=8, type=int, choices=(8, 16), help="backbone output stride")
    return parser


def main(args):
    info = load_dataset_info(args.dataset)
    network = build_network(args.decoder, args.backbone, info.num_classes, output_stride=args.output_stride)
    return run_inference(args, network, "seg", same=True, interpolation="bilinear")


if __name__ == "__main__":
    cli(main, get_args_parser())
