"""The generated video dataset: textured shapes moving over a moving textured background, with exact labels and flow.

Every layer (the background and each object) is a textured plane under a time-varying similarity transform
(translation, rotation, scale), plus a small camera jitter shared by all layers and, optionally, a camera that pans
and zooms (Scene.camera_pan, camera_zoom: the world, background and objects, moves in the image). A pixel shows the
front-most
layer whose shape covers it, so labels are exact per pixel, and the flow of a pair (t, t+k) follows from the
visible layer's two transforms: p' = A(t+k) A(t)^-1 p, flow = p' - p, on frame t's grid (the project convention
of docs/conventions.md: warp(frame_{t+k}, flow) ~ frame_t). Objects occlude each other, some leave or enter the
frame, some are thin bars. Class 0 is the background; every object class appears in every clip.

What makes a per-frame model flicker (docs/data.md, `Look`): per-frame nuisances that change pixels, never
geometry: motion blur along each layer's true motion, a moving illumination gradient and shadow, global
gain/offset, signal-dependent sensor noise, JPEG re-encoding at a random quality per frame. What makes
recognition need spatial context (`Scene.lookalike`): classes come in pairs that share colour and texture
statistics and differ only in shape.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from etc_core.data.base import Clip

SHAPES = ("disk", "cross", "square", "ring", "triangle", "diamond", "ellipse")  # look-alike pairs: 1-2, 3-4, 5-6
BLUR_SAMPLES = 5  # sub-frame renderings averaged for motion blur


def class_names(num_classes: int) -> list[str]:
    """Readable class names: background, then shape names (with an index once shapes repeat)."""
    names = ["background"]
    for c in range(1, num_classes):
        shape = SHAPES[(c - 1) % len(SHAPES)]
        names.append(shape if c <= len(SHAPES) else f"{shape}{(c - 1) // len(SHAPES) + 1}")
    return names


@dataclass(frozen=True)
class Scene:
    """Geometry and class appearance (these change labels and flow; all are exact)."""

    object_scale: tuple[float, float] = (0.1, 0.2)  # object radius as a fraction of min(height, width)
    thin_objects: int = 2  # extra thin bars per clip, each of a random object class
    lookalike: bool = True  # classes 2m+1 and 2m+2 share colour and texture statistics, differ in shape and size
    jitter: float = 1.0  # camera jitter, pixels (std of a per-frame shift of every layer; the flow carries it)
    pair_scale: float = 0.75  # with look-alikes: radius factor of the second class of each pair (a size cue)
    camera_pan: float = 0.0  # camera pan, pixels per frame (each clip draws 0.75-1.25x this, within 25 deg of level)
    camera_zoom: float = 0.0  # camera zoom, |log-scale| per frame at most (each clip draws in [-z, z])


@dataclass(frozen=True)
class Look:
    """Per-frame nuisances: they change pixels, never labels or flow."""

    noise: float = 0.02  # per-frame global gain (2*noise) and per-channel offset (255*noise), std
    motion_blur: float = 0.5  # exposure as a fraction of the frame interval (0 = sharp)
    illumination: float = 0.25  # amplitude of the moving light gradient and depth of the moving shadow (0 = off)
    shot_noise: float = 0.3  # sensor noise variance per grey level (signal-dependent part)
    read_noise: float = 2.0  # sensor noise std in grey levels (signal-independent part)
    jpeg_quality: tuple[int, int] | None = (40, 90)  # JPEG re-encoding quality, drawn per frame; None = off

    @classmethod
    def exact(cls) -> "Look":
        """No nuisance at all: frames are exact renderings."""
        return cls(noise=0.0, motion_blur=0.0, illumination=0.0, shot_noise=0.0, read_noise=0.0, jpeg_quality=None)


def _inside(shape: str, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
    """Whether local coordinates (unit radius) lie inside `shape`."""
    if shape == "disk":
        return ux**2 + uy**2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(ux), np.abs(uy)) <= 0.8
    if shape == "triangle":  # equilateral, circumradius 1, apex up
        return (uy <= 0.5) & (np.sqrt(3) * ux - uy <= 1.0) & (-np.sqrt(3) * ux - uy <= 1.0)
    if shape == "ellipse":
        return ux**2 + (uy / 0.55) ** 2 <= 1.0
    if shape == "ring":
        r2 = ux**2 + uy**2
        return (r2 <= 1.0) & (r2 >= 0.45**2)
    if shape == "diamond":
        return np.abs(ux) + np.abs(uy) <= 1.0
    if shape == "cross":
        ax, ay = np.abs(ux), np.abs(uy)
        return ((ax <= 1.0) & (ay <= 0.33)) | ((ay <= 1.0) & (ax <= 0.33))
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class _Layer:
    """A textured plane moving as p = scale(t) * R(angle(t)) u + center(t) + jitter(t); u in the layer's pixels."""

    label: int
    shape: str | None  # None = background (covers everything); "bar" = thin bar of half-width `thin`
    radius: float
    center0: np.ndarray  # [2] (x, y) pixels at t=0
    velocity: np.ndarray  # [2] pixels per frame
    accel: np.ndarray  # [2] pixels per frame^2
    angle0: float
    spin: float  # radians per frame
    scale_rate: float  # log-scale change per frame
    colour: np.ndarray  # [3] base RGB in [0,255]
    freqs: np.ndarray  # [K,2] cycles per pixel
    phases: np.ndarray  # [K]
    amps: np.ndarray  # [K,3] per-channel amplitude
    jitter: np.ndarray = field(default_factory=lambda: np.zeros((1, 2)))  # [T,2] camera shift per frame, shared
    thin: float = 0.0  # bar half-width relative to radius
    camera: "_Camera | None" = None  # camera pan and zoom, shared by every layer of a clip; None: a still camera

    def pose(self, t: float) -> tuple[np.ndarray, float, float]:
        i = int(np.clip(np.floor(t), 0, len(self.jitter) - 1))
        j = int(min(i + 1, len(self.jitter) - 1))
        f = float(np.clip(t - i, 0.0, 1.0))
        center = self.center0 + self.velocity * t + 0.5 * self.accel * t * t
        scale = float(np.exp(self.scale_rate * t))
        if self.camera is not None:  # world -> image: p = origin + zoom(t) (p_world + drift t - origin)
            zoom = float(np.exp(self.camera.zoom * t))
            center = self.camera.origin + zoom * (center + self.camera.drift * t - self.camera.origin)
            scale *= zoom
        return center + (1 - f) * self.jitter[i] + f * self.jitter[j], self.angle0 + self.spin * t, scale

    def to_local(self, t: float, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image points -> layer coordinates (pixels of the layer at scale 1)."""
        center, angle, scale = self.pose(t)
        dx, dy = x - center[0], y - center[1]
        c, s = np.cos(angle), np.sin(angle)
        return (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale

    def to_image(self, t: float, ux: np.ndarray, uy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        center, angle, scale = self.pose(t)
        c, s = np.cos(angle), np.sin(angle)
        return center[0] + scale * (c * ux - s * uy), center[1] + scale * (s * ux + c * uy)

    def covers(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        if self.shape is None:
            return np.ones(ux.shape, bool)
        if self.shape == "bar":
            return (np.abs(ux) <= self.radius) & (np.abs(uy) <= self.thin * self.radius)
        return _inside(self.shape, ux / self.radius, uy / self.radius)

    def texture(self, ux: np.ndarray, uy: np.ndarray) -> np.ndarray:
        """RGB float [...,3]: base colour plus a few sinusoidal gratings fixed to the layer."""
        waves = np.sin(2 * np.pi * (ux[..., None] * self.freqs[:, 0] + uy[..., None] * self.freqs[:, 1])
                       + self.phases)  # [...,K]
        return self.colour + waves @ self.amps


@dataclass(frozen=True)
class _Camera:
    """A camera panning at a constant rate and zooming about the image centre: world points move in the image by
    `drift` pixels per frame and scale about `origin` by exp(zoom) per frame (the flow carries both, exactly)."""

    drift: np.ndarray  # [2] pixels per frame: the image motion of the world (the negative of the camera's pan)
    zoom: float  # log-scale per frame (> 0: zooming in, as a camera moving forward)
    origin: np.ndarray  # [2] the image centre


def _make_camera(seed: int, height: int, width: int, scene: Scene) -> _Camera | None:
    """The clip's camera motion (its own random stream, so a still camera leaves every other draw as it was)."""
    if scene.camera_pan == 0 and scene.camera_zoom == 0:
        return None
    rng = np.random.default_rng([seed, 2])
    speed = scene.camera_pan * rng.uniform(0.75, 1.25)
    angle = np.deg2rad(rng.uniform(-25, 25)) + (np.pi if rng.uniform() < 0.5 else 0.0)  # mostly level, either way
    return _Camera(drift=speed * np.array([np.cos(angle), np.sin(angle)]),
                   zoom=float(rng.uniform(-1, 1) * scene.camera_zoom),
                   origin=np.array([(width - 1) / 2, (height - 1) / 2]))


def _random_texture(rng: np.random.Generator, k: int, fmin: float, fmax: float) -> tuple:
    freq = rng.uniform(fmin, fmax, k)
    theta = rng.uniform(0, np.pi, k)
    freqs = np.stack([freq * np.cos(theta), freq * np.sin(theta)], 1)
    return freqs, rng.uniform(0, 2 * np.pi, k), rng.uniform(-1, 1, (k, 3)) * rng.uniform(20, 40, (k, 1))


def _hue_colour(hue: float, sat: float, val: float) -> np.ndarray:
    """HSV -> RGB in [0,255]."""
    i, f = int(hue * 6) % 6, hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
    rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
    return np.array(rgb) * 255


def _trajectory(rng, lo: float, hi: float, speed: float, steps: int, keep_inside: bool,
                drift: float = 0.0) -> tuple[float, float]:
    """Start and velocity (in the world) on one axis; with keep_inside the path in the image (the world's motion
    plus the camera's `drift` per frame) stays within [lo, hi] for all steps."""
    v = rng.uniform(-speed, speed)
    if not keep_inside:
        return rng.uniform(lo, hi), v
    span, v = hi - lo, v + drift
    if abs(v) * steps > 0.8 * span:
        v = np.sign(v) * 0.8 * span / max(steps, 1)
    start_lo, start_hi = lo - min(0.0, v * steps), hi - max(0.0, v * steps)
    return rng.uniform(start_lo, start_hi), v - drift


def _class_hue(label: int, num_classes: int, lookalike: bool) -> float:
    """Centre hue of a class; with look-alikes, the two classes of a pair share it."""
    group, groups = (label - 1, num_classes - 1) if not lookalike else ((label - 1) // 2, num_classes // 2)
    return group / max(groups, 1)


def _make_layers(seed: int, num_frames: int, height: int, width: int, num_classes: int,
                 scene: Scene) -> list[_Layer]:
    """Background first, then objects back to front; every draw comes from the seed (so pair_flow can redo it)."""
    rng, camera = np.random.default_rng(seed), _make_camera(seed, height, width, scene)
    drift = camera.drift if camera is not None else np.zeros(2)
    size = min(height, width)
    steps = num_frames - 1
    jitter = rng.standard_normal((num_frames, 2)) * scene.jitter
    freqs, phases, amps = _random_texture(rng, 4, 0.03, 0.12)
    layers = [_Layer(
        label=0, shape=None, radius=1.0,
        center0=np.array([width / 2, height / 2]),
        velocity=rng.uniform(-1, 1, 2) * 0.012 * size, accel=np.zeros(2),
        angle0=0.0, spin=rng.uniform(-1, 1) * 0.003, scale_rate=rng.uniform(-1, 1) * 0.004,
        colour=_hue_colour(rng.uniform(), 0.15, 0.55), freqs=freqs, phases=phases, amps=amps * 0.8, jitter=jitter,
        camera=camera)]
    # One object per class that stays in frame (so each class is in every clip), some that cross the border,
    # and thin bars.
    n_extra = int(rng.integers(1, max(2, num_classes // 2) + 1))
    classes = list(range(1, num_classes)) + [int(c) for c in rng.integers(1, num_classes, n_extra + scene.thin_objects)]
    if scene.lookalike:  # a bar is always the first class of a pair, so its shape still names its class
        classes[len(classes) - scene.thin_objects:] = [c - 1 + c % 2 for c in classes[len(classes) - scene.thin_objects:]]
    kinds = ["anchor"] * (num_classes - 1) + ["extra"] * n_extra + ["thin"] * scene.thin_objects
    order = rng.permutation(len(classes))  # depth order, back to front
    lo, hi = scene.object_scale
    for idx in order:
        label, kind = classes[idx], kinds[idx]
        radius = rng.uniform(lo, hi) * size * (1.6 if kind == "thin" else 1.0)
        if scene.lookalike and label % 2 == 0 and kind != "thin":
            radius *= scene.pair_scale
        # an anchor stays in frame all clip long: well inside under a still camera; under a panning one it may cross
        # most of the frame (as a car passing a moving camera), so that its motion in the image can match the pan
        margin = -0.1 if kind == "extra" else (0.25 if camera is None else 0.05)
        speed = (0.05 if kind == "extra" else 0.02) * size
        cx, vx = _trajectory(rng, margin * width, (1 - margin) * width, speed, steps, kind != "extra", drift[0])
        cy, vy = _trajectory(rng, margin * height, (1 - margin) * height, speed, steps, kind != "extra", drift[1])
        freqs, phases, amps = _random_texture(rng, 3, 0.05, 0.15)
        hue = _class_hue(label, num_classes, scene.lookalike) + rng.uniform(-0.03, 0.03)
        layers.append(_Layer(
            label=label, shape="bar" if kind == "thin" else SHAPES[(label - 1) % len(SHAPES)], radius=radius,
            center0=np.array([cx, cy]), velocity=np.array([vx, vy]),
            accel=rng.uniform(-1, 1, 2) * 0.002 * size,
            angle0=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-1, 1) * np.deg2rad(4),
            scale_rate=rng.uniform(-1, 1) * 0.012,
            colour=_hue_colour(hue % 1.0, rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95)),
            freqs=freqs, phases=phases, amps=amps, jitter=jitter,
            thin=rng.uniform(0.02, 0.04) * size / radius if kind == "thin" else 0.0, camera=camera))
    return layers


def _visible_layer(layers: list[_Layer], t: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of the front-most layer covering each point at time t."""
    top = np.zeros(x.shape, np.int64)
    for j, layer in enumerate(layers[1:], start=1):
        top[layer.covers(*layer.to_local(t, x, y))] = j
    return top


def _pair_flow(layers: list[_Layer], t: int, k: int, xs: np.ndarray, ys: np.ndarray,
               top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow of the pair (t, t+k) on frame t's grid, and where it is in frame and not occluded at t+k."""
    flow = np.zeros((2, *xs.shape))
    for j, layer in enumerate(layers):
        sel = top == j
        if sel.any():
            nx, ny = layer.to_image(t + k, *layer.to_local(t, xs[sel], ys[sel]))
            flow[0][sel], flow[1][sel] = nx - xs[sel], ny - ys[sel]
    height, width = xs.shape
    px, py = xs + flow[0], ys + flow[1]
    in_frame = (px >= 0) & (px <= width - 1) & (py >= 0) & (py <= height - 1)
    return flow.astype(np.float32), in_frame & (_visible_layer(layers, t + k, px, py) == top)


def _render(layers: list[_Layer], t: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The scene at (possibly fractional) time t: float RGB [H,W,3]."""
    top = _visible_layer(layers, t, xs, ys)
    image = np.zeros((*xs.shape, 3))
    for j, layer in enumerate(layers):
        sel = top == j
        if sel.any():
            image[sel] = layer.texture(*layer.to_local(t, xs[sel], ys[sel]))
    return image


class _Light:
    """A light gradient turning over time and a soft shadow drifting across the frame (one per clip)."""

    def __init__(self, rng: np.random.Generator, height: int, width: int, strength: float):
        size = min(height, width)
        self.strength = strength
        self.angle0, self.turn = rng.uniform(0, 2 * np.pi), rng.uniform(-1, 1) * 0.15
        self.shadow0 = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        self.shadow_v = rng.uniform(-1, 1, 2) * 0.03 * size
        self.shadow_r = rng.uniform(0.25, 0.45, 2) * size
        self.depth = min(0.8, strength * rng.uniform(1.0, 2.0))
        self.centre, self.half = np.array([width / 2, height / 2]), size / 2

    def gain(self, t: int, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Multiplicative light [H,W] at frame t."""
        if self.strength == 0:
            return np.ones(xs.shape)
        a = self.angle0 + self.turn * t
        ramp = ((xs - self.centre[0]) * np.cos(a) + (ys - self.centre[1]) * np.sin(a)) / self.half
        c = self.shadow0 + self.shadow_v * t
        d = np.sqrt(((xs - c[0]) / self.shadow_r[0]) ** 2 + ((ys - c[1]) / self.shadow_r[1]) ** 2)
        shadow = 1 / (1 + np.exp((d - 1) * 8))  # soft edge
        return (1 + 0.5 * self.strength * np.clip(ramp, -1.5, 1.5)) * (1 - self.depth * shadow)


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return np.asarray(im.convert("RGB"))


def _check_args(num_frames: int, height: int, width: int, num_classes: int) -> None:
    if num_frames < 2 or height < 8 or width < 8 or not 2 <= num_classes <= 255:
        raise ValueError(f"make_clip: need num_frames >= 2, height/width >= 8, 2 <= num_classes <= 255; got "
                         f"{num_frames=} {height=} {width=} {num_classes=}")


def make_clip(seed: int, num_frames: int, height: int, width: int, num_classes: int,
              scene: Scene = Scene(), look: Look = Look()) -> Clip:
    """Generate one clip, deterministic in its arguments.

    Returns Clip(frames uint8 [T,H,W,3], labels uint8 [T,H,W], flows float32 [T-1,2,H,W], valid bool [T-1,H,W]).
    Labels, flow and valid depend on `scene` only; `look` changes the pixels (Look.exact(): none of it).
    """
    _check_args(num_frames, height, width, num_classes)
    layers = _make_layers(seed, num_frames, height, width, num_classes, scene)
    rng = np.random.default_rng([seed, 1])  # appearance draws apart from geometry
    light = _Light(rng, height, width, look.illumination)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    label_of = np.array([layer.label for layer in layers], np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    labels = np.empty((num_frames, height, width), np.uint8)
    flows = np.empty((num_frames - 1, 2, height, width), np.float32)
    valid = np.empty((num_frames - 1, height, width), bool)
    offsets = np.linspace(-0.5, 0.5, BLUR_SAMPLES) * look.motion_blur if look.motion_blur > 0 else [0.0]
    for t in range(num_frames):
        top = _visible_layer(layers, t, xs, ys)
        labels[t] = label_of[top]
        image = np.mean([_render(layers, t + dt, xs, ys) for dt in offsets], axis=0)
        gain = (1 + 2 * look.noise * rng.standard_normal()) * light.gain(t, xs, ys)[..., None]
        image = np.clip(image * gain + 255 * look.noise * rng.standard_normal(3), 0, 255)
        sigma = np.sqrt(look.shot_noise * image + look.read_noise**2)
        image = np.clip(np.rint(image + sigma * rng.standard_normal(image.shape)), 0, 255).astype(np.uint8)
        if look.jpeg_quality is not None:
            image = _jpeg(image, rng.integers(look.jpeg_quality[0], look.jpeg_quality[1] + 1))
        frames[t] = image
        if t + 1 < num_frames:
            flows[t], valid[t] = _pair_flow(layers, t, 1, xs, ys, top)
    return Clip(frames=frames, labels=labels, flows=flows, valid=valid)


def pair_flow(seed: int, num_frames: int, height: int, width: int, num_classes: int, t: int,
              k: int, scene: Scene = Scene()) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow of the pair (t, t+k) of the clip make_clip(seed, ..., scene) would give, any k (negative too).

    Returns flow float32 [2,H,W] (project convention: warp(frame_{t+k}, flow) ~ frame_t) and valid bool [H,W].
    """
    _check_args(num_frames, height, width, num_classes)
    if not (0 <= t < num_frames and 0 <= t + k < num_frames):
        raise ValueError(f"pair_flow: frames {t} and {t + k} must lie in [0, {num_frames})")
    layers = _make_layers(seed, num_frames, height, width, num_classes, scene)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return _pair_flow(layers, t, k, xs, ys, _visible_layer(layers, t, xs, ys))
