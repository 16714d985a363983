"""Synthetic captioned images (shapes, colours, positions) for tests and the CoCoA benchmark.

    scenes = make_scenes(seed=0, repeats=2)      # every shape x colour x position, twice, jittered
    scenes[0].caption, scenes[0].image           # "a red circle on the left", PIL image
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (40, 60, 220), "yellow": (230, 210, 20)}
POSITIONS = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    position: str
    image: Any  # PIL.Image

    @property
    def caption(self) -> str:
        where = f"on the {self.position}" if self.position in ("left", "right") else f"at the {self.position}"
        return f"a {self.colour} {self.shape} {where}"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.position)


def draw(shape: str, colour: str, position: str, *, size: int = 32, rng: random.Random | None = None):
    """One image: a shape of a colour in one half of a grey canvas, with jittered size and placement."""
    from PIL import Image, ImageDraw

    rng = rng or random.Random(0)
    background = tuple(rng.randint(90, 140) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    radius = rng.uniform(0.16, 0.24) * size
    centre = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73)}[position]
    cx = centre[0] * size + rng.uniform(-0.05, 0.05) * size
    cy = centre[1] * size + rng.uniform(-0.05, 0.05) * size
    fill = COLOURS[colour]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        pen.ellipse(box, fill=fill)
    elif shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    return image


def make_scenes(*, seed: int = 0, repeats: int = 1, size: int = 32, shapes=SHAPES, colours=tuple(COLOURS),
                positions=POSITIONS) -> list[Scene]:
    """Every combination `repeats` times, each rendered with its own jitter, in shuffled order."""
    rng = random.Random(seed)
    scenes = [Scene(s, c, p, draw(s, c, p, size=size, rng=rng))
              for _ in range(repeats) for s, c, p in itertools.product(shapes, colours, positions)]
    rng.shuffle(scenes)
    return scenes


def save_scenes(scenes: list[Scene], folder: str | Path) -> list[str]:
    """Write the images as PNG files; returns their paths relative to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index, scene in enumerate(scenes):
        name = f"{index:04d}-{scene.colour}-{scene.shape}-{scene.position}.png"
        scene.image.save(folder / name)
        names.append(name)
    return names
