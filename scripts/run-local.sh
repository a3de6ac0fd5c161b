#!/usr/bin/env bash
# The whole flow on this host, no phone needed: measure the FBNet (CIFAR) space and 30 whole
# networks, fit the latency predictor, search for a network 20% faster than a typical one,
# and measure the network found (predicted vs measured in the final table).
# Re-running resumes: collection measures only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
"$bin/latbench" collect --device local --space fbnet-cifar --networks 30
"$bin/latbench" fit-predictor --device local --space fbnet-cifar
target_ms=$("$bin/python" - <<'PY'
import random
import numpy as np
import predictors
from latbench.spaces import get_space

space, model = get_space("fbnet-cifar"), predictors.load("latbench:local")
rng = random.Random(0)
typical = np.median([model.predict_network(space, space.sample_arch(rng)) for _ in range(200)])
print(f"{0.8 * typical:.3f}")
PY
)
echo "latency target: ${target_ms} ms (80% of the median predicted latency of random networks)"
# A narrow, low-resolution supernet keeps training within minutes on a laptop CPU; the cost,
# the exported network and the verification are always the full-width network.
"$bin/nas" search --cost latbench:local --form hinge --target-ms "$target_ms" --pick budget \
  --epochs 8 --width-mult 0.25 --input-size 8 --theta-lr 0.1 --verify
