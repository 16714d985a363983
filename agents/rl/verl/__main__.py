"""`python -m agents.rl.verl ARGS` = `python -m verl.trainer.main_ppo ARGS` with embedkit registered (launcher)."""

from agents.rl.verl.launcher import main

raise SystemExit(main())
