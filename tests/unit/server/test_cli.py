"""The `darkroom` command's parser: where its options may go."""

from __future__ import annotations

import pytest

from server.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        ["workflows", "--url", "U", "--key", "K", "list"],
        ["workflows", "list", "--url", "U", "--key", "K"],
        ["workflows", "--url", "U", "list", "--key", "K"],
    ],
)
def test_workflows_takes_url_and_key_before_or_after_its_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.url, args.key, args.action) == ("U", "K", "list")


def test_publish_takes_url_and_key_after_its_file_and_name() -> None:
    args = build_parser().parse_args(
        ["workflows", "publish", "api.json", "--name", "me/x", "--url", "U", "--key", "K"]
    )
    assert (args.file, args.name, args.url, args.key) == ("api.json", "me/x", "U", "K")


def test_without_url_or_key_both_are_none() -> None:
    args = build_parser().parse_args(["workflows", "list"])
    assert (args.url, args.key) == (None, None)
