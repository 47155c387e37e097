"""The ``nodepool`` commands for the images of upstream's nodepool-builder:
``image-list``, ``dib-image-list``, ``image-status`` read what the builder
keeps in ZooKeeper; ``image-build``, ``image-pause``/``image-unpause``,
``image-delete`` and ``dib-image-delete`` ask the builder to act."""

from __future__ import annotations

import argparse
import contextlib
import functools
from typing import Any, Iterator

from nodepool import tables
from nodepool.cmd.subcommand import CommandError, add_command, close_store, emit, open_store


def image_snapshot(args: argparse.Namespace):
    from nodepool.zk.image_reader import read_images

    _, store = open_store(args)
    try:
        return read_images(store.client)
    finally:
        close_store(store)


def cmd_image_list(args: argparse.Namespace) -> int:
    emit(args, tables.image_list_view(image_snapshot(args).uploads))
    return 0


def cmd_dib_image_list(args: argparse.Namespace) -> int:
    snap = image_snapshot(args)
    emit(args, tables.dib_image_list_view(snap.builds, snap.paused))
    return 0


def cmd_image_status(args: argparse.Namespace) -> int:
    snap = image_snapshot(args)
    emit(args, tables.image_status_view(snap.images, snap.paused, snap.requests))
    return 0


@contextlib.contextmanager
def image_action(args: argparse.Namespace, check=None) -> Iterator[Any]:
    """The ZooKeeper client for one of the builder's image actions; refusals
    (upstream's) and impossible names are clean errors.  ``check(config)``
    runs before anything is written."""
    from nodepool.zk.image_admin import ImageActionRefused

    config, store = open_store(args)
    try:
        if check is not None:
            check(config)
        yield store.client
    except ImageActionRefused as e:
        raise CommandError(str(e)) from None
    except ValueError as e:  # a name that cannot be a znode (paths._child)
        raise CommandError(str(e)) from None
    finally:
        close_store(store)


def cmd_image_build(args: argparse.Namespace) -> int:
    from nodepool.zk.image_admin import request_build

    def buildable(config) -> None:
        # As upstream: only a diskimage the builder builds, and not a paused one.
        diskimage = config.diskimages.get(args.image)
        if diskimage is None:
            raise CommandError(f"Trying to build a non disk-image-builder image: {args.image} "
                               f"(not in {args.config}'s diskimages)")
        if diskimage.pause:
            raise CommandError(f"Skipping build request for image {args.image}; paused "
                               f"(pause: true in {args.config})")

    with image_action(args, buildable) as client:
        request_build(client, args.image)
    return 0


def cmd_image_pause(args: argparse.Namespace) -> int:
    from nodepool.zk.image_admin import set_paused

    with image_action(args) as client:
        set_paused(client, args.image, args.command == "image-pause")
    return 0


def cmd_image_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.image_admin import mark_upload_deleting

    with image_action(args) as client:
        mark_upload_deleting(client, args.image, args.build_id, args.provider, args.upload_id)
    return 0


def cmd_dib_image_delete(args: argparse.Namespace) -> int:
    from nodepool.zk.image_admin import mark_build_deleting

    image, sep, build_id = args.id.rpartition("-")
    if not sep or not image or not build_id:
        raise CommandError(f"{args.id!r} is not a dib image id such as ubuntu-jammy-"
                           "0123456789abcdef (see 'nodepool dib-image-list')")
    with image_action(args) as client:
        mark_build_deleting(client, image, build_id)
    return 0


def add_image_commands(sub: Any) -> None:
    """The image commands, in the order the help lists them."""
    command = functools.partial(add_command, sub)
    command("image-list", cmd_image_list, "list image uploads (written by nodepool-builder)")
    command("dib-image-list", cmd_dib_image_list,
            "list image builds (written by nodepool-builder)")
    command("image-status", cmd_image_status, "show each image's pause flag and build request")
    p = command("image-build", cmd_image_build, "ask nodepool-builder to build an image",
                "Ask upstream's nodepool-builder for a new build of a diskimage of "
                "nodepool.yaml (a request-build znode); the builder builds and uploads it.",
                json_option=False)
    p.add_argument("image", help="diskimage name")
    p = command("image-pause", cmd_image_pause, "pause an image's builds",
                "Set the pause flag nodepool-builder reads: no builds or uploads of the "
                "image until 'image-unpause'.", json_option=False)
    p.add_argument("image", help="image name")
    p = command("image-unpause", cmd_image_pause, "unpause an image's builds",
                json_option=False)
    p.add_argument("image", help="image name")
    p = command("image-delete", cmd_image_delete, "delete an image upload",
                "Mark one upload 'deleting'; nodepool-builder deletes it from the cloud "
                "and then its record (see 'nodepool image-list').", json_option=False)
    p.add_argument("--provider", required=True, help="provider name")
    p.add_argument("--image", required=True, help="image name")
    p.add_argument("--build-id", required=True, help="image build id")
    p.add_argument("--upload-id", required=True, help="image upload id")
    p = command("dib-image-delete", cmd_dib_image_delete,
                "delete an image build and all its uploads",
                "Mark a build 'deleting'; nodepool-builder deletes its uploads from the "
                "clouds, its files, then its records.", json_option=False)
    p.add_argument("id", help="dib image id, <image>-<build id> (see 'nodepool "
                              "dib-image-list')")
