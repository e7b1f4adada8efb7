"""Calls an `itarflow-rt serve` server with NVIDIA Triton's own Python client (tritonclient[http],
installed by scripts/setup.sh) and checks what it gets back. Run by tests/serve_tests.rs:

    python3 tests/serve/triton_client.py URL NAME EXPECTED.npz

EXPECTED.npz holds what the `itarflow-rt` command line computed for the same inputs:
`sample_x` (B, C, H, W) from `itarflow-rt sample --seed 7 --class 3 --num B --cfg 1.5`,
`score_x`, `score_t`, `score_y` with `score` and `logp` from `itarflow-rt score`, and `denoise_x`,
`denoise_y` with `denoised` from `itarflow-rt denoise`. Exits non-zero on the first mismatch.
"""

import sys

import numpy as np
import tritonclient.http as http
from tritonclient.utils import InferenceServerException

url, name, expected = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
client = http.InferenceServerClient(url=url)
TOL = 1e-5


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def close(ours, want, what):
    err = float(np.max(np.abs(ours - want)) / max(float(np.max(np.abs(want))), 1e-30))
    check(ours.shape == want.shape and err < TOL, f"{what} (relative error {err:.2e}, shapes {ours.shape} / {want.shape})")


check(client.is_server_live(), "server live")
check(client.is_server_ready(), "server ready")
meta = client.get_server_metadata()
check("binary_tensor_data" in meta["extensions"], "server metadata lists the binary tensor data extension")
for model in (name, f"{name}-score", f"{name}-denoise"):
    check(client.is_model_ready(model), f"model {model} ready")
    m = client.get_model_metadata(model)
    check(m["name"] == model and m["inputs"] and m["outputs"], f"model {model} metadata")

# The sampler, seeded: the same images as `itarflow-rt sample --seed 7 --class 3 --num B --cfg 1.5`,
# with JSON tensors and with binary data both ways.
want = expected["sample_x"]
b = want.shape[0]
for binary in (False, True):
    cls = http.InferInput("class", [b], "INT64")
    cls.set_data_from_numpy(np.full(b, 3, dtype=np.int64), binary_data=binary)
    seed = http.InferInput("seed", [1], "INT64")
    seed.set_data_from_numpy(np.array([7], dtype=np.int64), binary_data=binary)
    cfg = http.InferInput("cfg", [1], "FP32")
    cfg.set_data_from_numpy(np.array([1.5], dtype=np.float32), binary_data=binary)
    out = http.InferRequestedOutput("images", binary_data=binary)
    r = client.infer(name, [cls, seed, cfg], outputs=[out])
    close(r.as_numpy("images"), want, f"seeded samples equal `itarflow-rt sample` ({'binary' if binary else 'JSON'} tensors)")

# The score model: as `itarflow-rt score`.
inputs = []
for key, dtype in (("score_x", "FP32"), ("score_t", "FP32"), ("score_y", "INT64")):
    a = expected[key] if key == "score_x" else expected[key].reshape(-1)
    t = http.InferInput(key.split("_")[1], list(a.shape), dtype)
    t.set_data_from_numpy(a, binary_data=True)
    inputs.append(t)
r = client.infer(f"{name}-score", inputs, outputs=[http.InferRequestedOutput("score"), http.InferRequestedOutput("logp", binary_data=False)])
close(r.as_numpy("score"), expected["score"], "score equals `itarflow-rt score`")
close(r.as_numpy("logp"), expected["logp"], "log p equals `itarflow-rt score`")

# The denoising model: as `itarflow-rt denoise`.
x = http.InferInput("x", list(expected["denoise_x"].shape), "FP32")
x.set_data_from_numpy(expected["denoise_x"])
y = http.InferInput("y", list(expected["denoise_y"].shape), "INT64")
y.set_data_from_numpy(expected["denoise_y"])
r = client.infer(f"{name}-denoise", [x, y])
close(r.as_numpy("images"), expected["denoised"], "denoised images equal `itarflow-rt denoise`")

# A bad request is an InferenceServerException carrying the server's message.
try:
    bad = http.InferInput("class", [1], "INT64")
    bad.set_data_from_numpy(np.array([99], dtype=np.int64))
    client.infer(name, [bad])
    check(False, "a class out of range is refused")
except InferenceServerException as e:
    check("out of range" in str(e), f"a class out of range is refused: {e}")
print("all checks passed")
