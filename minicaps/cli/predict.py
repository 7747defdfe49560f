"""minicaps predict: pictures prepared as the network's training images were, then
classified: one picture's every class, or a line per picture for many."""
import sys
from pathlib import Path

from minicaps.cli.checkpoints import load_checkpoint
from minicaps.cli.options import add_checkpoint_options, add_device_option, add_weights_option


def cmd_predict(args):
    from minicaps.backend import to_numpy
    from minicaps.data.pictures import save_gray
    from minicaps.nn.registry import model_kind
    if args.pretrained and args.checkpoint is not None:    # then every positional is a picture
        args.image, args.checkpoint = [args.checkpoint, *args.image], None
    ckpt = load_checkpoint(args)
    model, _ = ckpt.model_with(args.weights)
    capsnet = model_kind(model) == "capsnet"
    if args.save_reconstruction is not None and not capsnet:
        raise ValueError(f"{args.checkpoint} holds the CNN baseline, which has no decoder: "
                         f"there is no reconstruction to save (--save-reconstruction needs a "
                         f"CapsNet with its decoder)")
    if args.save_reconstruction is not None and not model.config.use_decoder:
        raise ValueError(f"{args.checkpoint}: this network has no decoder to reconstruct with")
    if args.save_reconstruction is not None:
        _picture_target(args.save_reconstruction, [args.checkpoint, *args.image])
    from minicaps.training.config import settings_of
    settings = settings_of(ckpt)
    classes = settings.classes or [str(j) for j in range(model.config.num_classes)]
    pictures = _pictures(args.image)
    if len(pictures) > 1 or Path(args.image[0]).is_dir():
        if args.save_reconstruction is not None:
            raise ValueError("--save-reconstruction goes with one picture: give one IMAGE")
        return _predict_many(model, pictures, classes, settings, capsnet)
    x = _prepared(pictures[0], model, settings)[None].astype(model.dtype)
    if args.save_reconstruction is not None:
        out, _ = model.forward(x)
        lengths = to_numpy(out["lengths"])[0]
    else:                       # the capsules' lengths, or the CNN's softmax probabilities
        lengths = model.predict_lengths(x, batch_size=1)[0]
    pred = int(lengths.argmax())
    print(f"{pictures[0]}: predicted {classes[pred]}"
          + (f" (class {pred})" if classes[pred] != str(pred) else ""))
    width = max(5, max(len(str(c)) for c in classes))
    print(f"{'class':>{width}}  {'length' if capsnet else 'probability'}")
    for j, length in enumerate(lengths):
        bar = "#" * round(40 * min(float(length), 1.0))
        print(f"{str(classes[j]):>{width}}  {length:.4f}  {bar}{'  <- predicted' if j == pred else ''}")
    if args.save_reconstruction is not None:
        H, W, C = model.config.input_shape
        recon = to_numpy(out["reconstruction"])[0].reshape(H, W, C)
        path = save_gray([x[0], recon], args.save_reconstruction,
                         inputs=[args.checkpoint, pictures[0]])
        print(f"wrote {path} (what the network saw, then its reconstruction)")
    return 0


def _picture_target(path, inputs):
    """Refuse, before any work, a --save-reconstruction PATH whose name does not end in
    .png or that holds something other than a PNG (files.png_file), or that
    checkpoint.replace_file would refuse (files.writable_file)."""
    from minicaps.io.files import png_file, writable_file
    png_file(path, "--save-reconstruction")
    writable_file(path, inputs)


def _pictures(names):
    """The picture files that predict's IMAGE arguments name: each file, and every .png,
    .jpg or .jpeg under a folder (folder.picture_files), in order."""
    from minicaps.data.folder_files import picture_files
    pictures = []
    for name in names:
        path = Path(name)
        if not path.is_dir():
            pictures.append(path)          # a missing file is said when it is read
            continue
        found = picture_files(path)
        if not found:
            raise ValueError(f"{path} holds no .png, .jpg or .jpeg pictures")
        pictures += found
    return pictures


