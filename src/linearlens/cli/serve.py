"""``linearlens serve``: the explorer web app for a network and a set of images (see docs/explorer.md)."""

from __future__ import annotations

import argparse

from . import CommandError


def run(args: argparse.Namespace) -> int:
    import torch

    from ..explorer import Explorer, make_server
    from ..explorer.atlas import NeuronAtlas
    from ..explorer.loading import atlas_cache_dir, embedded_examples, load_image_files, load_network

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 <= args.port < 65536:
        raise CommandError(f"--port must be between 0 and 65535, got {args.port}")
    model, classes, description = load_network(args.model)
    explorer = Explorer(model, class_names=classes, scores=args.scores, layer=args.layer)
    images = [(n, x, None) for n, x in load_image_files(args.images)] if args.images else embedded_examples()
    for name, image, label in images:
        explorer.add_image(image, name, label)
    if args.atlas_layer:
        explorer.atlas = NeuronAtlas.compute(model, args.atlas_layer, args.atlas_data, limit=args.atlas_images,
                                             cache_dir=atlas_cache_dir(args.model, args.cache), progress=True)
    try:
        server = make_server(explorer, args.host, args.port)
    except OSError as err:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from None
    print(f"{description}: {len(explorer.images)} image(s)")
    print(f"serving on http://{args.host}:{server.server_port}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="the explorer: live rows, columns and explanations in the browser")
    parser.add_argument("model", metavar="CHECKPOINT_OR_MODEL",
                        help="run directory of 'linearlens train', a registered model name, or file.py:factory")
    parser.add_argument("images", nargs="*", metavar="IMAGES", help="image files (default: embedded CIFAR-10 tests)")
    parser.add_argument("--port", type=int, default=8765, help="port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--layer", help="spatial layer whose units the hover explains (classifiers)")
    parser.add_argument("--scores", default="sigmoid", choices=("sigmoid", "softmax", "raw"),
                        help="how class outputs are shown (sigmoid: BCE-trained networks)")
    parser.add_argument("--atlas-layer", help="compute a neuron atlas of this layer (browsable in the page)")
    parser.add_argument("--atlas-data", default="all", help="'embedded', a CIFAR-10 folder, or 'all' (both)")
    parser.add_argument("--atlas-images", type=int, default=None, help="use at most this many images for the atlas")
    parser.add_argument("--cache", help="folder for cached atlases (default: CHECKPOINT/atlas-cache)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, 2 OpenMP threads made hovers slower)")
    parser.set_defaults(func=run)
