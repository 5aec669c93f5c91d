"""Python client of the styletransfer gRPC service; the generated API is `styletransfer.v1`."""
