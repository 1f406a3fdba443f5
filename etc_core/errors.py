"""Exception classes raised at the project's boundaries; each message is one line naming the culprit."""


class EtcError(Exception):
    """Base class: entry points print `<ClassName>: <message>` and exit non-zero."""

    exit_code = 1


class ConfigError(EtcError):
    """A config file, key, value or command-line argument is wrong (exit code 2)."""

    exit_code = 2


class DatasetError(EtcError):
    """A dataset directory is missing, malformed or inconsistent with its manifest."""


class ShardError(EtcError):
    """A WebDataset shard is truncated, corrupt or misses a member."""


class StorageError(EtcError):
    """A local or S3 location cannot be read or written."""


class TrackingError(EtcError):
    """The MLflow tracking store (mlflow.tracking_uri) cannot be reached or refuses a request."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): the reason in a one-line error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
