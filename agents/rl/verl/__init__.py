"""embedkit's RL pieces inside stock verl (>= 0.9.1), through verl's own extension points.

- `agents.rl.verl.search_tool`: `EmbedkitSearchTool`, a verl `BaseTool` that searches an `embedkit serve`
  index over Search-R1's `/retrieve` protocol (tool config: configs/verl/search_tool.yaml).
- `agents.rl.verl.search_r1_loop`: `search_r1_agent`, an agent loop keeping Search-R1's `<search>` /
  `<information>` token stream (configs/verl/search_r1_agent_loop.yaml registers it in verl's workers).
- `agents.rl.verl.data`: NQ + HotpotQA questions in verl's parquet layout for Search-R1-style training.
- `agents.rl.verl.rewards`: reward managers in verl's reward-loop registry for ConsistRM, ReflectRM and
  AC-GenRM (ACPO) judges served by an OpenAI-compatible server, and for training ConsistRM / ReflectRM judges.
- `agents.rl.verl.rose`: ROSE's branching rollouts (agent loop `embedkit_rose`, agents/rl/verl/rose_agent_loop.yaml),
  its tree advantage (estimator `embedkit_rose`) and the v1 trainer mode `embedkit_rose` that carries the tree.
"""
