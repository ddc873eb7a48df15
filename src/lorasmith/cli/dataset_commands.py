"""`lorasmith prepare`, `caption wd14|blip|basic`, `tags` and `doctor`: the dataset tools.

Each handler maps its flags onto one `lorasmith.api` call and prints what comes back.
Exit codes: 0 done, 1 the tool found problems (doctor errors, unreadable images), 2 a mistake.
"""

from __future__ import annotations

import argparse


def _terminal():
    """Progress bars and messages, without one 'wrote caption' line per image."""
    from lorasmith.cli.train_commands import TerminalProgress
    from lorasmith.events import FileWritten

    progress = TerminalProgress()

    def sink(event) -> None:
        if not (isinstance(event, FileWritten) and event.kind == "caption"):
            progress(event)

    sink.close = progress.close  # type: ignore[attr-defined]
    return sink


def _run(call, *args, **kwargs):
    sink = _terminal()
    try:
        return call(*args, events=sink, **kwargs)
    finally:
        sink.close()


# --- handlers ---


def _prepare(args, extra) -> int:
    from lorasmith import api

    _run(api.prepare_dataset, args.source, args.train_data_dir, args.name, args.class_name or "",
         repeats=args.repeats, target_steps=args.target_steps, epochs=args.epochs, batch_size=args.batch_size,
         reg_images_dir=args.reg_src, reg_data_dir=args.reg_data_dir, reg_repeats=args.reg_repeats,
         caption_extension=args.caption_extension, overwrite=args.overwrite)
    return 0


def _write_options(args) -> dict:
    return {"caption_extension": args.caption_extension, "overwrite": args.overwrite,
            "recursive": not args.no_recursive}


def _caption_wd14(args, extra) -> int:
    from lorasmith import api

    summary = _run(api.caption_wd14, args.folder, args.model, general_threshold=args.general_threshold,
                   character_threshold=args.character_threshold, exclude_tags=args.exclude_tags or "",
                   trigger=args.trigger, batch_size=args.batch_size, append=args.append, **_write_options(args))
    return 1 if summary.failed else 0


def _caption_blip(args, extra) -> int:
    from lorasmith import api

    summary = _run(api.caption_blip, args.folder, args.model, num_beams=args.num_beams, min_length=args.min_length,
                   max_length=args.max_length, prefix=args.prefix, trigger=args.trigger, batch_size=args.batch_size,
                   append=args.append, **_write_options(args))
    return 1 if summary.failed else 0


def _caption_basic(args, extra) -> int:
    from lorasmith import api

    _run(api.caption_basic, args.folder, args.caption_text, prefix=args.prefix, postfix=args.postfix,
         trigger=args.trigger, **_write_options(args))
    return 0


def _tags(args, extra) -> int:
    from lorasmith import api

    if not (args.add or args.remove or args.replace or args.move_to_front or args.dedupe):
        table = api.tag_frequencies(args.folder, args.caption_extension)
        shown = list(table.items())[: args.top or None]
        for tag, count in shown:
            print(f"{count:6d}  {tag}")
        print(f"{len(table)} different tags" + (f" (showing {len(shown)})" if len(shown) < len(table) else ""))
        return 0
    _run(api.edit_tags, args.folder, add=args.add, remove=args.remove, replace=args.replace,
         move_to_front=args.move_to_front, dedupe=args.dedupe, dry_run=args.dry_run,
         caption_extension=args.caption_extension)
    return 0


def _doctor(args, extra) -> int:
    from lorasmith import api

    report = _run(api.doctor_dataset, args.folder, resolution=args.resolution,
                  caption_extension=args.caption_extension, min_bucket_reso=args.min_bucket_reso,
                  max_bucket_reso=args.max_bucket_reso, bucket_reso_steps=args.bucket_reso_steps,
                  batch_size=args.batch_size, near_duplicate_distance=args.near_duplicate_distance,
                  max_token_length=args.max_token_length, conditioning_data_dir=args.conditioning_data_dir,
                  alpha_mask=args.alpha_mask)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


# --- parsers ---


def _add_prepare(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare", help="copy raw images into a '<repeats>_<name> <class>' training folder",
        description="Copy (never move or change) the images of SOURCE and their captions into "
        "<train_data_dir>/<repeats>_<name> <class>/. Repeats are given, or computed from a target step "
        "count: steps = images x repeats x epochs / batch size.")
    parser.add_argument("source", help="the folder of raw images")
    parser.add_argument("--train_data_dir", required=True, help="the training folder to create the sub-folder in")
    parser.add_argument("--name", required=True, help="the trigger word (instance prompt), e.g. mychar")
    parser.add_argument("--class", dest="class_name", help="the class prompt, e.g. girl")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--repeats", type=int, help="how many times each image is seen per epoch")
    how.add_argument("--target_steps", type=int, help="choose repeats for about this many steps")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for --target_steps (default 10)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch size for --target_steps (default 1)")
    parser.add_argument("--reg_data_dir", help="regularisation folder to create '<reg_repeats>_<class>' in")
    parser.add_argument("--reg_src", help="the folder of regularisation images to copy")
    parser.add_argument("--reg_repeats", type=int, default=1, help="repeats of the regularisation images")
    parser.add_argument("--caption_extension", default=".txt")
    parser.add_argument("--overwrite", action="store_true",
                        help="add to a non-empty destination folder (existing files are still never replaced)")
    parser.set_defaults(handler=_prepare)


