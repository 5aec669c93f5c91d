"""The README's gallery: draws its inputs, stylizes each content with each style through the CLI,
and lays the results out on one contact sheet.

    .venv/bin/python scripts/gallery.py images              # docs/gallery/inputs/
    .venv/bin/python scripts/gallery.py stylize             # needs a server on 127.0.0.1:50051
    .venv/bin/python scripts/gallery.py sheet               # docs/gallery/contact-sheet.jpg

Every input is made here or taken from a package the project already installs: the one
photograph is matplotlib's sample `grace_hopper.jpg` (a US Navy photograph, public domain), the
other contents and every style are drawn by the functions below from fixed seeds. `stylize` runs
the exact command the README prints for each image and records its wall time in
`docs/gallery/runs.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "docs" / "gallery"
INPUTS = GALLERY / "inputs"
CLI = ".venv/bin/styletransfer"

Pixels = npt.NDArray[np.uint8]
Field = npt.NDArray[np.float64]


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> Field:
    """Noise in [0, 1] that varies over about `cells` cells across the image (bicubic upsampling)."""
    coarse = rng.uniform(0, 255, size=(cells + 3, cells + 3)).astype(np.uint8)
    big = Image.fromarray(coarse).resize(
        (width + width // cells * 3, height + height // cells * 3), Image.Resampling.BICUBIC
    )
    return np.asarray(big, dtype=np.float64)[:height, :width] / 255.0


def _array(image: Image.Image) -> Pixels:
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


# Contents ---------------------------------------------------------------------------------------


def grace_hopper() -> Pixels:
    """matplotlib's sample photograph of Grace Hopper (US Navy, public domain), 512 x 600."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return _array(Image.open(path))


