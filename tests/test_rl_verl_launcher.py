"""`python -m agents.rl.verl` (the launcher), the v1 trainer modes `embedkit_*`, and registration in Ray workers.

- The launcher takes verl's own command line, composes verl's config as `main_ppo` does, runs verl's
  `validate_config` and embedkit's checks, and on a CPU stops with exit 2 and a message where verl would ask Ray
  for GPUs.
- The trainer modes are verl's own trainer classes (registered with `register_trainer`) whose resource-pool step
  puts embedkit's actor worker in every actor role and whose advantage step gives `embedkit_grpo` /
  `embedkit_drgrpo` verl's per-session grouping (docs/rl.md's example: [-0.707, -0.707, 0.707]).
- A Ray worker started with the launcher's environment imports verl and finds embedkit's names registered.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls

from agents.rl.verl import launcher
from agents.rl.verl.actor import EmbedkitActorRolloutRefWorker
from agents.rl.verl.plugin import register_all
from agents.rl.verl.trainer import TRAINER_MODES, EmbedkitTrainerMixin
from embedkit.errors import EmbedkitError
from tests.verl_cpu import compose_verl_config

ROOT = Path(__file__).resolve().parents[1]
BASE = ["data.train_files=/tmp/none.parquet", "data.val_files=/tmp/none.parquet",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=1",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=1", "trainer.n_gpus_per_node=1",
        "algorithm.adv_estimator=grpo"]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def registered():
    return register_all()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.verl_cpu import write_tiny_qwen2

    return write_tiny_qwen2(tmp_path_factory.mktemp("qwen2"))


# ---- the v1 trainer modes -------------------------------------------------------------------------------------
def test_every_verl_trainer_mode_has_an_embedkit_twin(registered):
    assert set(TRAINER_MODES) == {"embedkit_sync", "embedkit_colocate_async", "embedkit_separate_async"}
    cls = get_trainer_cls("embedkit_sync")
    assert issubclass(cls, PPOTrainerSync) and issubclass(cls, EmbedkitTrainerMixin)
    assert register_all() == registered  # idempotent
    assert "agents.rl.verl.trainer" in registered


def test_trainer_puts_embedkits_worker_in_the_actor_roles(model_dir):
    """verl's own `_init_resource_pool_mgr` (the v1 trainer's), then the swap: actor and reference roles run
    EmbedkitActorRolloutRefWorker; a critic stays verl's TrainingWorker."""
    config = compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *BASE, "algorithm.adv_estimator=gae",
                                  "actor_rollout_ref.actor.use_kl_loss=true", "trainer.v1.trainer_mode=embedkit_sync"])  # fmt: skip
    trainer = object.__new__(get_trainer_cls("embedkit_sync"))  # the resource step only reads the config
    trainer.config = config
    trainer._init_resource_pool_mgr()
    classes = {role.name: worker.__ray_actor_class__ for role, worker in trainer.role_worker_mapping.items()}
    assert classes.pop("Critic").__name__ == "TrainingWorker"
    assert classes and all(cls is EmbedkitActorRolloutRefWorker for cls in classes.values()), classes


def test_trainer_refuses_unsupported_settings_before_building_anything(model_dir):
    config = compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *BASE,
                                  "+actor_rollout_ref.embedkit.tre.kind=tre_k",
                                  "actor_rollout_ref.model.use_fused_kernels=true"])  # fmt: skip
    with pytest.raises(EmbedkitError, match="TRE needs the logits"):
        get_trainer_cls("embedkit_sync")(config=config)


# docs/rl.md: one prompt; session 0 returns two outputs (reward 0), session 1 one output (reward 1)
KEYS, REWARDS = ["p0_0_0", "p0_0_1", "p0_1_0"], [0.0, 0.0, 1.0]


