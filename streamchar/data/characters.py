"""Procedurally drawn talking characters.

An :class:`Identity` is sampled from ``(seed, char_id)``: head shape, palette, eyes, nose,
mouth, hair, accessories, body, background and a voice, in one of three styles:

- ``cartoon``: flat fills with dark outlines;
- ``shaded``: a lit "3D" look, with sphere shading, soft shadows and specular highlights;
- ``textured``: photo-like, with low-frequency skin and hair texture, a blurred room behind.

:class:`CharacterRenderer` draws an identity in a :class:`FaceState` (mouth articulation,
blink, brows, gaze, head pose). Everything that does not change from frame to frame (background,
body, skin, hair, lighting and texture maps) is drawn once; a frame redraws only the eyes, brows
and mouth on a copy of the skin layer, multiplies in the lighting map, lays the hair over it and
places the head with one affine transform. Drawing happens at twice the output size and is
box-filtered down, which anti-aliases every edge.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from streamchar.data.espeak import Voice

STYLES: tuple[str, ...] = ("cartoon", "shaded", "textured")
HAIR_STYLES: tuple[str, ...] = ("bald", "short", "long", "bob", "spiky", "bun", "curly", "mohawk", "ponytail")
ACCESSORIES: tuple[str, ...] = ("none", "glasses", "hat", "earrings", "bow", "headband")
BACKGROUNDS: tuple[str, ...] = ("solid", "gradient", "stripes", "dots", "checker", "room")
VOICE_VARIANTS: tuple[str, ...] = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3",
    "Andy", "Annie", "Alicia", "Denis", "Gene", "Jacky", "Lee", "Mike", "adam", "anika", "benjamin",
    "caleb", "david", "ed", "edward", "iven", "john", "linda", "max", "michel", "norbert", "paul",
    "pedro", "quincy", "rob", "robert", "steph", "travis", "victor", "zac",
)  # fmt: skip

SUPERSAMPLE = 2
Color = tuple[int, int, int]


# -- identity -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    """Everything that makes one character look and sound like itself.

    Geometry is in fractions of the canvas side; colours are RGB 0..255.
    """

    char_id: int
    style: str
    head_cx: float
    head_cy: float
    head_rx: float
    head_ry: float
    jaw: float  # 0 = round chin .. 1 = square jaw
    ear_size: float
    eye_dx: float  # half distance between eye centres
    eye_dy: float  # eye height relative to head centre (negative = up)
    eye_rx: float
    eye_ry: float
    lashes: bool
    iris_color: Color
    brow_thickness: float
    brow_tilt: float
    nose_kind: int  # 0 dot, 1 triangle, 2 hook line, 3 round
    nose_size: float
    mouth_dy: float  # mouth height below head centre
    mouth_w: float  # half width at rest
    lip_color: Color
    skin: Color
    hair_style: str
    hair_color: Color
    accessory: str
    accessory_color: Color
    shirt_color: Color
    collar: int  # 0 round, 1 v-neck, 2 shirt collar
    background: str
    bg_colors: tuple[Color, Color, Color]
    outline_color: Color
    blush: bool
    expressiveness: float  # scales mouth opening
    head_motion: float  # scales head sway
    blink_rate: float  # blinks per second at rest
    voice: Voice
    texture_seed: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voice"] = self.voice.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Identity:
        d = dict(d)
        d["voice"] = Voice(**d["voice"])
        for key in (
            "iris_color",
            "lip_color",
            "skin",
            "hair_color",
            "accessory_color",
            "shirt_color",
            "outline_color",
        ):
            d[key] = tuple(d[key])
        d["bg_colors"] = tuple(tuple(c) for c in d["bg_colors"])
        return cls(**d)


def _hsv(h: float, s: float, v: float) -> Color:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return int(r * 255), int(g * 255), int(b * 255)


_SKIN_TONES: tuple[Color, ...] = (
    (255, 224, 196), (241, 194, 167), (224, 172, 136), (198, 134, 96), (161, 102, 68), (120, 76, 52),
    (255, 213, 170), (234, 192, 134), (92, 58, 40),
)  # fmt: skip
_HAIR_TONES: tuple[Color, ...] = (
    (30, 24, 20), (70, 44, 28), (120, 76, 40), (200, 160, 90), (230, 210, 150), (160, 60, 30),
    (110, 110, 115), (235, 235, 235),
)  # fmt: skip


def sample_identity(seed: int, char_id: int, styles: tuple[str, ...] | list[str] = STYLES) -> Identity:
    """A deterministic identity for ``(seed, char_id)``; styles rotate with ``char_id``."""
    rng = np.random.default_rng([seed, char_id, 0x1D])
    style = styles[char_id % len(styles)]
    fantasy = style == "cartoon" and rng.random() < 0.25
    if fantasy:
        skin = _hsv(rng.random(), rng.uniform(0.25, 0.5), rng.uniform(0.75, 0.95))
    else:
        base = np.array(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], dtype=float)
        skin = tuple(int(c) for c in np.clip(base + rng.normal(0, 8, 3), 0, 255))
    if rng.random() < 0.2:
        hair = _hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.9))
    else:
        base = np.array(_HAIR_TONES[rng.integers(len(_HAIR_TONES))], dtype=float)
        hair = tuple(int(c) for c in np.clip(base + rng.normal(0, 10, 3), 0, 255))
    hue = rng.random()
    bg_colors = (
        _hsv(hue, rng.uniform(0.15, 0.5), rng.uniform(0.55, 0.95)),
        _hsv(hue + rng.uniform(0.05, 0.4), rng.uniform(0.15, 0.6), rng.uniform(0.4, 0.9)),
        _hsv(hue + rng.uniform(0.4, 0.6), rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.9)),
    )
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS) - 1)]
    if style == "textured":
        background = "room" if rng.random() < 0.7 else "gradient"
    lip = np.array(skin, dtype=float) * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5])
    if rng.random() < 0.3:
        lip = np.array(_hsv(rng.uniform(-0.05, 0.03), rng.uniform(0.5, 0.8), rng.uniform(0.55, 0.85)))
    head_rx = rng.uniform(0.245, 0.3)
    variant = VOICE_VARIANTS[rng.integers(len(VOICE_VARIANTS))]
    voice = Voice(
        language="en-us" if rng.random() < 0.75 else "en",  # en = British
        variant=variant,
        pitch=int(rng.integers(25, 76)),
        pitch_range=int(rng.integers(35, 91)),
        rate=int(rng.integers(140, 196)),
    )
    return Identity(
        char_id=char_id,
        style=style,
        head_cx=0.5 + rng.uniform(-0.03, 0.03),
        head_cy=rng.uniform(0.45, 0.49),
        head_rx=head_rx,
        head_ry=head_rx * rng.uniform(1.05, 1.22),
        jaw=rng.uniform(0.0, 1.0),
        ear_size=rng.uniform(0.0, 1.0) if rng.random() < 0.8 else 0.0,
        eye_dx=head_rx * rng.uniform(0.36, 0.5),
        eye_dy=-head_rx * rng.uniform(0.0, 0.22),
        eye_rx=head_rx * rng.uniform(0.13, 0.21),
        eye_ry=head_rx * rng.uniform(0.11, 0.2),
        lashes=bool(rng.random() < 0.4),
        iris_color=_hsv(
            rng.choice([0.08, 0.3, 0.55, 0.6, 0.1]), rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.7)
        ),
        brow_thickness=rng.uniform(0.5, 1.5),
        brow_tilt=rng.uniform(-0.4, 0.4),
        nose_kind=int(rng.integers(4)),
        nose_size=rng.uniform(0.7, 1.3),
        mouth_dy=head_rx * rng.uniform(0.5, 0.68),
        mouth_w=head_rx * rng.uniform(0.26, 0.4),
        lip_color=tuple(int(c) for c in np.clip(lip, 0, 255)),
        skin=skin,
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hair_color=hair,
        accessory=ACCESSORIES[rng.integers(len(ACCESSORIES))] if rng.random() < 0.7 else "none",
        accessory_color=_hsv(rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.9)),
        shirt_color=_hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.9)),
        collar=int(rng.integers(3)),
        background=background,
        bg_colors=bg_colors,
        outline_color=(int(rng.integers(15, 50)),) * 3,
        blush=bool(rng.random() < 0.35),
        expressiveness=rng.uniform(0.8, 1.2),
        head_motion=rng.uniform(0.6, 1.4),
        blink_rate=rng.uniform(0.18, 0.45),
        voice=voice,
        texture_seed=int(rng.integers(2**31)),
    )


# -- per-frame state ----------------------------------------------------------------------------
@dataclass
class FaceState:
    """What changes from frame to frame. Articulation values in [0, 1]; pose in degrees."""

    open: float = 0.0
    width: float = 0.5
    round: float = 0.0
    teeth: float = 0.0
    tongue: float = 0.0
    smile: float = 0.2  # -1 frown .. 1 smile
    blink: float = 0.0  # 0 open .. 1 closed
    brow: float = 0.0  # -1 lowered .. 1 raised
    gaze_x: float = 0.0  # -1 .. 1
    gaze_y: float = 0.0
    yaw: float = 0.0  # degrees, + turns towards the viewer's right
    pitch: float = 0.0  # degrees, + looks down (nod)
    roll: float = 0.0  # degrees
    shift_x: float = 0.0  # head translation, fractions of the canvas
    shift_y: float = 0.0


YAW_RANGE = 20.0  # degrees at which features reach their largest parallax
PITCH_RANGE = 15.0


# -- small geometry helpers -----------------------------------------------------------------------
def _ellipse_points(
    cx: float, cy: float, rx: float, ry: float, n: int = 48, exponent: float = 2.0
) -> np.ndarray:
    """Points on a superellipse (exponent 2 = ellipse; larger = squarer), ``[n, 2]``."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    p = 2.0 / exponent
    x = cx + rx * np.sign(c) * np.abs(c) ** p
    y = cy + ry * np.sign(s) * np.abs(s) ** p
    return np.stack([x, y], axis=1)


