"""The gRPC layer: the StyleTransfer servicer, its interceptors (authentication, bounds, rates,
logs, metrics), and the gRPC server they are put together in. It speaks to the job system only
through the job store (service/jobs/store.py); protobuf conversion is service/convert.py's."""