@pytest.mark.parametrize(("name", "mode", "expected"), [
    ("embedkit_grpo", "embedkit_sync", [-0.7071, -0.7071, 0.7071]),
    ("grpo", "sync", [-0.7071, -0.7071, 0.7071]),
    ("embedkit_grpo", "sync", [-0.5774, -0.5774, 1.1547]),  # verl's own mode: three outputs, not two sessions
    ("embedkit_drgrpo", "embedkit_sync", [-0.5, -0.5, 0.5]),  # sessions 0 and 1, mean 0.5, no std division
])  # fmt: skip
def test_v1_trainers_own_advantage_step_groups_sessions(model_dir, monkeypatch, name, mode, expected):
    """The trainer as verl's main_ppo builds it (`get_trainer_cls(mode)(config)`) runs verl's own
    `_compute_advantage` over queued agent-loop outputs (TransferQueue's kv calls on the in-memory stand-in of
    tests/test_rl_verl_rose.py: the real queue needs Ray actors). Outputs are queued in an order that is not the
    sessions'; docs/rl.md's example: session 0 has two outputs with reward 0, session 1 one with reward 1."""
    import transfer_queue
    from transfer_queue import KVBatchMeta
    from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

    from tests.test_rl_verl_rose import InMemoryQueue

    queue = InMemoryQueue()
    monkeypatch.setattr(transfer_queue, "kv_batch_get", queue.kv_batch_get)
    monkeypatch.setattr(transfer_queue, "kv_batch_put", queue.kv_batch_put)
    rows = []
    for key, reward in zip(KEYS, REWARDS, strict=True):
        out = AgentLoopOutput(prompt_ids=[1, 2], response_ids=[5, 6, 7], response_mask=[1, 1, 1], reward_score=reward,
                              metrics={})  # fmt: skip
        row = out.as_dict()
        row.update({"uid": "p0", "session_id": int(key.split("_")[1]), "global_steps": 1,
                    "rm_scores": torch.tensor([0.0, 0.0, reward])})  # fmt: skip
        rows.append(row)
    queue.put_rows(KEYS, rows)
    config = compose_verl_config([f"actor_rollout_ref.model.path={model_dir}", *BASE, f"algorithm.adv_estimator={name}",
                                  f"trainer.v1.trainer_mode={mode}"])  # fmt: skip
    trainer = get_trainer_cls(mode)(config)
    # verl's sync behaviour (replay buffer, refill, per-mode settings) goes by the name of the mode extended
    assert trainer.trainer_mode == "sync" and type(trainer.replay_buffer).__name__ == "ReplayBuffer"
    order = [2, 0, 1]
    trainer._compute_advantage(KVBatchMeta(keys=[KEYS[i] for i in order], tags=[{}] * 3, partition_id="train"), {})
    got = [queue.rows[("train", key)]["advantages"][0].item() for key in KEYS]
    assert got == pytest.approx(expected, abs=1e-4)


# ---- the launcher ---------------------------------------------------------------------------------------------
@pytest.fixture
def launcher_env(monkeypatch):
    """The launcher sets VERL_USE_EXTERNAL_MODULES / PYTHONPATH in its process: restored after each test."""
    for key in launcher.worker_env():
        monkeypatch.setenv(key, os.environ.get(key, ""))


