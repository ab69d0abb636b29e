"""The README's "use the loop in your own trainer" example runs as written (one process, and two under
torchrun) and trains: the loss falls over its three steps, and two processes print one process's losses."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- embedding-example -->\s*```python\n(.*?)```\s*<!-- /embedding-example -->", text, re.S)
    assert match, "README lost its embedding example"
    return match.group(1)


def _losses(stdout: str) -> list[float]:
    rows = [line.split(" ", 1) for line in stdout.splitlines() if re.match(r"^\d+ \{", line)]
    return [ast.literal_eval(row[1])["loss"] for row in rows]


_LOSSES = {}


@pytest.mark.parametrize("nproc", [1, 2])
def test_readme_embedding_example_runs_and_trains(tmp_path, nproc):
    script = tmp_path / "example.py"
    script.write_text(_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, str(script)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    losses = _losses(proc.stdout)
    assert len(losses) == 3  # rank 0 prints the global loss
    assert losses[2] < losses[0]
    _LOSSES[nproc] = losses
    if len(_LOSSES) == 2:
        assert _LOSSES[2] == pytest.approx(_LOSSES[1], rel=1e-5)
