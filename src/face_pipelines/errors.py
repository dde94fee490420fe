"""Errors that tell the user which file, record or parameter is wrong and what was expected."""


class FacePipelinesError(Exception):
    """Base class for errors raised by face_pipelines."""


class ParameterError(FacePipelinesError, ValueError):
    """A parameter is missing, unknown or of the wrong type/range."""


class DataError(FacePipelinesError, ValueError):
    """Input data (a file, a record, an image) is not what was expected."""


class MissingInputError(FacePipelinesError, FileNotFoundError):
    """A configured path does not exist; the message says which entry/parameter to set."""
