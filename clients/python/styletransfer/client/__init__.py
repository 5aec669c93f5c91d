"""Client library of the styletransfer service: `StyleTransferClient`, its options and errors."""

from styletransfer.client.client import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    StyleTransferClient,
    TransferStream,
    tls_credentials,
)
from styletransfer.client.errors import ClientError, ProtocolError, StyleTransferError
from styletransfer.client.images import ImageSource, Style, StyleSource
from styletransfer.client.options import JobStateName, TransferOptions, TransferOptionsKwargs

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_TARGET",
    "ClientError",
    "ImageSource",
    "JobStateName",
    "ProtocolError",
    "Style",
    "StyleSource",
    "StyleTransferClient",
    "StyleTransferError",
    "TransferOptions",
    "TransferOptionsKwargs",
    "TransferStream",
    "tls_credentials",
]