def _head_outline(ident: Identity, px: float, grow: float = 1.0) -> np.ndarray:
    """Head silhouette in pixels: an ellipse whose lower half narrows into a chin or a jaw."""
    cx, cy = ident.head_cx * px, ident.head_cy * px
    rx, ry = ident.head_rx * px * grow, ident.head_ry * px * grow
    t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    exponent = 2.0 + 1.6 * ident.jaw * (s > 0)  # squarer lower half for a strong jaw
    p = 2.0 / exponent
    x = np.sign(c) * np.abs(c) ** p
    y = np.sign(s) * np.abs(s) ** p
    taper = 1.0 - (0.22 - 0.12 * ident.jaw) * np.clip(y, 0, None) ** 2  # narrower towards the chin
    return np.stack([cx + rx * x * taper, cy + ry * y], axis=1)


def _clip_below(points: np.ndarray, y_cut: float, keep_above: bool = True) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon against the half plane y <= y_cut (or >=)."""
    out = []
    n = len(points)

    def inside(p: np.ndarray) -> bool:
        return p[1] <= y_cut if keep_above else p[1] >= y_cut

    for i in range(n):
        cur, nxt = points[i], points[(i + 1) % n]
        if inside(cur):
            out.append(cur)
        if inside(cur) != inside(nxt):
            t = (y_cut - cur[1]) / (nxt[1] - cur[1])
            out.append(cur + t * (nxt - cur))
    return np.array(out) if out else np.zeros((0, 2))


def _poly(draw: ImageDraw.ImageDraw, pts: np.ndarray, fill, outline=None, width: int = 0) -> None:
    if len(pts) >= 3:
        draw.polygon([tuple(p) for p in pts], fill=fill, outline=outline, width=width)


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(min(max(c * factor, 0), 255)) for c in color)  # type: ignore[return-value]


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Low-frequency noise in [-1, 1], ``[size, size]``: blurred white noise at a coarse grid."""
    coarse = max(2, int(size / scale))
    grid = rng.standard_normal((coarse, coarse)).astype(np.float32)
    img = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32)
    return arr / (np.abs(arr).max() + 1e-6)