def _add_write_flags(parser: argparse.ArgumentParser, append: bool = True) -> None:
    parser.add_argument("folder", help="the image folder (sub-folders too)")
    parser.add_argument("--caption_extension", default=".txt")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing captions")
    if append:
        existing.add_argument("--append", action="store_true", help="merge new tags into existing captions")
    parser.add_argument("--no_recursive", action="store_true", help="leave sub-folders alone")
    parser.add_argument("--trigger", default="", help="put first in every caption, e.g. mychar")


def _add_caption(subparsers) -> None:
    caption = subparsers.add_parser("caption", help="write captions with WD14 tags, BLIP sentences or fixed text")
    backends = caption.add_subparsers(dest="backend", metavar="BACKEND")
    caption.set_defaults(handler=lambda args, extra: caption.print_help() or 2)
    wd14 = backends.add_parser("wd14", help="booru tags from a WD14 ONNX tagger folder",
                               description="Tag images with a WD14 tagger folder (model.onnx + selected_tags.csv).")
    _add_write_flags(wd14)
    wd14.add_argument("--model", required=True, help="the tagger folder (model.onnx + selected_tags.csv)")
    wd14.add_argument("--general_threshold", type=float, default=0.35)
    wd14.add_argument("--character_threshold", type=float, default=0.85)
    wd14.add_argument("--exclude_tags", help="comma-separated tags never to write")
    wd14.add_argument("--batch_size", type=int, default=8)
    wd14.set_defaults(handler=_caption_wd14)
    blip = backends.add_parser("blip", help="a sentence per image from a local BLIP model folder")
    _add_write_flags(blip)
    blip.add_argument("--model", required=True, help="the BLIP folder (save_pretrained layout)")
    blip.add_argument("--num_beams", type=int, default=3)
    blip.add_argument("--min_length", type=int, default=5)
    blip.add_argument("--max_length", type=int, default=75)
    blip.add_argument("--prefix", default="", help="text before every caption")
    blip.add_argument("--batch_size", type=int, default=4)
    blip.set_defaults(handler=_caption_blip)
    basic = backends.add_parser("basic", help="fixed text for uncaptioned images; prefix/postfix/trigger for all")
    _add_write_flags(basic, append=False)
    basic.add_argument("--caption_text", default="", help="caption for images without one, e.g. 'mychar, 1girl'")
    basic.add_argument("--prefix", default="")
    basic.add_argument("--postfix", default="")
    basic.set_defaults(handler=_caption_basic)


def _add_tags(subparsers) -> None:
    tags = subparsers.add_parser(
        "tags", help="tag frequency table, or edit tags in every caption",
        description="Without edits: how many captions hold each tag. With edits: change every caption, "
        "after a timestamped zip backup in <folder>/.lorasmith_backups (or only show the changes: --dry_run).")
    tags.add_argument("folder")
    tags.add_argument("--caption_extension", default=".txt")
    tags.add_argument("--top", type=int, default=0, help="show only the N most frequent tags")
    tags.add_argument("--add", action="append", default=[], metavar="TAG", help="add at the front (repeatable)")
    tags.add_argument("--remove", action="append", default=[], metavar="TAG")
    tags.add_argument("--replace", action="append", default=[], metavar="OLD=NEW")
    tags.add_argument("--move_to_front", action="append", default=[], metavar="TAG")
    tags.add_argument("--dedupe", action="store_true", help="drop repeated tags")
    tags.add_argument("--dry_run", action="store_true", help="print the changes, write nothing")
    tags.set_defaults(handler=_tags)


def _add_doctor(subparsers) -> None:
    doctor = subparsers.add_parser(
        "doctor", help="check a dataset before training (exit 1 when it has errors)",
        description="Reports unreadable or truncated images, small or extreme pictures, missing captions, "
        "duplicates, each image's bucket, and the tutorial's rank/repeats advice.")
    doctor.add_argument("folder", help="a training folder, a '<repeats>_<name>' folder or a folder of images")
    doctor.add_argument("--resolution", default="512,512")
    doctor.add_argument("--caption_extension", default=".txt")
    doctor.add_argument("--min_bucket_reso", type=int, default=256)
    doctor.add_argument("--max_bucket_reso", type=int, default=1024)
    doctor.add_argument("--bucket_reso_steps", type=int, default=64)
    doctor.add_argument("--batch_size", type=int, default=1, help="for the steps advice")
    doctor.add_argument("--near_duplicate_distance", type=int, default=5,
                        help="perceptual-hash bits two pictures may differ in and still count as near duplicates")
    doctor.add_argument("--max_token_length", type=int, choices=(75, 150, 225), default=75,
                        help="caption tokens the text encoder will read (the training setting)")
    doctor.add_argument("--conditioning_data_dir", default="",
                        help="masked_loss: the folder of mask images, to check that every image has a fitting one")
    doctor.add_argument("--alpha_mask", action="store_true",
                        help="masked_loss from alpha channels: check that every image has one")
    doctor.set_defaults(handler=_doctor)


def add_commands(subparsers) -> None:
    _add_prepare(subparsers)
    _add_caption(subparsers)
    _add_tags(subparsers)
    _add_doctor(subparsers)
