#!/usr/bin/env python3
"""REST against gRPC on one `itarflow-rt serve`, through NVIDIA Triton's Python clients.

    python3 benches/serve_protocols.py [--rt PATH] [--provider tract] [--clients 16] [--requests 50]
                                       [--out benches/results/serve_protocols.json]

Starts the server on the demo package with both listeners (ephemeral ports), then, for each
protocol, C client threads (a client each) send R seeded one-image sampling requests (class and
seed vary per request; binary tensors over REST, raw contents over gRPC). Reported per protocol:
images/s and p50/p99 latency; and whether both protocols returned the same images for every
(class, seed) (they go through one batcher, so merged batches differ from run to run: images are
compared with a float tolerance, 1e-4 relative, as the server's tests do for batching).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import tritonclient.grpc as grpc
import tritonclient.http as http


def start(rt, provider):
    p = subprocess.Popen([rt, "serve", "--port", "0", "--grpc-port", "0", "--provider", provider, "--max-queue-delay-ms", "10"],
                         stderr=subprocess.PIPE, text=True)
    addrs = {}
    while len(addrs) < 2:
        line = p.stderr.readline()
        if not line:
            sys.exit("the server stopped before printing its addresses")
        if m := re.match(r"listening on http://(\S+)", line):
            addrs["http"] = m.group(1)
        if m := re.match(r"gRPC listening on (\S+)", line):
            addrs["grpc"] = m.group(1)
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    return p, addrs


def one(api, client, k):
    cls = api.InferInput("class", [1], "INT64")
    seed = api.InferInput("seed", [1], "INT64")
    if api is http:
        cls.set_data_from_numpy(np.array([k % 10], dtype=np.int64), binary_data=True)
        seed.set_data_from_numpy(np.array([1000 + k], dtype=np.int64), binary_data=True)
        out = [http.InferRequestedOutput("images", binary_data=True)]
    else:
        cls.set_data_from_numpy(np.array([k % 10], dtype=np.int64))
        seed.set_data_from_numpy(np.array([1000 + k], dtype=np.int64))
        out = [grpc.InferRequestedOutput("images")]
    return client.infer("fmnist", [cls, seed], outputs=out).as_numpy("images")


def load(api, url, clients, requests):
    images, latency = {}, []
    lock = threading.Lock()

    def worker(c):
        client = api.InferenceServerClient(url=url)
        for r in range(requests):
            k = c * requests + r
            t = time.perf_counter()
            x = one(api, client, k)
            dt = time.perf_counter() - t
            with lock:
                images[k] = x
                latency.append(dt)

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.sort(np.array(latency))
    return images, {
        "images": len(images),
        "seconds": round(wall, 3),
        "images_per_s": round(len(images) / wall, 2),
        "latency_p50_s": round(float(np.percentile(lat, 50)), 4),
        "latency_p99_s": round(float(np.percentile(lat, 99)), 4),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    ap.add_argument("--rt", default=os.path.join(target, "release", "itarflow-rt"))
    ap.add_argument("--provider", default="tract")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--out", default="benches/results/serve_protocols.json")
    a = ap.parse_args()
    server, addrs = start(a.rt, a.provider)
    try:
        probe = http.InferenceServerClient(url=addrs["http"])
        deadline = time.time() + 120
        while not probe.is_server_ready():
            if time.time() > deadline:
                sys.exit("the server did not get ready")
            time.sleep(0.1)
        results, images = {}, {}
        for name, api in (("rest", http), ("grpc", grpc)):
            one(api, api.InferenceServerClient(url=addrs["http" if api is http else "grpc"]), 0)  # warm
            images[name], results[name] = load(api, addrs["http" if api is http else "grpc"], a.clients, a.requests)
            print(name, results[name], flush=True)
        worst = max(float(np.max(np.abs(images["rest"][k] - images["grpc"][k]))) for k in images["rest"])
        scale = max(float(np.max(np.abs(x))) for x in images["rest"].values())
        report = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()} cores",
            "provider": a.provider,
            "clients": a.clients,
            "requests_per_client": a.requests,
            "client": "tritonclient 2.73.0 (Python), one client per thread",
            "rest": results["rest"],
            "grpc": results["grpc"],
            "same_images_max_rel_diff": worst / scale,
        }
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, a.out)
        print(json.dumps(report, indent=1))
        if worst / scale > 1e-4:
            sys.exit(f"REST and gRPC images differ by {worst / scale:.2e} relative")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
