"""Errors that end a request with a gRPC status; anything else is a bug (INTERNAL)."""
from __future__ import annotations

import grpc


class ServiceError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {message}")


def not_found(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, f"{field}: {message}")


def exhausted(field: str, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{field}: {message}")