def test_launcher_checks_the_rose_loop_settings_before_ray(launcher_env, model_dir, capsys, tmp_path):
    loops = tmp_path / "loops.yaml"
    loops.write_text("- name: embedkit_rose\n  _target_: agents.rl.verl.rose.RoseAgentLoop\n  epsilon: 2.0\n")
    code = launcher.main([f"actor_rollout_ref.model.path={model_dir}", *BASE, "algorithm.adv_estimator=embedkit_rose",
                          "trainer.v1.trainer_mode=embedkit_rose",
                          f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and str(loops) in err and "epsilon" in err and "no GPU" not in err, err


@pytest.mark.parametrize(("extra", "message"), [
    (["+actor_rollout_ref.embedkit.tre.kind=tre_k"], "set trainer.v1.trainer_mode=embedkit_sync"),
    (["+actor_rollout_ref.embedkit.mgs.seed=0", "trainer.v1.trainer_mode=embedkit_nope"], "does not); set"),
    (["trainer.v1.trainer_mode=embedkit_sync", "+actor_rollout_ref.embedkit.tre.kind=tre_k",
      "actor_rollout_ref.model.use_fused_kernels=true"], "TRE needs the logits"),
    (["trainer.v1.trainer_mode=embedkit_sync", "+actor_rollout_ref.embedkit.mgs.domain=x"],
     "actor_rollout_ref.embedkit.mgs.domain: Extra inputs"),
    (["actor_rollout_ref.actor.no_such_key=1"], "verl's config did not compose"),
    (["actor_rollout_ref.actor.ppo_mini_batch_size=3", "data.train_batch_size=2"], "verl refused the config"),
    (["algorithm.adv_estimator=gae"], "verl refused the config: Error in call to target"),  # critic.model.path unset
    (["algorithm.adv_estimator=embedkit_grpo", "trainer.v1.trainer_mode=embedkit_sync"], "no GPU here"),
])  # fmt: skip
def test_launcher_stops_with_exit_2_and_the_reason(launcher_env, model_dir, capsys, extra, message):
    code = launcher.main([f"actor_rollout_ref.model.path={model_dir}", *BASE, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert "Traceback" not in err


@pytest.mark.slow  # a fresh process importing verl
def test_launcher_as_a_user_runs_it_on_a_cpu(model_dir):
    """The documented command, in a fresh process: verl's command line plus the module name."""
    proc = subprocess.run([sys.executable, "-m", "agents.rl.verl", f"actor_rollout_ref.model.path={model_dir}", *BASE,
                           "algorithm.adv_estimator=embedkit_grpo", "trainer.v1.trainer_mode=embedkit_sync",
                           "+actor_rollout_ref.embedkit.tre.kind=tre_k", "+actor_rollout_ref.embedkit.mgs.seed=1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: no GPU here" in proc.stderr and "verl's config composed and validated" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_launcher_help():
    assert launcher.main(["--help"]) == 0


def test_worker_env_adds_the_plugin_once():
    env = launcher.worker_env({"VERL_USE_EXTERNAL_MODULES": "my.plugin", "PYTHONPATH": "/x"})
    assert env["VERL_USE_EXTERNAL_MODULES"] == "my.plugin,agents.rl.verl.plugin"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/x"]
    assert launcher.worker_env(env) == env


@pytest.mark.slow  # a fresh process importing verl
def test_a_ray_worker_with_the_launchers_environment_has_embedkits_names():
    """verl imports VERL_USE_EXTERNAL_MODULES when `verl` is imported: a Ray worker process started with the
    launcher's environment (runtime_env env_vars, as on a cluster started apart) registers embedkit's names."""
    code = """
import ray, sys
ray.init(num_cpus=1, include_dashboard=False, runtime_env={"env_vars": ENV})

@ray.remote
def names():
    import os
    import verl  # imports agents.rl.verl.plugin
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1 import get_trainer_cls
    return (os.getpid(), sorted(n for n in core_algos.ADV_ESTIMATOR_REGISTRY if n.startswith("embedkit")),
            core_algos.get_policy_loss_fn("embedkit_ppo_clip").__name__, get_trainer_cls("embedkit_sync").__name__)

pid, estimators, loss, trainer = ray.get(names.remote())
assert pid != __import__("os").getpid()
print("NAMES", estimators, loss, trainer)
""".replace("ENV", repr(launcher.worker_env()))
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES",)}
    proc = subprocess.run([sys.executable, "-c", code], cwd="/tmp", env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("NAMES ")]  # Ray logs come in between
    estimators, loss, trainer = line.removeprefix("NAMES ").rsplit(" ", 2)
    assert {"embedkit_grpo", "embedkit_drgrpo"} <= set(eval(estimators))  # noqa: S307  (our own print of a list)
    assert (loss, trainer) == ("verl_ppo_clip_loss", "EmbedkitPPOTrainerSync")
