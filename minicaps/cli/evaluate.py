"""minicaps evaluate: a checkpoint's accuracy and losses on a test set, per class too."""
from minicaps.cli.checkpoints import load_checkpoint
from minicaps.cli.evaluation_data import read_test_set
from minicaps.cli.options import (WEIGHTS, DefaultsHelpFormatter,
                                  add_checkpoint_options, add_data_options, add_device_option,
                                  add_folder_options, add_weights_option, positive_int)
from minicaps.data.registry import dataset_names


def cmd_evaluate(args):
    from minicaps.nn.registry import model_kind
    from minicaps.training.run import evaluate
    ckpt = load_checkpoint(args)
    model, weights = ckpt.model_with(args.weights)
    test, classes, dataset = read_test_set(args, ckpt)
    pairs = test.targets is not None
    model.check_batch_fits(max(1, min(args.batch_size, len(test.labels))), training=False)
    scores = evaluate(model, test.images, test.labels, batch_size=args.batch_size,
                      progress=not args.no_progress, desc="test set", per_class=not pairs,
                      targets=test.targets)
    within = ckpt.extra.get("mid_epoch")
    when = (f"step {ckpt.step}, in epoch {within}" if within
            else f"epoch {ckpt.epoch}, step {ckpt.step}")
    print(f"{args.checkpoint} ({when}, {WEIGHTS[weights]}) on "
          f"{scores['n']} {dataset} {args.split} {'pairs' if pairs else 'images'}:")
    print(f"  accuracy            {scores['accuracy']:.4f} "
          f"({round(scores['accuracy'] * scores['n'])}/{scores['n']}, "
          f"error {100 * (1 - scores['accuracy']):.2f}%)"
          + (f"; a pair is right when its two digits are the two "
             f"{'longest capsules' if model_kind(model) == 'capsnet' else 'most probable classes'}"
             if pairs else ""))
    if pairs:
        print(f"  one or more right   {scores['one_or_more']:.4f}")
    if "cross_entropy" in scores:                 # the CNN baseline: its whole loss
        print(f"  cross-entropy       {scores['cross_entropy']:.5f} (the CNN baseline's loss)")
    else:
        print(f"  margin loss         {scores['margin_loss']:.5f}")
        if scores["reconstruction_loss"] is not None:
            print(f"  reconstruction loss {scores['reconstruction_loss']:.4f} "
                  + ("(sum of squared pixel errors per pair, each digit from its label's "
                     "capsule)" if pairs else "(sum of squared pixel errors per image, "
                     "decoder masked by the prediction)"))
        print(f"  total loss          {scores['loss']:.5f}")
    if classes and not pairs:
        width = max(len(str(c)) for c in classes)
        print(f"  per class: {'class':{width}}  images  accuracy")
        for name, (n, accuracy) in zip(classes, scores["per_class"]):
            shown = f"{accuracy:.4f}" if n else "-"
            print(f"             {str(name):{width}}  {n:6d}  {shown}")
    return 0


def add_parser(sub):
    """The evaluate command's parser."""
    p = sub.add_parser(
        "evaluate", formatter_class=DefaultsHelpFormatter, help="test accuracy and losses of a checkpoint",
        description="Load a checkpoint and print its accuracy, margin loss and reconstruction "
                    "loss on the test set (decoder masked by the predicted class); for a CNN "
                    "baseline its accuracy and cross-entropy.")
    add_checkpoint_options(p)
    p.add_argument("--dataset", choices=dataset_names(), default=None,
                   help="which test set (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="validation: the run's own validation images, those best.npz was "
                        "chosen on (expanded MNIST's test digits for the affnist sets; the "
                        "--val-size images held out of training otherwise)")
    add_data_options(p)
    add_folder_options(p)
    add_device_option(p)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_weights_option(p)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (without a terminal: no progress lines, which otherwise come every 30 s)")
    p.set_defaults(func=cmd_evaluate)