# -- renderer -------------------------------------------------------------------------------------
@dataclass
class _Layers:
    background: Image.Image  # RGBA, full canvas
    back: Image.Image  # RGBA, head-local: hair behind the head and the neck
    body: Image.Image  # RGBA, full canvas: shoulders and shirt
    skin: Image.Image  # RGBA, head-local: head, ears, nose, blush
    front: Image.Image  # RGBA, head-local: hair over the face and head accessories
    light: Image.Image | None  # RGB multiplier (lighting x texture) for the face layer
    specular: Image.Image | None  # RGB added light (screen) for the face layer
    pivot: tuple[float, float] = field(default=(0.0, 0.0))


class CharacterRenderer:
    """Draws one identity at ``size`` x ``size`` pixels."""

    def __init__(self, identity: Identity, size: int = 128) -> None:
        if size < 32 or size % 2:
            raise ValueError(f"Character frames must be at least 32 pixels and even in size, got {size}.")
        self.identity = identity
        self.size = size
        self.px = float(size * SUPERSAMPLE)
        self._layers = self._build_layers()

    # ---- static layers ----
    def _build_layers(self) -> _Layers:
        ident, px = self.identity, self.px
        n = int(px)
        rng = np.random.default_rng(ident.texture_seed)
        outline = ident.outline_color if ident.style == "cartoon" else None
        ow = max(1, int(round(px * 0.008))) if outline else 0

        background = self._draw_background(rng)

        # hair behind the head, and the neck
        back = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        d = ImageDraw.Draw(back)
        self._draw_hair_back(d, outline, ow)
        neck_w = ident.head_rx * 0.42 * px
        ncx, ncy = ident.head_cx * px, (ident.head_cy + ident.head_ry * 0.7) * px
        neck_color = _shade(ident.skin, 0.85)
        d.rectangle(
            [ncx - neck_w, ncy - 0.05 * px, ncx + neck_w, 1.0 * px],
            fill=neck_color,
            outline=outline,
            width=ow,
        )

        body = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        d = ImageDraw.Draw(body)
        self._draw_body(d, outline, ow)

        skin = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        d = ImageDraw.Draw(skin)
        self._draw_ears(d, outline, ow)
        head = _head_outline(ident, px)
        _poly(d, head, ident.skin + (255,), outline, ow)
        if ident.style == "cartoon":  # cel shadow down one side of the face
            shadow = _head_outline(ident, px, grow=0.96) + np.array([0.05 * ident.head_rx * px, 0.0])
            mask = Image.new("L", (n, n), 0)
            ImageDraw.Draw(mask).polygon([tuple(p) for p in head], fill=255)
            cut = Image.new("L", (n, n), 0)
            ImageDraw.Draw(cut).polygon([tuple(p) for p in shadow], fill=255)
            mask = ImageChops.subtract(mask, cut)
            skin.paste(_shade(ident.skin, 0.88) + (255,), (0, 0), mask)
            d = ImageDraw.Draw(skin)
            _poly(d, head, None, outline, ow)
        if ident.blush:
            for side in (-1, 1):
                bx = (ident.head_cx + side * ident.eye_dx * 1.15) * px
                by = (ident.head_cy + ident.eye_dy + ident.head_ry * 0.35) * px
                r = ident.head_rx * 0.17 * px
                d.ellipse(
                    [bx - r, by - r * 0.6, bx + r, by + r * 0.6],
                    fill=_blend(ident.skin, (240, 110, 120), 0.35),
                )

        front = Image.new("RGBA", (n, n), (0, 0, 0, 0))
        self._draw_hair_front(ImageDraw.Draw(front), outline, ow)
        self._draw_head_accessory(ImageDraw.Draw(front), outline, ow)

        light = specular = None
        if ident.style in ("shaded", "textured"):
            light, specular = self._lighting_maps(rng)
            if ident.style == "textured":
                front = self._texture_hair(front, rng)
            back_rgb = ImageChops.multiply(back.convert("RGB"), light)
            back = Image.merge("RGBA", (*back_rgb.split(), back.getchannel("A")))
            front_rgb = ImageChops.multiply(front.convert("RGB"), light)
            front = Image.merge("RGBA", (*front_rgb.split(), front.getchannel("A")))
            body = self._shade_body(body)
        pivot = (ident.head_cx * px, (ident.head_cy + ident.head_ry * 0.85) * px)
        return _Layers(background, back, body, skin, front, light, specular, pivot)

    def _draw_background(self, rng: np.random.Generator) -> Image.Image:
        ident, n = self.identity, int(self.px)
        c0, c1, c2 = ident.bg_colors
        img = Image.new("RGB", (n, n), c0)
        d = ImageDraw.Draw(img)
        kind = ident.background
        if kind == "gradient" or kind == "room":
            t = np.linspace(0, 1, n, dtype=np.float32)[:, None, None]
            arr = (1 - t) * np.array(c0, np.float32) + t * np.array(c1, np.float32)
            img = Image.fromarray(np.repeat(arr, n, axis=1).astype(np.uint8))
            d = ImageDraw.Draw(img)
        if kind == "stripes":
            w = n / rng.uniform(5, 10)
            for k in range(-n, 2 * n, int(2 * w)):
                d.polygon([(k, 0), (k + w, 0), (k + w - n * 0.5, n), (k - n * 0.5, n)], fill=c1)
        elif kind == "dots":
            step = n / rng.uniform(5, 9)
            r = step * rng.uniform(0.15, 0.3)
            for yi, y in enumerate(np.arange(step / 2, n, step)):
                for x in np.arange(step / 2 + (step / 2) * (yi % 2), n, step):
                    d.ellipse([x - r, y - r, x + r, y + r], fill=c1)
        elif kind == "checker":
            step = n / rng.integers(4, 9)
            for yi in range(int(n / step) + 1):
                for xi in range(int(n / step) + 1):
                    if (xi + yi) % 2:
                        d.rectangle([xi * step, yi * step, (xi + 1) * step, (yi + 1) * step], fill=c1)
        elif kind == "room":
            # shelves, frames and a window, blurred like a shallow depth of field
            for _ in range(rng.integers(4, 9)):
                x0, y0 = rng.uniform(-0.1, 0.9) * n, rng.uniform(-0.1, 0.8) * n
                w, h = rng.uniform(0.1, 0.45) * n, rng.uniform(0.05, 0.4) * n
                col = _blend(c2, _hsv(rng.random(), 0.4, rng.uniform(0.3, 1.0)), rng.uniform(0.2, 0.7))
                d.rectangle([x0, y0, x0 + w, y0 + h], fill=col)
            for _ in range(rng.integers(2, 6)):
                x, y, r = rng.uniform(0, n), rng.uniform(0, n * 0.6), rng.uniform(0.02, 0.08) * n
                d.ellipse([x - r, y - r, x + r, y + r], fill=_blend(c0, (255, 250, 230), 0.7))
            img = img.filter(ImageFilter.GaussianBlur(radius=n * 0.02))
        if self.identity.style == "textured":
            noise = _smooth_noise(rng, n, scale=n / 6.0)
            arr = np.asarray(img, dtype=np.float32) * (1.0 + 0.06 * noise[..., None])
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return img.convert("RGBA")

    def _draw_body(self, d: ImageDraw.ImageDraw, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx = ident.head_cx * px
        top = (ident.head_cy + ident.head_ry * 1.05) * px
        sw = ident.head_rx * 2.3 * px
        d.rounded_rectangle(
            [cx - sw, top, cx + sw, px * 1.3], radius=int(ident.head_rx * 0.9 * px), fill=ident.shirt_color,
            outline=outline, width=ow,
        )  # fmt: skip
        neck_w = ident.head_rx * 0.42 * px
        if ident.collar == 0:
            d.chord([cx - neck_w * 1.4, top - neck_w * 0.9, cx + neck_w * 1.4, top + neck_w * 0.9], 0, 180,
                     fill=_shade(ident.skin, 0.85), outline=outline, width=ow)  # fmt: skip
        elif ident.collar == 1:
            d.polygon([(cx - neck_w * 1.2, top), (cx + neck_w * 1.2, top), (cx, top + neck_w * 2.2)],
                      fill=_shade(ident.skin, 0.85), outline=outline, width=ow)  # fmt: skip
        else:
            col = _shade(ident.shirt_color, 1.25)
            for side in (-1, 1):
                d.polygon([(cx, top + neck_w * 0.9), (cx + side * neck_w * 1.1, top - neck_w * 0.1),
                           (cx + side * neck_w * 1.9, top + neck_w * 0.6)], fill=col, outline=outline, width=ow)  # fmt: skip

    def _shade_body(self, body: Image.Image) -> Image.Image:
        n = body.size[0]
        y = np.linspace(0, 1, n, dtype=np.float32)[:, None]
        x = np.linspace(-1, 1, n, dtype=np.float32)[None, :]
        shade = np.clip(1.05 - 0.35 * np.abs(x + 0.3) ** 2 - 0.15 * y, 0.5, 1.0)
        mul = Image.fromarray((np.repeat(shade[..., None], 3, axis=2) * 255).astype(np.uint8))
        rgb = ImageChops.multiply(body.convert("RGB"), mul)
        return Image.merge("RGBA", (*rgb.split(), body.getchannel("A")))

    def _draw_ears(self, d: ImageDraw.ImageDraw, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        if ident.ear_size <= 0:
            return
        r = ident.head_rx * (0.14 + 0.12 * ident.ear_size) * px
        for side in (-1, 1):
            ex = (ident.head_cx + side * ident.head_rx * 0.97) * px
            ey = (ident.head_cy + ident.eye_dy + ident.head_ry * 0.12) * px
            d.ellipse(
                [ex - r * 0.75, ey - r, ex + r * 0.75, ey + r], fill=ident.skin, outline=outline, width=ow
            )
            d.ellipse(
                [ex - r * 0.35, ey - r * 0.5, ex + r * 0.35, ey + r * 0.5], fill=_shade(ident.skin, 0.8)
            )
            if ident.accessory == "earrings":
                er = r * 0.3
                d.ellipse([ex - er, ey + r * 0.9, ex + er, ey + r * 0.9 + 2 * er], fill=ident.accessory_color,
                          outline=outline, width=ow)  # fmt: skip

    def _hair_cap(self, grow: float, depth: float) -> np.ndarray:
        """The part of a slightly larger head outline above the fringe line."""
        ident, px = self.identity, self.px
        outline = _head_outline(ident, px, grow=grow) + np.array([0.0, -0.015 * px])
        fringe = (ident.head_cy - ident.head_ry * depth) * px
        return _clip_below(outline, fringe, keep_above=True)

    def _draw_hair_back(self, d: ImageDraw.ImageDraw, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx, cy, rx, ry = ident.head_cx * px, ident.head_cy * px, ident.head_rx * px, ident.head_ry * px
        col, style = ident.hair_color, ident.hair_style
        if style == "long":
            d.rounded_rectangle([cx - rx * 1.2, cy - ry * 1.05, cx + rx * 1.2, cy + ry * 1.7], radius=int(rx * 0.8),
                                fill=col, outline=outline, width=ow)  # fmt: skip
        elif style == "bob":
            d.rounded_rectangle([cx - rx * 1.15, cy - ry * 1.08, cx + rx * 1.15, cy + ry * 0.75], radius=int(rx * 0.7),
                                fill=col, outline=outline, width=ow)  # fmt: skip
        elif style == "curly":
            rng = np.random.default_rng(ident.texture_seed + 7)
            for k in range(22):
                a = math.pi * (1.05 + 0.9 * k / 21)
                r = rx * rng.uniform(0.28, 0.4)
                x, y = cx + math.cos(a) * rx * 1.02, cy + math.sin(a) * ry * 0.98 - ry * 0.05
                d.ellipse([x - r, y - r, x + r, y + r], fill=col, outline=outline, width=ow)
        elif style == "ponytail":
            d.ellipse(
                [cx + rx * 0.6, cy - ry * 0.4, cx + rx * 1.5, cy + ry * 1.1],
                fill=col,
                outline=outline,
                width=ow,
            )
        elif style == "bun":
            r = rx * 0.38
            d.ellipse([cx - r, cy - ry * 1.05 - r * 1.6, cx + r, cy - ry * 1.05 + r * 0.4], fill=col, outline=outline,
                      width=ow)  # fmt: skip

    def _draw_hair_front(self, d: ImageDraw.ImageDraw, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx, cy, rx, ry = ident.head_cx * px, ident.head_cy * px, ident.head_rx * px, ident.head_ry * px
        col, style = ident.hair_color, ident.hair_style
        if style == "bald":
            return
        if style == "mohawk":
            for k in range(5):
                x = cx + (k - 2) * rx * 0.12
                d.polygon([(x - rx * 0.1, cy - ry * 0.8), (x + rx * 0.1, cy - ry * 0.8), (x, cy - ry * 1.35)],
                          fill=col, outline=outline, width=ow)  # fmt: skip
            return
        depth = {
            "short": 0.55,
            "long": 0.5,
            "bob": 0.42,
            "spiky": 0.55,
            "bun": 0.6,
            "curly": 0.6,
            "ponytail": 0.58,
        }
        cap = self._hair_cap(grow=1.06, depth=depth.get(style, 0.55))
        _poly(d, cap, col, outline, ow)
        if style == "bob":  # straight bangs
            d.rectangle([cx - rx * 0.85, cy - ry * 0.75, cx + rx * 0.85, cy - ry * 0.42], fill=col)
        if style in ("long", "bob"):  # side locks framing the face
            for side in (-1, 1):
                x0 = cx + side * rx * 0.98
                d.polygon([(x0, cy - ry * 0.6), (x0 + side * rx * 0.2, cy - ry * 0.5),
                           (x0 + side * rx * 0.15, cy + ry * (0.9 if style == "long" else 0.6)),
                           (x0 - side * rx * 0.08, cy + ry * 0.3)], fill=col)  # fmt: skip
        if style == "spiky":
            for k in range(7):
                a = math.pi * (1.12 + 0.76 * k / 6)
                bx, by = cx + math.cos(a) * rx * 0.9, cy + math.sin(a) * ry * 0.9
                tx, ty = cx + math.cos(a) * rx * 1.35, cy + math.sin(a) * ry * 1.3
                nx, ny = -math.sin(a) * rx * 0.18, math.cos(a) * rx * 0.18
                d.polygon(
                    [(bx - nx, by - ny), (bx + nx, by + ny), (tx, ty)], fill=col, outline=outline, width=ow
                )

    def _draw_head_accessory(self, d: ImageDraw.ImageDraw, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx, cy, rx, ry = ident.head_cx * px, ident.head_cy * px, ident.head_rx * px, ident.head_ry * px
        col = ident.accessory_color
        if ident.accessory == "hat":
            d.rounded_rectangle([cx - rx * 1.25, cy - ry * 0.82, cx + rx * 1.25, cy - ry * 0.68], radius=int(rx * 0.05),
                                fill=col, outline=outline, width=ow)  # fmt: skip
            d.chord([cx - rx * 0.95, cy - ry * 1.45, cx + rx * 0.95, cy - ry * 0.35], 180, 360, fill=col,
                    outline=outline, width=ow)  # fmt: skip
        elif ident.accessory == "headband":
            band = _clip_below(
                _head_outline(ident, px, grow=1.08), (ident.head_cy - ident.head_ry * 0.62) * px
            )
            band = _clip_below(band, (ident.head_cy - ident.head_ry * 0.78) * px, keep_above=False)
            _poly(d, band, col, outline, ow)
        elif ident.accessory == "bow":
            bx, by, r = cx + rx * 0.55, cy - ry * 0.85, rx * 0.22
            d.polygon(
                [(bx, by), (bx - r * 1.6, by - r), (bx - r * 1.6, by + r)],
                fill=col,
                outline=outline,
                width=ow,
            )
            d.polygon(
                [(bx, by), (bx + r * 1.6, by - r), (bx + r * 1.6, by + r)],
                fill=col,
                outline=outline,
                width=ow,
            )
            d.ellipse([bx - r * 0.4, by - r * 0.4, bx + r * 0.4, by + r * 0.4], fill=_shade(col, 0.8))

    def _lighting_maps(self, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
        """Sphere shading of the head (with texture for the textured style) and a specular map."""
        ident, n = self.identity, int(self.px)
        ys, xs = np.mgrid[0:n, 0:n].astype(np.float32) / n
        nx = (xs - ident.head_cx) / (ident.head_rx * 1.15)
        ny = (ys - ident.head_cy) / (ident.head_ry * 1.15)
        r2 = np.clip(nx**2 + ny**2, 0, 1)
        nz = np.sqrt(1 - r2)
        light = np.array([-0.45, -0.55, 0.7], dtype=np.float32)
        light /= np.linalg.norm(light)
        diffuse = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
        shade = 0.62 + 0.38 * diffuse
        shade = np.where(r2 >= 1, 0.85, shade)  # outside the head: neck, hair fringe ends
        mul = np.repeat(shade[..., None], 3, axis=2)
        if ident.style == "textured":
            mottling = _smooth_noise(rng, n, scale=n / 10.0)
            warmth = _smooth_noise(rng, n, scale=n / 4.0)
            mul = mul * (1.0 + 0.05 * mottling[..., None])
            mul[..., 0] *= 1.0 + 0.03 * warmth
            mul[..., 2] *= 1.0 - 0.03 * warmth
        half = light + np.array([0, 0, 1], np.float32)
        half /= np.linalg.norm(half)
        spec = np.clip(nx * half[0] + ny * half[1] + nz * half[2], 0, 1) ** 24 * (r2 < 1)
        spec_strength = 0.35 if ident.style == "shaded" else 0.18
        specular = np.repeat((spec * spec_strength * 255)[..., None], 3, axis=2)
        return (
            Image.fromarray(np.clip(mul * 255, 0, 255).astype(np.uint8)),
            Image.fromarray(specular.astype(np.uint8)),
        )

    def _texture_hair(self, front: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Streaks along the hair: noise stretched vertically, multiplied into the hair colour."""
        n = front.size[0]
        streaks = rng.standard_normal((8, max(4, n // 6))).astype(np.float32)
        img = Image.fromarray(streaks).resize((n, n), Image.BICUBIC)
        tex = np.asarray(img, dtype=np.float32)
        tex = 1.0 + 0.12 * tex / (np.abs(tex).max() + 1e-6)
        arr = np.asarray(front, dtype=np.float32).copy()
        arr[..., :3] *= tex[..., None]
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    # ---- per frame ----
    def render(self, state: FaceState) -> np.ndarray:
        """One frame, ``uint8 [size, size, 3]``."""
        ident, layers, px = self.identity, self._layers, self.px
        face = layers.skin.copy()
        d = ImageDraw.Draw(face)
        outline = ident.outline_color if ident.style == "cartoon" else None
        ow = max(1, int(round(px * 0.008))) if outline else 0
        yaw = np.clip(state.yaw / YAW_RANGE, -1.5, 1.5)
        pitch = np.clip(state.pitch / PITCH_RANGE, -1.5, 1.5)
        # parallax: features sit in front of the head's centre of rotation, the nose furthest
        fdx = yaw * ident.head_rx * 0.28 * px
        fdy = pitch * ident.head_ry * 0.12 * px
        self._draw_nose(d, fdx * 1.4, fdy * 1.2, outline, ow)
        self._draw_eyes(d, state, yaw, fdx, fdy, outline, ow)
        self._draw_mouth(d, state, fdx, fdy, outline, ow)
        if layers.light is not None:
            rgb = ImageChops.multiply(face.convert("RGB"), layers.light)
            if layers.specular is not None:
                rgb = ImageChops.screen(rgb, layers.specular)
            face = Image.merge("RGBA", (*rgb.split(), face.getchannel("A")))
        face.alpha_composite(layers.front)
        if ident.accessory == "glasses":
            self._draw_glasses(ImageDraw.Draw(face), fdx, fdy, yaw)

        # place the head: roll about the neck, then translate with the sway
        shift = (state.shift_x * px + fdx * 0.35, state.shift_y * px + fdy * 0.25)
        back = layers.back.rotate(state.roll, resample=Image.BILINEAR, center=layers.pivot, translate=shift)
        face = face.rotate(state.roll, resample=Image.BILINEAR, center=layers.pivot, translate=shift)
        frame = layers.background.copy()
        frame.alpha_composite(back)
        frame.alpha_composite(layers.body)
        frame.alpha_composite(face)
        return np.asarray(frame.convert("RGB").resize((self.size, self.size), Image.BOX))

    def mouth_box(self, state: FaceState) -> tuple[float, float, float, float]:
        """Where :meth:`render` may draw the mouth in this state: ``(x0, y0, x1, y1)`` as fractions of the frame.

        The box holds the widest and most open mouth this identity can make (whatever ``open``, ``width``
        and ``smile`` are now), placed at this frame's head pose: the parallax of :meth:`_draw_mouth`, then
        the roll about the neck and the sway that :meth:`render` applies to the face layer. Training
        weights the loss inside it, so it is the region where lip sync lives."""
        ident, px = self.identity, self.px
        yaw = np.clip(state.yaw / YAW_RANGE, -1.5, 1.5)
        pitch = np.clip(state.pitch / PITCH_RANGE, -1.5, 1.5)
        fdx = yaw * ident.head_rx * 0.28 * px
        fdy = pitch * ident.head_ry * 0.12 * px
        cx = ident.head_cx * px + fdx * 1.1  # the mouth's centre on the face layer (see _draw_mouth)
        cy = (ident.head_cy + ident.mouth_dy) * px + fdy
        lip_th = max(1.5, ident.mouth_w * px * 0.11)
        half_w = ident.mouth_w * px * 1.28 + lip_th * 0.6
        smile = ident.mouth_w * px * 0.25  # |smile| <= 1 bends the corners by up to this much
        half_h = 0.5 * 1.2 * ident.head_ry * 0.34 * ident.expressiveness * px + lip_th + smile
        corners = np.array([[cx - half_w, cy - half_h], [cx + half_w, cy - half_h],
                            [cx - half_w, cy + half_h], [cx + half_w, cy + half_h]])  # fmt: skip
        # PIL's rotate(angle, center, translate) turns the layer counter-clockwise on screen (y down)
        pivot = np.array(self._layers.pivot)
        theta = math.radians(state.roll)
        rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
        shift = np.array([state.shift_x * px + fdx * 0.35, state.shift_y * px + fdy * 0.25])
        placed = (corners - pivot) @ rot.T + pivot + shift
        x0, y0 = np.clip(placed.min(axis=0) / px, 0.0, 1.0)
        x1, y1 = np.clip(placed.max(axis=0) / px, 0.0, 1.0)
        return float(x0), float(y0), float(x1), float(y1)

    def _draw_nose(self, d: ImageDraw.ImageDraw, dx: float, dy: float, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx = ident.head_cx * px + dx
        cy = (ident.head_cy + (ident.eye_dy + ident.mouth_dy) * 0.55) * px + dy
        s = ident.head_rx * 0.09 * ident.nose_size * px
        dark = _shade(ident.skin, 0.72)
        if ident.nose_kind == 0:
            d.ellipse([cx - s * 0.5, cy - s * 0.35, cx + s * 0.5, cy + s * 0.35], fill=dark)
        elif ident.nose_kind == 1:
            d.polygon([(cx, cy - s * 1.4), (cx - s * 0.8, cy + s * 0.5), (cx + s * 0.8, cy + s * 0.5)],
                      fill=_shade(ident.skin, 0.9), outline=outline, width=ow)  # fmt: skip
        elif ident.nose_kind == 2:
            d.line([(cx, cy - s * 1.5), (cx + s * 0.6, cy + s * 0.3), (cx - s * 0.2, cy + s * 0.5)], fill=dark,
                   width=max(1, int(px * 0.008)))  # fmt: skip
        else:
            d.ellipse([cx - s * 0.9, cy - s * 0.6, cx + s * 0.9, cy + s * 0.6], fill=_shade(ident.skin, 0.92),
                      outline=outline, width=ow)  # fmt: skip
            for side in (-1, 1):
                d.ellipse([cx + side * s * 0.45 - s * 0.15, cy, cx + side * s * 0.45 + s * 0.15, cy + s * 0.25],
                          fill=dark)  # fmt: skip

    def _draw_eyes(self, d, state: FaceState, yaw: float, fdx: float, fdy: float, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        lid_color = ident.skin  # the lighting map shades it like the skin around it
        brow_color = _shade(ident.hair_color if ident.hair_style != "bald" else ident.skin, 0.6)
        for side in (-1, 1):
            # the eye on the side turning away narrows
            squash = 1.0 - 0.3 * max(0.0, side * yaw)
            ex = (ident.head_cx + side * ident.eye_dx * (1 - 0.12 * abs(yaw))) * px + fdx
            ey = (ident.head_cy + ident.eye_dy) * px + fdy
            rx, ry = ident.eye_rx * px * squash, ident.eye_ry * px
            d.ellipse([ex - rx, ey - ry, ex + rx, ey + ry], fill=(248, 248, 245), outline=outline, width=ow)
            ir = min(rx, ry) * 0.62
            room = max(min(rx, ry) - ir, 0) * 0.85
            ix, iy = ex + state.gaze_x * room, ey + state.gaze_y * room * 0.6
            d.ellipse([ix - ir, iy - ir, ix + ir, iy + ir], fill=ident.iris_color)
            pr = ir * 0.5
            d.ellipse([ix - pr, iy - pr, ix + pr, iy + pr], fill=(12, 12, 14))
            hr = ir * 0.28
            d.ellipse([ix - ir * 0.35 - hr, iy - ir * 0.35 - hr, ix - ir * 0.35 + hr, iy - ir * 0.35 + hr],
                      fill=(255, 255, 255))  # fmt: skip
            # upper lid comes down with the blink
            blink = float(np.clip(state.blink, 0, 1))
            lid_y = ey - ry + 2 * ry * blink
            if blink > 0.02:
                pts = [(ex - rx * 1.2, ey - ry * 1.3), (ex + rx * 1.2, ey - ry * 1.3)]
                arc = np.linspace(0, math.pi, 12)
                pts += [
                    (ex + rx * 1.2 * math.cos(a), lid_y + ry * 0.25 * math.sin(a) * (1 - blink)) for a in arc
                ]
                d.polygon(pts, fill=lid_color)
                d.line([(ex - rx * 1.05, lid_y), (ex + rx * 1.05, lid_y)], fill=ident.outline_color,
                       width=max(1, int(px * 0.006)))  # fmt: skip
            if ident.lashes:
                for k in (-1, 0, 1):
                    lx = ex + side * rx * 0.75 + k * rx * 0.2
                    d.line([(lx, lid_y - ry * 0.05), (lx + side * rx * 0.25, lid_y - ry * 0.45)],
                           fill=(20, 20, 20), width=max(1, int(px * 0.005)))  # fmt: skip
            # brow
            by = ey - ry * 1.55 - state.brow * ry * 0.55
            tilt = ident.brow_tilt * ry * 0.5
            bw = rx * 1.25
            th = max(1.0, ident.brow_thickness * px * 0.009)
            d.polygon([(ex - bw, by + side * tilt), (ex + bw, by - side * tilt), (ex + bw, by - side * tilt + th),
                       (ex - bw, by + side * tilt + th * 1.4)], fill=brow_color)  # fmt: skip

    def _draw_mouth(self, d, state: FaceState, fdx: float, fdy: float, outline, ow: int) -> None:
        ident, px = self.identity, self.px
        cx = ident.head_cx * px + fdx * 1.1
        cy = (ident.head_cy + ident.mouth_dy) * px + fdy
        rnd = float(np.clip(state.round, 0, 1))
        w = ident.mouth_w * px * (0.72 + 0.56 * state.width) * (1 - 0.38 * rnd)
        h = float(np.clip(state.open, 0, 1.2)) * ident.head_ry * 0.34 * ident.expressiveness * px
        smile = state.smile * ident.mouth_w * px * 0.25
        lip = ident.lip_color
        lip_th = max(1.5, ident.mouth_w * px * 0.11)
        if h < lip_th * 0.35:  # closed: a lip line bent by the smile, lips pressed a little
            xs = np.linspace(-w, w, 17)
            ys = cy - smile * ((xs / w) ** 2 - 0.3)
            upper = np.stack([cx + xs, ys - lip_th * 0.5 * (1 - (xs / w) ** 2)], axis=1)
            lower = np.stack([cx + xs[::-1], ys[::-1] + lip_th * 0.7 * (1 - (xs[::-1] / w) ** 2)], axis=1)
            _poly(d, np.concatenate([upper, lower]), lip)
            d.line([tuple(p) for p in np.stack([cx + xs, ys], axis=1)], fill=_shade(lip, 0.55),
                   width=max(1, int(px * 0.007)))  # fmt: skip
            if outline:
                d.line([tuple(p) for p in np.stack([cx + xs, ys], axis=1)], fill=outline, width=ow)
            return
        exponent = 2.0 + 1.2 * (1 - rnd)  # squarer when spread, rounder when rounded
        outer = _ellipse_points(cx, cy, w + lip_th * 0.6, h * 0.5 + lip_th, n=40, exponent=exponent)
        outer[:, 1] -= smile * ((outer[:, 0] - cx) / w) ** 2
        inner = _ellipse_points(cx, cy, w, h * 0.5, n=40, exponent=exponent)
        inner[:, 1] -= smile * ((inner[:, 0] - cx) / w) ** 2
        _poly(d, outer, lip, outline, ow)
        _poly(d, inner, (70, 20, 28))
        top = inner[:, 1].min()
        bottom = inner[:, 1].max()
        if state.tongue > 0.05:
            tongue = _clip_below(
                inner, bottom - (bottom - top) * (0.25 + 0.35 * state.tongue), keep_above=False
            )
            _poly(d, tongue, (215, 95, 110))
        if state.teeth > 0.05:
            teeth = _clip_below(inner, top + (bottom - top) * min(0.45, 0.12 + 0.3 * state.teeth))
            _poly(d, teeth, (245, 245, 238))
        if outline:
            _poly(d, inner, None, outline, max(1, ow // 2))

    def _draw_glasses(self, d: ImageDraw.ImageDraw, fdx: float, fdy: float, yaw: float) -> None:
        ident, px = self.identity, self.px
        col = _shade(ident.accessory_color, 0.7)
        width = max(1, int(px * 0.01))
        centres = []
        for side in (-1, 1):
            squash = 1.0 - 0.3 * max(0.0, side * yaw)
            ex = (ident.head_cx + side * ident.eye_dx * (1 - 0.12 * abs(yaw))) * px + fdx * 1.1
            ey = (ident.head_cy + ident.eye_dy) * px + fdy
            r = max(ident.eye_rx, ident.eye_ry) * px * 1.45
            d.ellipse(
                [ex - r * squash, ey - r * 0.85, ex + r * squash, ey + r * 0.85], outline=col, width=width
            )
            centres.append((ex + side * -r * squash, ey - r * 0.2))
        d.line(centres, fill=col, width=width)


def _blend(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]