def _prepared(path, model, settings):
    """One picture as the network's data was made: as MNIST's digits for a network trained
    on MNIST or Fashion-MNIST, else as its image folder or dataset was read (_picture)."""
    from minicaps.data.pictures import load_digit
    digits = (settings.dataset or "mnist") in ("mnist", "fashion-mnist")
    if digits and not settings.data_info.get("folder"):
        return load_digit(path, model.config.input_shape)
    return _picture(path, model.config, settings)


def _predict_many(model, pictures, classes, settings, capsnet, batch=256):
    """predict on many pictures: a line each (the picture, its class, the winning length or
    probability), in batches; a picture that cannot be read is said on stderr and the
    others go on (exit status 2 if any could not be read)."""
    import numpy as np
    what, failed = "length" if capsnet else "probability", 0
    for start in range(0, len(pictures), batch):
        read, xs = [], []
        for path in pictures[start:start + batch]:
            try:
                xs.append(_prepared(path, model, settings))
                read.append(path)
            except (ValueError, OSError) as e:
                from minicaps.data.folder import printable
                print(f"minicaps predict: error: {printable(str(e))}", file=sys.stderr)
                failed += 1
        if not xs:
            continue
        lengths = model.predict_lengths(np.stack(xs).astype(model.dtype), batch_size=len(xs))
        for path, row in zip(read, lengths):
            j = int(row.argmax())
            print(f"{path}\t{classes[j]}\t{what} {row[j]:.4f}")
    if failed:
        print(f"minicaps predict: {failed} of {len(pictures)} pictures could not be read",
              file=sys.stderr)
    return 2 if failed else 0


def _picture(path, config, settings):
    """A picture as the network's test images were made: resized to the size its data was
    read at (its input size without one), in its colour, centre-cropped with a crop;
    (H, W, C) floats in [0, 1]."""
    from minicaps.data.augment import center_crop
    from minicaps.data.folder import read_image
    H, W, C = config.input_shape
    size = tuple(settings.data_info.get("image_size") or (H, W))
    if settings.crop:
        size = (max(size[0], H), max(size[1], W))
    pixels = read_image(path, size, "rgb" if C == 3 else "gray")
    if C not in (1, 3):
        raise ValueError(f"this network reads {C}-channel images, and a picture file gives "
                         f"1 (gray) or 3 (RGB)")
    pixels = center_crop(pixels[None], settings.crop)[0]
    return pixels.reshape(H, W, C) / 255.0


def add_parser(sub):
    """The predict command's parser."""
    p = sub.add_parser(
        "predict", help="classify your own picture (a digit, or an image like the training data)",
        description="Read a picture (PNG or anything Pillow reads; any size, gray, RGB or "
                    "RGBA), prepare it as the network's training images were (for MNIST and "
                    "Fashion-MNIST: gray, white ink on black, cropped to the ink, fitted into "
                    "20x20 keeping the aspect ratio, centred by centre of mass in 28x28; for "
                    "other data: resized to its size and colour, centre-cropped where it was "
                    "cropped) and print the length of every class capsule (a CNN baseline: "
                    "the probability of every class) and the predicted class, by name. Needs "
                    "Pillow: pip install \"minicaps[viz]\".")
    add_checkpoint_options(p)
    p.add_argument("image", metavar="IMAGE", nargs="+",
                   help="the picture, e.g. digit.png; or several pictures, or folders of them "
                        "(then a line each: the picture, its class and the winning length)")
    p.add_argument("--save-reconstruction", metavar="PNG", default=None,
                   help="also write what the network saw beside the decoder's reconstruction "
                        "(masked by the predicted class) to this PNG, 4x enlarged (a CapsNet "
                        "with a decoder; a CNN baseline has none)")
    add_device_option(p)
    add_weights_option(p)
    p.set_defaults(func=cmd_predict)
