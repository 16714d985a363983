"""Register everything embedkit adds to verl, in this process; importing the module does it.

    VERL_USE_EXTERNAL_MODULES=agents.rl.verl.plugin python -m verl.trainer.main_ppo ...   # verl imports it
    python -m agents.rl.verl ...                                                         # sets that for you

verl imports the modules named in `VERL_USE_EXTERNAL_MODULES` when `verl` itself is imported, so every process
that imports verl with that variable set (the driver, and Ray workers of a cluster whose environment has it)
registers the names before building anything. `register_all()` is idempotent.

What it registers: embedkit's advantage estimators and policy loss (`agents.rl.verl_adapter`), the v1 trainer
modes `embedkit_*` that select embedkit's actor worker (`agents.rl.verl.trainer`), and, where those modules exist,
the reward managers, tools and agent loops of `agents.rl.verl` (each registers itself when imported).
"""

from __future__ import annotations

import importlib
import importlib.util

# Modules of agents.rl.verl that register something in verl when imported (those absent are skipped).
OPTIONAL_MODULES = ("agents.rl.verl.rewards", "agents.rl.verl.search_tool", "agents.rl.verl.rose",
                    "agents.rl.verl.rose_rollout", "agents.rl.verl.agent_loop", "agents.rl.verl.search_r1_loop")  # fmt: skip

_done: list[str] = []


def register_all() -> list[str]:
    """Register embedkit's names in verl's registries; returns the modules that registered (once per process)."""
    if _done:
        return list(_done)
    from agents.rl.verl_adapter import register_with_verl

    register_with_verl()
    importlib.import_module("agents.rl.verl.trainer")
    loaded = ["agents.rl.verl_adapter", "agents.rl.verl.trainer"]
    for name in OPTIONAL_MODULES:
        if importlib.util.find_spec(name) is not None:  # present: import it (an error in it is a real error)
            importlib.import_module(name)
            loaded.append(name)
    _done.extend(loaded)
    return loaded


register_all()
