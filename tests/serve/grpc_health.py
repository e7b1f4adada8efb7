#!/usr/bin/env python3
"""Asks gRPC's standard health service (grpc.health.v1.Health) of ADDR about SERVICE, as
Kubernetes' gRPC probes (Check) and gRPC clients' health checking (Watch) do. The messages are
written by hand (one field each), so nothing but grpcio is needed.

    python3 tests/serve/grpc_health.py ADDR SERVICE            Check: the status's name, or the error's code and message
    python3 tests/serve/grpc_health.py ADDR SERVICE --watch    Watch: each status as it arrives, one per line, then
                                                               "END" and the code the stream ended with

(SERVICE "" is the whole server.)
"""
import sys

import grpc

STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def status(answer):
    # HealthCheckResponse: field 1 (varint), left out when 0.
    return STATUS[answer[1] if answer[:1] == b"\x08" else 0]


def main():
    addr, service = sys.argv[1], sys.argv[2].encode()
    assert len(service) < 128, "one length byte"
    # HealthCheckRequest: field 1 (length-delimited), left out when empty.
    request = b"\x0a" + bytes([len(service)]) + service if service else b""
    channel = grpc.insecure_channel(addr)
    if sys.argv[3:] == ["--watch"]:
        try:
            for answer in channel.unary_stream("/grpc.health.v1.Health/Watch")(request, timeout=120):
                print(status(answer), flush=True)
            print("END OK", flush=True)
        except grpc.RpcError as e:
            print("END", e.code().name, e.details(), flush=True)
        return
    try:
        answer = channel.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=10)
    except grpc.RpcError as e:
        print(e.code().name, e.details())
        return
    print(status(answer))


if __name__ == "__main__":
    main()
