"""Errors that end a command with one readable line instead of a traceback."""


class SetupError(Exception):
    """Host setup or image build cannot go on; the message names what to fix."""
