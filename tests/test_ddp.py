"""The accuracy suite under torchrun: 2 CPU processes (gloo), one set of records, identical topology on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist

from dstbench import distributed, records
from dstbench.suites import accuracy

METHODS = ["rigl", "srigl", "dynadiag"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_torchrun_trains_with_ddp_and_ranks_agree(tmp_path):
    out, fingerprints = tmp_path / "run", tmp_path / "fp"
    fingerprints.mkdir()
    env = {**os.environ, accuracy.FINGERPRINT_ENV: str(fingerprints), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "dstbench", "run", "--suite", "accuracy", "--methods", ",".join(METHODS), "--epochs", "2",
               "--delta-t", "5", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = records.read_rows(out)
    assert [r["method"] for r in rows] == METHODS  # rank 0 alone wrote, once per case
    assert all(r["world_size"] == 2 and r["steps"] == 2 * 22 for r in rows)  # global batch 64 split over 2 ranks
    for row in rows:  # both ranks' shares of the test set, in order
        predictions, labels = np.load(out / row["predictions"]), np.load(out / row["labels"])
        assert predictions.shape == labels.shape == (450,) and (predictions == labels).mean() == row["top1"]
        assert row["n_b1"] == accuracy.TIMING_ROUNDS  # rank 0 timed the model
    ranks = [[json.loads(line) for line in (fingerprints / f"rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    assert [line["case_id"] for line in ranks[0]] == [line["case_id"] for line in ranks[1]] == [r["case_id"] for r in rows]
    for zero, one in zip(*ranks):
        assert zero["topology"] == one["topology"], zero["case_id"]  # masks / alpha and schedule state
        assert zero["params"] == one["params"], zero["case_id"]


def test_single_process_world_and_fingerprint():
    world = distributed.init(torch.device("cpu"))
    assert (world.rank, world.size, world.is_main, world.distributed) == (0, 1, True, False)
    assert distributed.broadcast_object([3], world) == [3]
    assert distributed.all_reduce_sum(torch.ones(2), world).tolist() == [1.0, 1.0]
    a = {"masks": {"l": torch.tensor([True, False])}, "alpha": torch.arange(3.0)}
    b = {"alpha": torch.arange(3.0), "masks": {"l": torch.tensor([True, False])}}
    assert distributed.fingerprint(a) == distributed.fingerprint(b)
    b["alpha"][1] += 1e-6
    assert distributed.fingerprint(a) != distributed.fingerprint(b)
    assert distributed.fingerprint(torch.zeros(2)) != distributed.fingerprint(torch.zeros(2, dtype=torch.float64))
