"""embedkit's RL pieces inside stock verl (>= 0.9.1), through verl's own extension points.

- `agents.rl.verl.search_tool`: `EmbedkitSearchTool`, a verl `BaseTool` that searches an `embedkit serve`
  index over Search-R1's `/retrieve` protocol (tool config: configs/verl/search_tool.yaml).
- `agents.rl.verl.search_r1_loop`: `search_r1_agent`, an agent loop keeping Search-R1's `<search>` /
  `<information>` token stream (configs/verl/search_r1_agent_loop.yaml registers it in verl's workers).
- `agents.rl.verl.data`: NQ + HotpotQA questions in verl's parquet layout for Search-R1-style training.
- `agents.rl.verl.actor`, `agents.rl.verl.trainer`: TRE and MGS inside verl's actor worker, selected by the v1
  trainer modes `embedkit_sync` / `embedkit_colocate_async` / `embedkit_separate_async` (which also give
  `embedkit_grpo` / `embedkit_drgrpo` verl's per-session grouping).
- `python -m agents.rl.verl ...` (`agents.rl.verl.launcher`): verl's own `main_ppo` with everything registered in
  every process (`agents.rl.verl.plugin`, through `VERL_USE_EXTERNAL_MODULES`).
- `agents.rl.verl.rewards`: reward managers in verl's reward-loop registry for ConsistRM, ReflectRM and
  AC-GenRM (ACPO) judges served by an OpenAI-compatible server, and for training ConsistRM / ReflectRM judges.
- `agents.rl.verl.rose`: ROSE's branching rollouts (agent loop `embedkit_rose`, agents/rl/verl/rose_agent_loop.yaml),
  its tree advantage (estimator `embedkit_rose`) and the v1 trainer mode `embedkit_rose` that carries the tree.
"""
