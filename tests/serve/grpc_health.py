#!/usr/bin/env python3
"""Asks gRPC's standard health service (grpc.health.v1.Health/Check) of ADDR about SERVICE, as
Kubernetes' gRPC probes do, and prints the answer: the status's name, or the error's code and
message. The messages are written by hand (one field each), so nothing but grpcio is needed.

    python3 tests/serve/grpc_health.py ADDR SERVICE      (SERVICE "" is the whole server)
"""
import sys

import grpc

STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def main():
    addr, service = sys.argv[1], sys.argv[2].encode()
    assert len(service) < 128, "one length byte"
    # HealthCheckRequest: field 1 (length-delimited), left out when empty.
    request = b"\x0a" + bytes([len(service)]) + service if service else b""
    check = grpc.insecure_channel(addr).unary_unary("/grpc.health.v1.Health/Check")
    try:
        answer = check(request, timeout=10)
    except grpc.RpcError as e:
        print(e.code().name, e.details())
        return
    # HealthCheckResponse: field 1 (varint), left out when 0.
    print(STATUS[answer[1] if answer[:1] == b"\x08" else 0])


if __name__ == "__main__":
    main()
