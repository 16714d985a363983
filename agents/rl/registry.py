"""The RL module's registries use the project's one registry type."""

from embedkit.registry import Registry

__all__ = ["Registry"]
