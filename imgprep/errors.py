"""Library exceptions: a message a user can act on, turned into one line by the CLI."""


class ImgprepError(Exception):
    """A user-facing error: bad input, bad flag, or an output folder in the wrong state."""


class DecodeError(ImgprepError):
    """A file that cannot be decoded into an image; the file is rejected, the run goes on."""


class NotAnImage(ImgprepError):
    """A file whose content is not an image format at all; it is skipped and counted."""