def landscape(width: int = 512, height: int = 384, seed: int = 1) -> Pixels:
    """A lake under mountains at dusk: sky, sun, three ridges, pines on the shore, a reflection."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array([60, 90, 170]) * (1 - y) + np.array([250, 190, 130]) * y
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    horizon = int(height * 0.62)
    draw.ellipse(
        [width * 0.62, height * 0.08, width * 0.74, height * 0.08 + width * 0.12], fill=(255, 226, 150)
    )
    ridges = [(0.36, (110, 100, 140), 30), (0.46, (70, 75, 110), 22), (0.55, (40, 55, 70), 14)]
    for top, colour, roughness in ridges:
        steps = np.convolve(np.cumsum(rng.normal(0, 1, width // 8 + 6)), np.ones(5) / 5, mode="valid")
        steps = (steps - steps.mean()) / (steps.std() + 1e-9)
        ridge = top * height + steps * roughness * height / 384
        points = [(i * 8, float(min(horizon, ridge[i]))) for i in range(len(ridge))]
        draw.polygon([(0, horizon), *points, (width, horizon)], fill=colour)
    for x in rng.uniform(0, width, 26):
        h = rng.uniform(0.08, 0.17) * height
        base = horizon + rng.uniform(-2, 4)
        draw.polygon([(x - h * 0.22, base), (x, base - h), (x + h * 0.22, base)], fill=(20, 40, 30))
    pixels = _array(image)
    # The lake mirrors what is above the horizon, darker and bluer, broken by ripples.
    above = pixels[2 * horizon - height : horizon][::-1].astype(np.float64)
    water = above * 0.6 + np.array([20, 35, 60])
    ripple = (np.sin(np.arange(height - horizon) * 1.3 + rng.uniform(0, 6)) > 0.6)[:, None, None]
    water = np.where(ripple, water * 0.8 + 40, water)
    pixels[horizon:] = np.clip(water, 0, 255).astype(np.uint8)
    return pixels


def _shade(canvas: Field, cx: float, cy: float, rx: float, ry: float, colour: tuple[int, int, int]) -> None:
    """Paint a lit ellipsoid (light from the upper left) onto `canvas` in place."""
    height, width, _ = canvas.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = (xx - cx) / rx, (yy - cy) / ry
    inside = u * u + v * v < 1
    nz = np.sqrt(np.clip(1 - u * u - v * v, 0, 1))
    light = np.array([-0.5, -0.6, 0.62])
    light /= np.linalg.norm(light)
    diffuse = np.clip(u * light[0] + v * light[1] + nz * light[2], 0, 1)
    specular = np.clip(u * -0.38 + v * -0.45 + nz * 0.81, 0, 1) ** 40
    lit = np.array(colour) * (0.25 + 0.8 * diffuse)[..., None] + 255 * 0.7 * specular[..., None]
    canvas[inside] = lit[inside]


def still_life(width: int = 512, height: int = 384) -> Pixels:
    """A vase, two oranges and an apple on a wooden table against a plain wall."""
    y = np.linspace(0, 1, height)[:, None, None]
    wall = np.array([120, 130, 120]) * (1 - 0.3 * y)
    canvas = np.broadcast_to(wall, (height, width, 3)).astype(np.float64).copy()
    table = int(height * 0.66)
    grain = (
        0.9
        + 0.1
        * np.sin(np.arange(width) / 9.0)[None, :, None]
        * np.sin(np.arange(height - table) / 3.0)[:, None, None]
    )
    canvas[table:] = np.array([130, 80, 45]) * grain
    canvas[table : table + 3] = (70, 40, 20)
    # Shadows on the table, then the objects over them.
    shadow = Image.new("L", (width, height), 0)
    ImageDraw.Draw(shadow).ellipse([width * 0.22, table - 6, width * 0.80, table + 34], fill=110)
    canvas *= 1 - np.asarray(shadow.filter(ImageFilter.GaussianBlur(12)), dtype=np.float64)[..., None] / 255
    _shade(canvas, width * 0.40, height * 0.44, width * 0.11, height * 0.23, (60, 90, 160))  # vase body
    _shade(canvas, width * 0.40, height * 0.19, width * 0.03, height * 0.08, (60, 90, 160))  # its neck
    _shade(canvas, width * 0.60, table - height * 0.07, width * 0.075, width * 0.075, (235, 130, 30))
    _shade(canvas, width * 0.73, table - height * 0.06, width * 0.065, width * 0.065, (240, 150, 40))
    _shade(canvas, width * 0.22, table - height * 0.065, width * 0.07, width * 0.068, (190, 30, 40))
    return np.clip(canvas, 0, 255).astype(np.uint8)


# Styles -----------------------------------------------------------------------------------------


def swirls(size: int = 512, seed: int = 2) -> Pixels:
    """Thick brush strokes that follow a swirling flow field, in blues and yellows."""
    rng = np.random.default_rng(seed)
    angle = smooth_noise(rng, size, size, 4) * 4 * np.pi
    palette = [(25, 45, 110), (40, 80, 160), (90, 140, 200), (230, 200, 80), (250, 235, 160), (20, 25, 50)]
    image = Image.new("RGB", (size, size), palette[1])
    draw = ImageDraw.Draw(image)
    for _ in range(size * 7):
        x, y = rng.uniform(0, size, 2)
        points = [(x, y)]
        for _ in range(int(rng.integers(6, 16))):
            a = angle[int(y) % size, int(x) % size]
            x, y = x + 3 * np.cos(a), y + 3 * np.sin(a)
            points.append((x, y))
        colour = palette[int(rng.choice(len(palette), p=[0.2, 0.28, 0.2, 0.14, 0.1, 0.08]))]
        width = int(rng.integers(size // 90, size // 50))
        draw.line(points, fill=colour, width=width, joint="curve")
        lighter = tuple(min(255, c + 35) for c in colour)
        draw.line([(px - 1, py - 1) for px, py in points], fill=lighter, width=max(1, width // 3))
    return _array(image)


def stained_glass(size: int = 512, seed: int = 3, cells: int = 140) -> Pixels:
    """Voronoi cells of jewel colours, each lit unevenly, with dark leading between them."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, size=(cells, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    labels = np.empty((size, size), dtype=np.int32)
    for row in range(0, size, 64):  # in bands, so the distance table stays small
        d = (xx[row : row + 64, :, None] - seeds[:, 0]) ** 2 + (
            yy[row : row + 64, :, None] - seeds[:, 1]
        ) ** 2
        labels[row : row + 64] = d.argmin(axis=-1)
    palette = np.array(
        [[170, 20, 40], [20, 60, 150], [30, 120, 60], [220, 170, 30], [110, 40, 130], [230, 220, 190]]
    )
    colours = palette[rng.integers(len(palette), size=cells)] * rng.uniform(0.7, 1.15, size=(cells, 1))
    glow = 0.8 + 0.35 * smooth_noise(rng, size, size, 6)
    pixels = colours[labels] * glow[..., None]
    edge = np.zeros((size, size), dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:] |= labels[1:] != labels[:-1]
    lead = edge.copy()
    for shift in (1, 2):  # thicken the leading to about five pixels
        lead[shift:] |= edge[:-shift]
        lead[:-shift] |= edge[shift:]
        lead[:, shift:] |= edge[:, :-shift]
        lead[:, :-shift] |= edge[:, shift:]
    pixels[lead] = (25, 22, 20)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def ink(size: int = 512, seed: int = 4) -> Pixels:
    """Pen hatching on cream paper: the darker the underlying tone, the more layers of lines."""
    rng = np.random.default_rng(seed)
    tone = smooth_noise(rng, size, size, 3)
    wobble_x = (smooth_noise(rng, size, size, 12) - 0.5) * 6
    wobble_y = (smooth_noise(rng, size, size, 12) - 0.5) * 6
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    xx, yy = xx + wobble_x, yy + wobble_y
    inked = np.zeros((size, size), dtype=bool)
    for threshold, degrees, spacing in ((0.35, 45, 7), (0.55, -45, 7), (0.7, 0, 6), (0.82, 90, 5)):
        theta = np.deg2rad(degrees)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / spacing
        lines = np.abs(phase - np.round(phase)) < 0.16
        inked |= lines & (tone > threshold)
    paper = np.array([243, 236, 218]) * (0.95 + 0.05 * smooth_noise(rng, size, size, 40))[..., None]
    pixels = np.where(inked[..., None], np.array([30, 30, 45]), paper)
    return np.clip(pixels, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Input:
    """One gallery input: its file name and how it is made."""

    name: str
    make: Callable[[], Pixels]
    credit: str


CONTENTS = (
    Input("grace_hopper.jpg", grace_hopper, "matplotlib sample data; US Navy photograph, public domain"),
    Input("landscape.png", landscape, "drawn by this script"),
    Input("still_life.png", still_life, "drawn by this script"),
)
STYLES = (
    Input("swirls.png", swirls, "drawn by this script: brush strokes along a flow field"),
    Input("glass.png", stained_glass, "drawn by this script: Voronoi stained glass"),
    Input("ink.png", ink, "drawn by this script: pen hatching"),
)


def write_inputs() -> None:
    """Draw (or copy) every input into docs/gallery/inputs/."""
    INPUTS.mkdir(parents=True, exist_ok=True)
    for item in (*CONTENTS, *STYLES):
        image = Image.fromarray(item.make())
        path = INPUTS / item.name
        if path.suffix == ".jpg":
            image.save(path, quality=90)
        else:
            image.save(path, optimize=True)
        print(f"{path.relative_to(ROOT)}  {image.size[0]}x{image.size[1]}  {item.credit}")


# Stylizations -----------------------------------------------------------------------------------

SIZE = 256
ITERATIONS = 120


def stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def commands() -> list[tuple[str, list[str]]]:
    """(output file, CLI arguments) of every gallery image, in the order the README lists them."""
    runs: list[tuple[str, list[str]]] = []
    for content in CONTENTS:
        for style in STYLES:
            out = f"docs/gallery/{stem(content.name)}-{stem(style.name)}.jpg"
            args = [
                CLI,
                "stylize",
                f"docs/gallery/inputs/{content.name}",
                f"docs/gallery/inputs/{style.name}",
            ]
            args += ["-o", out, "--size", str(SIZE), "--iterations", str(ITERATIONS), "--quality", "90"]
            runs.append((out, args))
    return runs


def stylize(server: str, only: str | None) -> None:
    """Run each gallery command one after the other and record how long each took."""
    record_path = GALLERY / "runs.json"
    records = json.loads(record_path.read_text()) if record_path.exists() else {}
    # The server is named in the environment, so the recorded command is the one a reader types.
    env = {**os.environ, "STYLETRANSFER_SERVER": server}
    for out, args in commands():
        if only and only not in out:
            continue
        print("$", shlex.join(args), flush=True)
        start = time.perf_counter()
        # The arguments are this script's own constants, not input from anyone.
        done = subprocess.run([*args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True)  # noqa: S603
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"failed ({done.returncode}): {done.stderr.strip()}")
        final = json.loads(done.stdout.strip().splitlines()[-1])
        records[out] = {"command": shlex.join(args), "wall_seconds": round(seconds, 1), "result": final}
        print(f"  {seconds:.1f} s", flush=True)
        record_path.write_text(json.dumps(records, indent=2) + "\n")


def contact_sheet(thumb: int = 160) -> None:
    """One image: the styles across the top, each content down the side, the results between."""
    pad, label = 6, 14
    columns, rows = len(STYLES) + 1, len(CONTENTS) + 1
    sheet = Image.new("RGB", (columns * (thumb + pad) + pad, rows * (thumb + pad + label) + pad), "white")
    draw = ImageDraw.Draw(sheet)

    def place(path: Path, column: int, row: int, caption: str) -> None:
        image = Image.open(path).convert("RGB")
        image.thumbnail((thumb, thumb), Image.Resampling.LANCZOS)
        x = pad + column * (thumb + pad) + (thumb - image.width) // 2
        y = pad + row * (thumb + pad + label) + (thumb - image.height) // 2
        sheet.paste(image, (x, y))
        draw.text(
            (pad + column * (thumb + pad), pad + row * (thumb + pad + label) + thumb + 1),
            caption,
            fill="black",
        )

    for column, style in enumerate(STYLES, start=1):
        place(INPUTS / style.name, column, 0, f"style: {stem(style.name)}")
    for row, content in enumerate(CONTENTS, start=1):
        place(INPUTS / content.name, 0, row, f"content: {stem(content.name)}")
        for column, style in enumerate(STYLES, start=1):
            result = GALLERY / f"{stem(content.name)}-{stem(style.name)}.jpg"
            if result.exists():
                place(result, column, row, f"{SIZE} px, {ITERATIONS} it")
    path = GALLERY / "contact-sheet.jpg"
    sheet.save(path, quality=88)
    print(path.relative_to(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["images", "stylize", "sheet", "commands"])
    parser.add_argument("--server", default="127.0.0.1:50051", help="the server `stylize` talks to")
    parser.add_argument("--only", help="stylize only outputs whose path contains this")
    args = parser.parse_args()
    if args.step == "images":
        write_inputs()
    elif args.step == "stylize":
        stylize(args.server, args.only)
    elif args.step == "commands":
        for _, command in commands():
            print(shlex.join(command))
    else:
        contact_sheet()


if __name__ == "__main__":
    main()
