"""What importing the client costs: no torch (seconds to import, and a client host may not have
a GPU stack at all). Checked in a fresh interpreter, since this test process has torch already."""

from __future__ import annotations

import subprocess
import sys

import poolworker


def modules_after(statement: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    probe = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(done.stdout.split())


def test_importing_the_client_does_not_import_torch():
    loaded = modules_after("import poolworker.client")
    assert "poolworker.client" in loaded  # the probe did run the import
    assert not {"torch", "transformers", "poolworker.engine"} & loaded


def test_engine_names_are_still_importable_from_the_package():
    loaded = modules_after("from poolworker import Engine, PoolerConfig")
    assert {"torch", "poolworker.engine"} <= loaded
    from poolworker.engine import Engine, PoolerConfig

    assert (poolworker.Engine, poolworker.PoolerConfig) == (Engine, PoolerConfig)
    assert set(poolworker.__all__) <= set(dir(poolworker))


def test_the_model_process_is_spawned_before_torch_is_imported():
    """``poolworker run`` spawns the model process first, so the two processes import torch and
    load the models at the same time; that holds only while spawning needs no torch."""
    loaded = modules_after("import poolworker.model_process")
    assert "poolworker.model_process" in loaded
    assert not {"torch", "transformers", "poolworker.engine", "poolworker.batching"} & loaded
