"""Not built yet."""

from somtok.errors import SomtokError


def add_arguments(parser):
    pass


def run(args):
    raise SomtokError("this command is not built yet")
