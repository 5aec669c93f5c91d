"""The styletransfer gRPC service: settings, server assembly, servicer, job core."""
