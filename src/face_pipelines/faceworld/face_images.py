"""Drawing FaceWorld faces: identity rows + per-image nuisances -> aligned face crops (uint8 RGB).

How it works (vectorised over a batch with numpy, one core):
- The head is a set of ellipsoids in a head frame (cranium, jaw, nose tip, nose bridge, ears,
  neck, a hair shell, a hat crown and brim). Each image rotates the head (yaw, pitch, roll).
- Five landmarks (eyes, nose tip, mouth corners) live on the 3-D head; they are projected, then a
  similarity transform is fitted to insightface's 5-point template (plus detector jitter), exactly
  like an aligned crop. That transform gives every output pixel an orthographic ray.
- Every ray is intersected analytically with every ellipsoid (for a fixed image the discriminant is
  a quadratic polynomial in the pixel coordinates), the nearest hit wins (z-buffer), so a profile
  really hides the far half of the face. Hair and hat surfaces keep a hit only inside their region.
- Eyes, brows, lips, nostrils, beard, glasses, moles, freckles and wrinkles are painted in head
  coordinates of the hit point, so they move, foreshorten and disappear with the head.
- Lambert + wrap + specular shading from a coloured key light and ambient fill, white balance,
  background texture, Gaussian blur and sensor noise; JPEG happens when the image is written.

Everything is a pure function of its inputs: the per-image noise comes from the image's own
`noise_seed`, so an image does not depend on which batch or process renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from face_pipelines.faceworld.identity import IDENTITY_FIELDS, identity_columns
from face_pipelines.faceworld.nuisance import NUISANCE_FIELDS

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "render_identity_images",
    "LANDMARK_NAMES",
]

# insightface arcface_torch's 5-point template for 112x112 crops (left eye in the image first).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
LANDMARK_NAMES = (
    "eye_image_left",
    "eye_image_right",
    "nose_tip",
    "mouth_image_left",
    "mouth_image_right",
)

# surface ids (0 = background)
_BG, _CRANIUM, _JAW, _NOSE, _BRIDGE, _EAR_L, _EAR_R, _NECK, _HAIR, _HAIR_BACK, _HAT, _BRIM = range(
    12
)
_N_SURF = 12
_FAR = np.float32(1e6)
_CAM_Z = 3.0  # ray origins lie on the plane z = _CAM_Z in front of the head

_TEX_SIZE = 128
_TEXTURE: np.ndarray | None = None


def _texture() -> np.ndarray:
    """A fixed smooth noise texture in [0, 1] (flattened), shared by skin, freckles and hair."""
    global _TEXTURE
    if _TEXTURE is None:
        rng = np.random.default_rng(20240917)
        t = rng.random((_TEX_SIZE, _TEX_SIZE))
        k = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
        for axis in (0, 1):
            t = sum(w * np.roll(t, s - 2, axis=axis) for s, w in enumerate(k))
        t = (t - t.min()) / (t.max() - t.min())
        _TEXTURE = t.astype(np.float32).ravel()
    return _TEXTURE


# --------------------------------------------------------------------------------------------------
# colours (display space, 0..1)
def _lerp_table(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear lookup of rows of `table` at positions x in [0, 1]."""
    pos = np.clip(x, 0.0, 1.0) * (len(table) - 1)
    i0 = np.minimum(np.floor(pos).astype(int), len(table) - 2)
    f = (pos - i0)[:, None]
    return table[i0] * (1 - f) + table[i0 + 1] * f


_SKIN_RGB = np.array(
    [
        [0.96, 0.82, 0.74],
        [0.90, 0.71, 0.60],
        [0.78, 0.57, 0.43],
        [0.60, 0.41, 0.29],
        [0.40, 0.26, 0.18],
        [0.24, 0.15, 0.11],
    ]
)
_HAIR_RGB = np.array(
    [
        [0.05, 0.04, 0.035],
        [0.16, 0.10, 0.065],
        [0.36, 0.25, 0.15],
        [0.62, 0.48, 0.30],
        [0.86, 0.74, 0.50],
        [0.94, 0.90, 0.80],
    ]
)
_IRIS_RGB = np.array(
    [[0.30, 0.17, 0.08], [0.42, 0.34, 0.16], [0.28, 0.45, 0.28], [0.30, 0.45, 0.72]]
)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    k = (np.stack([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
def _rotation(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Head-to-camera rotations [B,3,3]: yaw>0 turns the face to image right, pitch>0 looks up."""
    y, p, r = np.deg2rad(yaw), np.deg2rad(pitch), np.deg2rad(roll)
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    ry = np.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(-1, 3, 3)
    rp = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(-1, 3, 3)
    rz = np.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    return rz @ rp @ ry


def _surface_z(x, y, centre, axes):
    """z of the front surface of an axis-aligned ellipsoid at (x, y); -inf where it is missed."""
    q = (
        1.0
        - ((x - centre[..., 0]) / axes[..., 0]) ** 2
        - ((y - centre[..., 1]) / axes[..., 1]) ** 2
    )
    return np.where(q > 0, centre[..., 2] + axes[..., 2] * np.sqrt(np.maximum(q, 0.0)), -np.inf)


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity dst ~ a*src + b with complex a, b per image ([B,5] complex)."""
    ms, md = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    s0, d0 = src - ms, dst - md
    a = (d0 * np.conj(s0)).sum(1) / np.maximum((np.abs(s0) ** 2).sum(1), 1e-12)
    b = md[:, 0] - a * ms[:, 0]
    return a, b


class _Geometry:
    """Per-image head geometry (float64 scalars per image) derived from identity + nuisances."""

    def __init__(self, idc: dict[str, np.ndarray], nz: dict[str, np.ndarray], size: int):
        f = {k: np.asarray(v, dtype=np.float64) for k, v in idc.items()}
        n = {k: np.asarray(v, dtype=np.float64) for k, v in nz.items()}
        self.B = len(n["yaw"])
        mouth_wf, eye_f, sag, youth, recession = self._expression_and_age(f, n, nz)
        self._eyes_and_mouth(f, mouth_wf, eye_f)
        face_z = self._surfaces(f, nz, sag, youth)
        self._hairline(f, recession)
        self._landmarks(f, face_z)
        self._pose_and_alignment(n, size)
        self._rays()
        self._light(n)

    def _expression_and_age(self, f, n, nz):
        """Expression and age deformations; returns the factors the later steps scale by."""
        expr = nz["expression"].astype(int)
        it = n["expression_intensity"]
        # expression -> face deformations (neutral, smile, laugh, surprise, frown)
        self.smile_lift = np.choose(expr, [0.0 * it, 0.045 * it, 0.055 * it, 0.0 * it, -0.03 * it])
        self.mouth_open = np.choose(expr, [0.0 * it, 0.0 * it, 0.035 * it, 0.06 * it, 0.0 * it])
        mouth_wf = np.choose(
            expr, [1 + 0 * it, 1 + 0.15 * it, 1 + 0.2 * it, 1 - 0.25 * it, 1 - 0.05 * it]
        )
        self.brow_raise = np.choose(expr, [0 * it, 0.005 * it, 0.01 * it, 0.05 * it, -0.03 * it])
        self.brow_inner = np.choose(expr, [0 * it, 0 * it, 0 * it, 0 * it, 0.035 * it])
        eye_f = np.choose(
            expr, [1 + 0 * it, 1 - 0.2 * it, 1 - 0.45 * it, 1 + 0.35 * it, 1 - 0.15 * it]
        )
        # age
        age = n["age"]
        self.age_w = np.clip((age - 30.0) / 45.0, 0.0, 1.0) * f["wrinkle_rate"]
        self.grey = np.clip((age - 35.0) / 45.0 * f["greying_rate"], 0.0, 1.0)
        sag = 0.03 * np.clip((age - 40.0) / 40.0, 0.0, 1.0)
        youth = np.clip((25.0 - age) / 10.0, 0.0, 1.0)
        recession = f["hair_recession"] * np.clip((age - 22.0) / 45.0, 0.0, 1.0) * 0.3
        return mouth_wf, eye_f, sag, youth, recession

    def _eyes_and_mouth(self, f, mouth_wf, eye_f) -> None:
        jaw_drop = self.mouth_open * 0.9
        self.ex, self.ey = f["eye_spacing"], f["eye_height"]
        self.erx = f["eye_width"]
        self.ery = f["eye_width"] * f["eye_open"] * eye_f
        self.eye_tilt = f["eye_tilt"]
        self.mw = f["mouth_width"] * mouth_wf
        self.my = f["mouth_height"] - jaw_drop * 0.5

    def _surfaces(self, f, nz, sag, youth):
        """Centre and semi-axes of every ellipsoid (a disabled surface sits far away), and which
        surfaces each image has; returns the face's depth function face_z(x, y)."""
        B = self.B
        hw, hh, hd = f["head_width"], f["head_height"], f["head_depth"]
        cheek = f["cheek_fullness"] * 0.02 + 0.02 * youth
        jaw_drop = self.mouth_open * 0.9
        centre = np.zeros((B, _N_SURF, 3))
        axes = np.ones((B, _N_SURF, 3))
        far = np.array([0.0, 100.0, 0.0])

        def put(k, c, a):
            centre[:, k] = np.stack(c, -1) if isinstance(c, tuple) else c
            axes[:, k] = np.stack(a, -1) if isinstance(a, tuple) else a

        z0 = np.zeros(B)
        put(_CRANIUM, (z0, z0 + 0.15, z0), (hw, hh, hd))
        put(
            _JAW,
            (z0, -0.3 - jaw_drop * 0.5 - sag * 0.5, z0 + 0.06),
            (
                f["jaw_width"] + cheek,
                f["jaw_length"] + jaw_drop + sag,
                f["jaw_depth"] + 0.5 * cheek,
            ),
        )
        face_c, face_a = centre[:, [_CRANIUM, _JAW]], axes[:, [_CRANIUM, _JAW]]

        def face_z(x, y):
            return np.maximum(
                _surface_z(x, y, face_c[:, 0], face_a[:, 0]),
                _surface_z(x, y, face_c[:, 1], face_a[:, 1]),
            )

        ny, nl, nwid, npro = (
            f["nose_height"],
            f["nose_length"],
            f["nose_width"],
            f["nose_protrusion"],
        )
        nose_sz = 0.16
        zf_nose = face_z(z0, ny)
        put(_NOSE, (z0, ny, zf_nose + 0.8 * npro - nose_sz), (nwid * 0.9, nl * 0.5, z0 + nose_sz))
        zf_bridge = face_z(z0, ny + 0.2)
        put(
            _BRIDGE,
            (z0, ny + 0.2, zf_bridge + 0.75 * npro - 0.1),
            (0.55 * nwid + 0.01, z0 + 0.22, z0 + 0.1),
        )
        ear_x = hw + f["ear_protrusion"] - 0.03
        ear_a = (z0 + 0.055, f["ear_size"], f["ear_size"] * 0.55)
        put(_EAR_L, (-ear_x, f["ear_height"], z0 - 0.06), ear_a)
        put(_EAR_R, (ear_x, f["ear_height"], z0 - 0.06), ear_a)
        put(_NECK, (z0, z0 - 1.55, z0 - 0.12), (0.42 * hw / 0.72, z0 + 1.1, z0 + 0.42))
        vol = f["hair_volume"]
        long_hair = f["hair_long"] > 0.5
        self.long_hair = long_hair
        drop = np.where(long_hair, 0.55, 0.0)
        put(
            _HAIR,
            (z0, 0.15 - drop, z0 - 0.03),
            ((hw + vol) * 1.02, hh + vol + drop, hd + vol + 0.01),
        )
        centre[:, _HAIR_BACK], axes[:, _HAIR_BACK] = centre[:, _HAIR], axes[:, _HAIR]
        hat = nz["hat"].astype(bool)
        hat_c = np.stack((z0, z0 + 0.15, z0 - 0.03), -1)
        hat_a = np.stack(((hw + vol) * 1.02 + 0.05, hh + vol + 0.05, hd + vol + 0.05), -1)
        centre[:, _HAT] = np.where(hat[:, None], hat_c, far)
        axes[:, _HAT] = hat_a
        self.hat_band = np.clip(f["hair_front"], 0.4, 0.62) - 0.06 - 0.04 * (nz["hat_style"] == 0)
        cap = hat & (nz["hat_style"] == 1)
        brim_c = np.stack((z0, self.hat_band + 0.01, hd + vol + 0.02), -1)
        centre[:, _BRIM] = np.where(cap[:, None], brim_c, far)
        axes[:, _BRIM] = np.stack((z0 + 0.5, z0 + 0.03, z0 + 0.42), -1)
        self.centre, self.axes = centre, axes
        enabled = np.ones((B, _N_SURF), dtype=bool)
        enabled[:, _BG] = False
        enabled[:, _HAIR_BACK] = long_hair
        enabled[:, _HAT] = hat
        enabled[:, _BRIM] = cap
        self.enabled = enabled
        return face_z

    def _hairline(self, f, recession) -> None:
        long_hair = self.long_hair
        # hairline (head-frame y) at the front, sides and back; crown baldness
        self.hair_front = f["hair_front"] + recession
        self.hair_side = np.where(long_hair, -3.0, f["hair_side"] + 0.5 * recession)
        self.hair_back = np.where(long_hair, -3.0, f["hair_back"])
        self.hair_rec = f["hair_recession"] * 0.6 + recession * 2.0
        self.hair_tilt = 0.2 * f["hair_part"]
        self.hair_crown = f["hair_crown"] - 0.5 * recession

    def _landmarks(self, f, face_z) -> None:
        B, centre, axes = self.B, self.centre, self.axes
        z0, ny = np.zeros(B), f["nose_height"]
        # landmarks on the 3-D head
        ex, ey = self.ex, self.ey
        mcx = self.mw * 1.0
        mcy = self.my + self.smile_lift
        lm = np.zeros((B, 5, 3))
        lm[:, 0] = np.stack((-ex, ey, face_z(-ex, ey)), -1)
        lm[:, 1] = np.stack((ex, ey, face_z(ex, ey)), -1)
        lm[:, 2] = np.stack((z0, ny, centre[:, _NOSE, 2] + axes[:, _NOSE, 2]), -1)
        lm[:, 3] = np.stack((-mcx, mcy, face_z(-mcx, mcy)), -1)
        lm[:, 4] = np.stack((mcx, mcy, face_z(mcx, mcy)), -1)
        self.landmarks_head = lm

    def _pose_and_alignment(self, n, size: int) -> None:
        """Rotate the head, fit the similarity onto the 5-point template and perturb it like a
        detector would; sets the pixel windows of the surfaces and the landmarks in pixels."""
        lm = self.landmarks_head
        # pose and alignment
        R = _rotation(n["yaw"], n["pitch"], n["roll"])
        self.R = R
        cam = np.einsum("bij,bkj->bki", R, lm)
        src = cam[..., 0] - 1j * cam[..., 1]  # image plane: x right, y down
        tmpl = ARCFACE_TEMPLATE_112 * (size / 112.0)
        dst = (tmpl[:, 0] + 1j * tmpl[:, 1])[None, :]
        a, b = _fit_similarity(src, np.broadcast_to(dst, src.shape))
        # detector error: perturb the fitted transform about the template centre
        iod = np.abs(dst[0, 1] - dst[0, 0])
        c0 = dst.mean()
        k = (1.0 + n["align_scale"]) * np.exp(1j * n["align_rot"])
        shift = (n["align_dx"] + 1j * n["align_dy"]) * iod
        a, b = k * a, c0 + k * (b - c0) + shift
        self.a, self.b = a, b
        self.px_per_unit = np.abs(a)
        self.windows = self._windows(size)
        self.landmarks_px = a[:, None] * src + b[:, None]
        self.landmarks_t = _CAM_Z - cam[..., 2]

    def _rays(self) -> None:
        B, a, b, R = self.B, self.a, self.b, self.R
        z0 = np.zeros(B)
        # pixel (px, py) -> ray origin in camera frame, then in head frame
        ia = 1.0 / a
        cc = -b / a
        al, be, ga, de = ia.real, ia.imag, cc.real, cc.imag
        c_0 = np.stack((ga, -de, np.full(B, _CAM_Z)), -1)
        c_x = np.stack((al, -be, z0), -1)
        c_y = np.stack((-be, -al, z0), -1)
        Rt = np.transpose(R, (0, 2, 1))
        self.H0 = np.einsum("bij,bj->bi", Rt, c_0)
        self.Hx = np.einsum("bij,bj->bi", Rt, c_x)
        self.Hy = np.einsum("bij,bj->bi", Rt, c_y)
        self.d = -R[:, 2, :]  # R^T (0, 0, -1)

    def _light(self, n) -> None:
        R = self.R
        # light in head frame, half vector for specular
        az, el = np.deg2rad(n["light_azimuth"]), np.deg2rad(n["light_elevation"])
        L_cam = np.stack((np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)), -1)
        V_cam = np.array([0.0, 0.0, 1.0])
        Hv = L_cam + V_cam
        Hv /= np.linalg.norm(Hv, axis=1, keepdims=True)
        self.L = np.einsum("bji,bj->bi", R, L_cam)
        self.Hv = np.einsum("bji,bj->bi", R, Hv)

    def _windows(self, size: int) -> list[tuple[int, int, int, int] | None]:
        """Pixel box (r0, r1, c0, c1) holding surface k in every image of the batch (None: absent).

        The 8 corners of each ellipsoid's bounding box are projected; their pixel bounding box
        contains the ellipsoid's silhouette, so rays outside it cannot hit the surface.
        """
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float
        )
        corners = self.centre[:, :, None, :] + self.axes[:, :, None, :] * signs[None, None]
        cam = np.einsum("bij,bskj->bski", self.R, corners)
        z = self.a[:, None, None] * (cam[..., 0] - 1j * cam[..., 1]) + self.b[:, None, None]
        out: list[tuple[int, int, int, int] | None] = []
        for k in range(_N_SURF):
            on = self.enabled[:, k]
            if not on.any():
                out.append(None)
                continue
            zk = z[on, k]
            c0 = int(np.clip(np.floor(zk.real.min()) - 1, 0, size))
            c1 = int(np.clip(np.ceil(zk.real.max()) + 2, 0, size))
            r0 = int(np.clip(np.floor(zk.imag.min()) - 1, 0, size))
            r1 = int(np.clip(np.ceil(zk.imag.max()) + 2, 0, size))
            out.append((r0, r1, c0, c1) if (c1 > c0 and r1 > r0) else None)
        return out


def _col(x) -> np.ndarray:
    """[B] -> [B,1,1] float32 for broadcasting against [B,H,W]."""
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


def _soft(x: np.ndarray) -> np.ndarray:
    """clip(x, 0, 1) in place (a 1-pixel soft mask when x is distance-inside x pixels-per-unit)."""
    return np.clip(x, 0.0, 1.0, out=x)


class _Raycaster:
    """Ray/ellipsoid intersections for one batch inside pixel windows; misses are NaN."""

    def __init__(self, g: _Geometry, size: int):
        self.g = g
        self.px = np.arange(size, dtype=np.float32)[None, None, :]
        self.py = np.arange(size, dtype=np.float32)[None, :, None]

    def grids(self, win):
        """Pixel-coordinate grids ([1,1,cols], [1,rows,1]) of a window."""
        r0, r1, c0, c1 = win
        return self.px[:, :, c0:c1], self.py[:, r0:r1]

    def intersect(self, k: int, win, back: bool = False):
        """Ray parameters (t_front, t_back or None) [B, rows, cols] of surface k; NaN = miss."""
        g = self.g
        px, py = self.grids(win)
        inv = 1.0 / g.axes[:, k]
        g0 = (g.H0 - g.centre[:, k]) * inv
        gx, gy, dd = g.Hx * inv, g.Hy * inv, g.d * inv
        a = (dd * dd).sum(1)
        b0, bx, by = (g0 * dd).sum(1), (gx * dd).sum(1), (gy * dd).sum(1)
        # quarter discriminant as a quadratic polynomial of the pixel coordinates
        k0 = b0 * b0 - a * ((g0 * g0).sum(1) - 1.0)
        kx = 2.0 * (b0 * bx - a * (g0 * gx).sum(1))
        ky = 2.0 * (b0 * by - a * (g0 * gy).sum(1))
        kxx = bx * bx - a * (gx * gx).sum(1)
        kxy = 2.0 * (bx * by - a * (gx * gy).sum(1))
        kyy = by * by - a * (gy * gy).sum(1)
        row0 = _col(k0) + (_col(ky) + _col(kyy) * py) * py
        row1 = _col(kx) + _col(kxy) * py
        disc = row1 + _col(kxx) * px
        disc *= px
        disc += row0
        with np.errstate(invalid="ignore"):
            np.sqrt(disc, out=disc)  # NaN where the ray misses
        hb = (_col(b0) + _col(by) * py) + _col(bx) * px
        nia = _col(-1.0 / a)
        t_back = None
        if back:
            t_back = hb - disc
            t_back *= nia
        hb += disc
        hb *= nia
        return hb, t_back

    def head_point(self, t: np.ndarray, win):
        """Head-frame coordinates (x, y, z) of ray parameter t inside the window."""
        g = self.g
        px, py = self.grids(win)
        out = []
        for i in range(3):
            p = t * _col(g.d[:, i])
            p += _col(g.H0[:, i]) + _col(g.Hy[:, i]) * py
            p += _col(g.Hx[:, i]) * px
            out.append(p)
        return out


def _hair_mask(g: _Geometry, x, y, z, crown: bool = True) -> np.ndarray:
    """Inside the hair region: above a hairline that is high on the forehead, lower at the sides
    and back; below the crown (for receding / bald styles)."""
    wf = _soft((z - 0.2) * (1.0 / 0.35))
    wb = _soft(z * (-1.0 / 0.6))
    side = _col(g.hair_side)
    # front hairline: raised at the temples (recession), tilted towards the parting side
    tilt = x * _col(g.hair_tilt)
    x *= x
    x *= _col(g.hair_rec)
    x += tilt
    x += _col(g.hair_front) - side
    x *= wf
    x += side
    wb *= _col(g.hair_back) - side
    x += wb
    m = y > x
    if crown:
        m &= y < _col(g.hair_crown)
    return m


_NOISE_BANK: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    """A fixed bank of standard-normal samples; each image reads a slice chosen by its seed."""
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(977).standard_normal(1 << 20, dtype=np.float32)
    return _NOISE_BANK


def _blur(img: np.ndarray, sigma: np.ndarray) -> None:
    """Separable Gaussian blur in place; img [3, B, H, W], sigma [B] in pixels (grouped by radius)."""
    radius = np.ceil(2.0 * sigma).astype(int)
    H, W = img.shape[2:]
    for r in np.unique(radius):
        if r <= 0:
            continue
        idx = np.nonzero(radius == r)[0]
        taps = np.arange(-r, r + 1)
        w = np.exp(-0.5 * (taps[None, :] / sigma[idx, None]) ** 2)
        w = (w / w.sum(1, keepdims=True)).astype(np.float32)
        sub = img[:, idx]
        pad = np.pad(sub, ((0, 0), (0, 0), (r, r), (0, 0)), mode="edge")
        acc = pad[:, :, 0:H] * w[None, :, 0, None, None]
        for j in range(1, 2 * r + 1):
            acc += pad[:, :, j : j + H] * w[None, :, j, None, None]
        pad = np.pad(acc, ((0, 0), (0, 0), (0, 0), (r, r)), mode="edge")
        acc = pad[:, :, :, 0:W] * w[None, :, 0, None, None]
        for j in range(1, 2 * r + 1):
            acc += pad[:, :, :, j : j + W] * w[None, :, j, None, None]
        img[:, idx] = acc


def _background(nz: dict[str, np.ndarray], B: int, H: int, W: int) -> np.ndarray:
    """Background texture weight in [0, 1] per pixel [B,H,W]: gradient, stripes or blobs."""
    size = W
    fq = 2.0 * np.pi * nz["bg_freq"].astype(np.float64) * 64.0 / size
    th = nz["bg_angle"].astype(np.float64)
    ph = nz["bg_phase"].astype(np.float64)
    kind = nz["bg_pattern"].astype(int)
    px = np.arange(W, dtype=np.float32)[None, None, :]
    py = np.arange(H, dtype=np.float32)[None, :, None]
    pat = np.empty((B, H, W), dtype=np.float32)
    for t in (0, 1, 2):
        idx = np.nonzero(kind == t)[0]
        if len(idx) == 0:
            continue
        c, s = _col(np.cos(th[idx])), _col(np.sin(th[idx]))
        if t == 0:  # linear gradient
            v = (px - W / 2) * (c * (2.0 / W)) + (py - H / 2) * (s * (2.0 / W))
        else:
            ax = _col(fq[idx]) * c * px
            ay = _col(fq[idx]) * s * py + _col(ph[idx])
            if t == 1:  # stripes: sin(ax + ay), separable
                v = np.sin(ax) * np.cos(ay) + np.cos(ax) * np.sin(ay)
            else:  # blobs
                v = np.sin(ax * 1.7 + 1.0) * np.sin(ay * 1.3)
        pat[idx] = v
    pat *= 0.5 * _col(nz["bg_contrast"])
    pat += 0.5
    return pat


@dataclass
class _Canvas:
    """One batch between the drawing steps: the surface each pixel shows (`sel`), the head-frame
    point it hits (x, y, z), the albedo planes and the shading multiplier the painters edit in place."""

    g: _Geometry
    f: dict[str, np.ndarray]  # identity fields as float64
    nz: dict[str, np.ndarray]
    size: int
    sel: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    skin: np.ndarray  # [B, 3] skin albedo
    hair: np.ndarray  # [B, 3] hair albedo
    alb: list[np.ndarray]  # albedo, one [B, H, W] plane per channel
    ao: np.ndarray  # ambient occlusion x texture, multiplies the diffuse light
    facef: np.ndarray  # 1 on cranium/jaw pixels
    headskin: np.ndarray  # 1 on every skin pixel of the head
    K: np.ndarray  # soft-edge gain: 1-pixel ramps for distances in head units
    xa: np.ndarray  # |x|: the painters are left/right symmetric

    def mix(self, rows: slice, m: np.ndarray, rgb) -> None:
        """Blend colour `rgb` [B, 3] into the albedo rows `rows` with weight `m`."""
        for c in range(3):
            a = self.alb[c][:, rows]
            d = _col(rgb[:, c]) - a
            d *= m
            a += d


def _window_slice(w):
    return (slice(None), slice(w[0], w[1]), slice(w[2], w[3]))


def _render_batch(
    idc: dict[str, np.ndarray], nz: dict[str, np.ndarray], size: int, want_info: bool
):
    """Draw one batch (see the module docstring), step by step: visibility, normals and light,
    albedo, the painted features, shading, capture."""
    g = _Geometry(idc, nz, size)
    rc = _Raycaster(g, size)
    t_best, sel, t_face = _visible_surfaces(g, rc, size)
    bgm = sel == _BG
    x, y, z = rc.head_point(np.fmin(t_best, 10.0), (0, size, 0, size))
    lam, nh, face, flat = _normals_and_light(g, sel, t_face, x, y, z)
    cv = _albedo(g, idc, nz, size, sel, flat, face, x, y, z)
    del flat
    _paint_skin_and_hair_texture(cv)
    eyes = _paint_eyes(cv)
    _paint_brows(cv, eyes)
    _paint_glasses(cv, eyes)
    _paint_nostrils(cv)
    m_lip = _paint_mouth(cv)
    _paint_beard(cv, m_lip)
    _paint_moles(cv)
    _paint_forehead_wrinkles(cv)
    _paint_blush(cv)
    img = _shade(cv, lam, nh, bgm)
    images = _capture(img, nz, size)
    info = _render_info(g, t_best, sel) if want_info else None
    return images, info


def _visible_surfaces(g: _Geometry, rc: _Raycaster, size: int):
    """z-buffer: the nearest hit per pixel (t_best), its surface id (sel), and the cranium and jaw
    hit distances (t_face) the normal blend needs."""
    B, H, W = g.B, size, size
    f32 = np.float32
    win = g.windows
    sl = _window_slice
    t_best = np.full((B, H, W), _FAR, dtype=f32)
    sel = np.zeros((B, H, W), dtype=np.int8)

    def take(k: int, t: np.ndarray, w) -> None:
        tb, sb = t_best[sl(w)], sel[sl(w)]
        closer = t < tb  # NaN (miss) is never closer
        np.fmin(tb, t, out=tb)
        sb += closer.view(np.int8) * (np.int8(k) - sb)

    t_face = {}
    for k in (_CRANIUM, _JAW, _NOSE, _BRIDGE, _EAR_L, _EAR_R, _NECK):
        if win[k] is not None:
            t = rc.intersect(k, win[k])[0]
            take(k, t, win[k])
            if k in (_CRANIUM, _JAW):
                t_face[k] = t
    with np.errstate(divide="ignore", invalid="ignore"):
        # hair shell: a hit counts only inside the hair region; long hair also shows its inside
        if win[_HAIR] is not None:
            any_long = win[_HAIR_BACK] is not None
            t_h, t_hb = rc.intersect(_HAIR, win[_HAIR], back=any_long)
            hx, hy, hz = rc.head_point(t_h, win[_HAIR])
            t_h /= _hair_mask(g, hx, hy, hz)  # x/0 = inf: never closer
            take(_HAIR, t_h, win[_HAIR])
            if any_long:
                hx, hy, hz = rc.head_point(t_hb, win[_HAIR])
                m = _hair_mask(g, hx, hy, hz, crown=False) & _col(g.long_hair).astype(bool)
                t_hb /= m
                take(_HAIR_BACK, t_hb, win[_HAIR])
        if win[_HAT] is not None:
            t_c = rc.intersect(_HAT, win[_HAT])[0]
            hy = rc.head_point(t_c, win[_HAT])[1]
            t_c /= hy >= _col(g.hat_band)
            take(_HAT, t_c, win[_HAT])
        if win[_BRIM] is not None:
            take(_BRIM, rc.intersect(_BRIM, win[_BRIM])[0], win[_BRIM])
    return t_best, sel, t_face


def _normals_and_light(g: _Geometry, sel, t_face, x, y, z):
    """Lambert and half-vector terms per pixel from the hit surface's ellipsoid normal (blended
    across the cranium/jaw crease); also the face mask and the per-pixel surface-table index."""
    B = g.B
    f32 = np.float32
    win = g.windows
    flat = sel.astype(np.intp)
    flat += (np.arange(B, dtype=np.intp) * _N_SURF)[:, None, None]
    cen = g.centre.astype(f32)
    inv2 = (1.0 / g.axes**2).astype(f32)
    inv2[:, _HAIR_BACK] *= -1.0  # seen from inside: the normal points inwards
    nrm = []
    for i, p in enumerate((x, y, z)):
        n_i = p - np.take(cen[:, :, i], flat)
        n_i *= np.take(inv2[:, :, i], flat)
        nrm.append(n_i)
    face = (sel == _CRANIUM) | (sel == _JAW)
    if win[_JAW] is not None and _CRANIUM in t_face:
        # the cranium/jaw union has a crease where they meet: blend their normals across it
        wj = win[_JAW]
        rw = slice(max(wj[0], win[_CRANIUM][0]), min(wj[1], win[_CRANIUM][1]))
        cw = slice(max(wj[2], win[_CRANIUM][2]), min(wj[3], win[_CRANIUM][3]))
        wc = win[_CRANIUM]
        tc = t_face[_CRANIUM][
            :, rw.start - wc[0] : rw.stop - wc[0], cw.start - wc[2] : cw.stop - wc[2]
        ]
        tj = t_face[_JAW][:, rw.start - wj[0] : rw.stop - wj[0], cw.start - wj[2] : cw.stop - wj[2]]
        blend = np.fmin(tj, 9.0) - np.fmin(tc, 9.0)
        blend *= 6.0
        blend += 0.5
        _soft(blend)
        # only where both surfaces are hit (NaN != NaN): elsewhere the gathered normal is exact
        fw = face[:, rw, cw] & (tc == tc) & (tj == tj)
        for i, p in enumerate((x, y, z)):
            pw = p[:, rw, cw]
            nc = (pw - _col(g.centre[:, _CRANIUM, i])) * _col(1.0 / g.axes[:, _CRANIUM, i] ** 2)
            nj = (pw - _col(g.centre[:, _JAW, i])) * _col(1.0 / g.axes[:, _JAW, i] ** 2)
            nc -= nj
            nc *= blend
            nc += nj
            np.copyto(nrm[i][:, rw, cw], nc, where=fw)
    rn = nrm[0] * nrm[0]
    rn += nrm[1] * nrm[1]
    rn += nrm[2] * nrm[2]
    rn += 1e-12
    np.sqrt(rn, out=rn)
    np.divide(1.0, rn, out=rn)
    lam = nrm[0] * _col(g.L[:, 0])
    lam += nrm[1] * _col(g.L[:, 1])
    lam += nrm[2] * _col(g.L[:, 2])
    lam *= rn
    nh = nrm[0] * _col(g.Hv[:, 0])
    nh += nrm[1] * _col(g.Hv[:, 1])
    nh += nrm[2] * _col(g.Hv[:, 2])
    nh *= rn
    del nrm, rn
    return lam, nh, face, flat


def _albedo(g: _Geometry, idc, nz, size: int, sel, flat, face, x, y, z) -> _Canvas:
    """Per-surface colours (skin, hair, hat) gathered per pixel: the canvas the painters work on."""
    B, H, W = g.B, size, size
    f32 = np.float32
    f = {k: np.asarray(v, dtype=np.float64) for k, v in idc.items()}
    skin = _lerp_table(_SKIN_RGB, f["skin_tone"])
    skin += np.array([0.03, 0.015, -0.05])[None] * f["skin_warmth"][:, None]
    skin += np.array([0.04, -0.02, -0.01])[None] * f["skin_redness"][:, None]
    skin = np.clip(skin, 0.03, 1.0)
    hair = _lerp_table(_HAIR_RGB, f["hair_lightness"])
    ginger = np.array([0.62, 0.28, 0.1]) * (0.5 + 0.6 * f["hair_lightness"][:, None])
    hair = hair + (ginger - hair) * (f["hair_warmth"][:, None] * 0.8)
    hair = hair + (np.array([0.78, 0.77, 0.76]) - hair) * g.grey[:, None]
    hat_rgb = _hsv_to_rgb(
        nz["hat_hue"].astype(np.float64), np.full(B, 0.6), nz["hat_value"].astype(np.float64)
    )
    table = np.zeros((B, _N_SURF, 3))
    for k in (_CRANIUM, _JAW, _NOSE, _BRIDGE):
        table[:, k] = skin
    table[:, _EAR_L] = table[:, _EAR_R] = skin * np.array([1.0, 0.93, 0.93])
    table[:, _NECK] = skin * 0.8
    table[:, _HAIR] = table[:, _HAIR_BACK] = hair
    table[:, _HAT] = hat_rgb
    table[:, _BRIM] = hat_rgb * 0.8
    table = table.astype(f32)
    alb = [np.take(table[:, :, c], flat) for c in range(3)]
    ao = np.ones((B, H, W), dtype=f32)
    facef = face.astype(f32)
    return _Canvas(
        g=g,
        f=f,
        nz=nz,
        size=size,
        sel=sel,
        x=x,
        y=y,
        z=z,
        skin=skin,
        hair=hair,
        alb=alb,
        ao=ao,
        facef=facef,
        headskin=facef + (sel == _NOSE) + (sel == _BRIDGE),
        K=_col(g.px_per_unit),
        xa=np.abs(x),
    )


def _paint_skin_and_hair_texture(cv: _Canvas) -> None:
    g, f, sel, x, y, z, ao, xa, headskin = (
        cv.g,
        cv.f,
        cv.sel,
        cv.x,
        cv.y,
        cv.z,
        cv.ao,
        cv.xa,
        cv.headskin,
    )
    win = g.windows
    sl = _window_slice
    f32 = np.float32
    # skin micro texture and freckles: identity-specific offsets into a shared texture
    tex = _texture()
    u = x * 41.0
    u += _col(f["freckle_u"] * _TEX_SIZE)
    v = y * 41.0
    v += _col(f["freckle_v"] * _TEX_SIZE)
    ti = u.astype(np.int32)
    ti &= _TEX_SIZE - 1
    vi = v.astype(np.int32)
    vi &= _TEX_SIZE - 1
    vi *= _TEX_SIZE
    vi += ti
    tv = np.take(tex, vi)
    tv -= 0.5
    tv *= 0.07
    tv *= headskin
    tv += 1.0
    ao *= tv
    if f["freckles"].max() > 0:
        tv = np.take(tex, vi)
        cheek = _soft((0.5 - (xa - 0.3) ** 2 * 6.0 - (y + 0.12) ** 2 * 9.0) * 3.0)
        ao *= 1.0 - _soft((tv - 0.62) * 8.0) * cheek * headskin * _col(f["freckles"] * 0.45)

    # hair strands
    if win[_HAIR] is not None:
        hw_ = win[_HAIR]
        hsl = sl(hw_)
        is_hair = ((sel[hsl] == _HAIR) | (sel[hsl] == _HAIR_BACK)).astype(f32)
        ui = (x[hsl] * _col(14.0 + 20.0 * f["hair_texture"]) + 3.0).astype(np.int32)
        vi = (y[hsl] * 90.0 + z[hsl] * 30.0 + 7.0).astype(np.int32)
        ui &= _TEX_SIZE - 1
        vi &= _TEX_SIZE - 1
        vi *= _TEX_SIZE
        vi += ui
        st = np.take(tex, vi)
        st -= 0.5
        st *= is_hair
        st *= 0.55
        st += 1.0
        ao[hsl] *= st


def _eye_rows(size: int) -> slice:
    H = size
    return slice(int(0.2 * H), int(0.66 * H) + 1)


def _mouth_rows(size: int) -> slice:
    H = size
    return slice(int(0.55 * H), H)


def _paint_eyes(cv: _Canvas):
    """Sclera, iris, pupil, lids, sockets and (age) bags; returns the eye rows' head coordinates
    (x, y, face mask, x from the eye centre) that the brows and glasses are painted in."""
    g, f, alb, ao, xa, y, facef = cv.g, cv.f, cv.alb, cv.ao, cv.xa, cv.y, cv.facef
    r_eye = _eye_rows(cv.size)
    xe, ye, fe = xa[:, r_eye], y[:, r_eye], facef[:, r_eye]
    dx = xe - _col(g.ex)
    dy = ye - _col(g.ey)
    dy -= _col(g.eye_tilt) * dx
    ex2 = dx * _col(1.0 / g.erx)
    ex2 *= ex2
    ey2 = dy * _col(1.0 / np.maximum(g.ery, 1e-3))
    ey2 *= ey2
    e = ex2 + ey2
    m_eye = 1.0 - e
    m_eye *= _col(g.px_per_unit * g.ery * 0.8)
    _soft(m_eye)
    m_eye *= fe
    r2 = dx * dx
    r2 += dy * dy
    ir = g.erx * 0.42
    m_iris = _soft((_col(ir * ir) - r2) * _col(3.0 / (ir * ir)))
    m_iris *= m_eye
    pr = ir * 0.45
    m_pupil = _soft((_col(pr * pr) - r2) * _col(2.0 / (pr * pr)))
    m_pupil *= m_eye
    iris = _lerp_table(_IRIS_RGB, f["iris_hue"]) * (1.0 - 0.5 * f["iris_dark"][:, None])
    sclera = (0.9, 0.88, 0.85)
    for c in range(3):
        a = alb[c][:, r_eye]
        eye_c = m_iris * (_col(iris[:, c]) - sclera[c])
        eye_c += sclera[c]
        eye_c += (0.03 - eye_c) * m_pupil
        eye_c -= a
        eye_c *= m_eye
        a += eye_c
    e -= 1.0
    np.abs(e, out=e)
    e *= -2.5
    e += 1.0
    lid = _soft(e)
    lid *= dy > 0
    socket = _soft(1.0 - ex2 * 0.3 - ey2 * 0.1)
    shade = 1.0 - 0.7 * lid
    shade *= 1.0 - 0.22 * socket
    if g.age_w.max() > 0:
        bags = _soft(1.0 - ex2 * 0.5 - (ey2 - 4.0) ** 2 * 0.25) * (dy < 0)
        shade *= 1.0 - 0.2 * bags * _col(g.age_w)
    shade -= 1.0
    shade *= fe
    shade += 1.0
    ao[:, r_eye] *= shade
    return xe, ye, fe, dx


def _paint_brows(cv: _Canvas, eyes) -> None:
    g, f, hair, K = cv.g, cv.f, cv.hair, cv.K
    xe, ye, fe, dx = eyes
    r_eye = _eye_rows(cv.size)
    bl = f["brow_length"]
    ub = dx * _col(1.0 / bl)
    ub2 = ub * ub
    by = _col(g.ey + f["brow_height"] + g.brow_raise) + _col(f["brow_arch"]) * (1.0 - ub2)
    by += ub * _col(f["brow_slope"] * bl + g.brow_inner * bl)
    th = _col(f["brow_thickness"]) * (1.0 - 0.45 * ub2 - 0.2 * ub)
    by -= ye
    np.abs(by, out=by)
    th -= by
    th *= K
    m_brow = _soft(th)
    m_brow *= _soft((1.0 - ub2) * 4.0)
    m_brow *= fe
    m_brow *= 0.92
    brow = hair * (0.55 + 0.35 * (1.0 - f["brow_darkness"][:, None]))
    brow = brow + (np.array([0.7, 0.7, 0.7]) - brow) * (g.grey[:, None] * 0.6)
    cv.mix(r_eye, m_brow, brow)


def _paint_glasses(cv: _Canvas, eyes) -> None:
    """Glasses are painted on the head surface so they turn with it."""
    g, f, nz, sel, ao, K = cv.g, cv.f, cv.nz, cv.sel, cv.ao, cv.K
    xe, ye, fe, _ = eyes
    r_eye = _eye_rows(cv.size)
    if nz["glasses"].any():
        style = f["glasses_style"].astype(int)
        gw = g.erx * np.choose(style, [1.5, 1.6, 1.75])
        gh = gw * np.choose(style, [0.8, 0.6, 0.7])
        gx = (xe - _col(g.ex)) * _col(1.0 / gw)
        gy = (ye - _col(g.ey + 0.005)) * _col(1.0 / gh)
        gx *= gx
        gy *= gy
        rect = _col(style == 1)
        gx += rect * (gx * gx - gx)
        gy += rect * (gy * gy - gy)
        eg = gx + gy
        se = sel[:, r_eye]
        onhead = fe + (se == _NOSE) + (se == _BRIDGE)
        flag = _col(nz["glasses"])
        frame = _soft((0.014 - np.abs(eg - 1.0) * _col(gw) * 0.5) * K + 0.5)
        bar = _soft((0.011 - np.abs(ye - _col(g.ey + 0.03))) * K + 0.5)
        bridge = bar * (xe < _col(g.ex - gw))
        temple = bar * (xe > _col(g.ex + gw)) * (se != _HAIR)
        frame = np.maximum(np.maximum(frame, bridge), temple) * onhead * flag
        lens = _soft((1.0 - eg) * 6.0) * onhead * flag
        dark = _col(nz["sunglasses"])
        ao[:, r_eye] *= 1.0 - lens * (0.08 + 0.82 * dark)
        frame_rgb = np.where(
            f["glasses_frame_dark"][:, None] > 0.5,
            np.array([0.05, 0.04, 0.04]),
            np.array([0.62, 0.56, 0.45]),
        )
        cv.mix(r_eye, frame, frame_rgb)


def _paint_nostrils(cv: _Canvas) -> None:
    """Nostrils, inside the nose window."""
    g, f, xa, y, ao, headskin = cv.g, cv.f, cv.xa, cv.y, cv.ao, cv.headskin
    win = g.windows
    sl = _window_slice
    if win[_NOSE] is not None:
        nsl = sl(win[_NOSE])
        nyc = f["nose_height"] - f["nose_length"] * 0.3
        nxc = f["nose_width"] * 0.45
        rx = 0.035 * f["nostril_size"] + 0.012
        d2 = (xa[nsl] - _col(nxc)) * _col(1.0 / rx)
        d2 *= d2
        dyn = (y[nsl] - _col(nyc)) * (1.0 / 0.02)
        dyn *= dyn
        d2 += dyn
        d2 = _soft((1.0 - d2) * 2.0)
        d2 *= headskin[nsl]
        d2 *= -0.65
        d2 += 1.0
        ao[nsl] *= d2


def _paint_mouth(cv: _Canvas) -> np.ndarray:
    """Lips, opening and teeth, the line between the lips, nasolabial folds (age, smile); returns
    the lip mask (the beard stays off the lips)."""
    g, f, nz, x, y, facef, ao, skin, K = (
        cv.g,
        cv.f,
        cv.nz,
        cv.x,
        cv.y,
        cv.facef,
        cv.ao,
        cv.skin,
        cv.K,
    )
    B = g.B
    r_mouth = _mouth_rows(cv.size)
    xm, ym, fm = x[:, r_mouth], y[:, r_mouth], facef[:, r_mouth]
    um = xm * _col(1.0 / g.mw)
    um2 = um * um
    env = _soft(1.0 - um2)
    dym = ym - _col(g.my)
    dym -= _col(g.smile_lift) * um2
    gap = _col(g.mouth_open) * env
    d1 = dym - gap
    m_up = _soft(np.minimum(d1, _col(f["lip_upper"]) * env - d1) * K)
    d2m = -dym - gap
    m_lo = _soft(np.minimum(d2m, _col(f["lip_lower"]) * env - d2m) * K)
    m_lip = np.maximum(m_up, m_lo)
    m_lip *= fm
    lip0 = skin * np.array([0.9, 0.6, 0.6])
    lip = lip0 + (np.array([0.72, 0.22, 0.28]) - lip0) * (0.25 + 0.4 * f["lip_redness"][:, None])
    cv.mix(r_mouth, m_lip, lip)
    line = np.abs(dym)
    line *= K * 0.9
    line = _soft(1.0 - line)
    line *= env
    line *= fm
    shade = 1.0 - 0.6 * line
    if g.mouth_open.max() > 0:
        m_in = _soft((gap - np.abs(dym)) * K) * fm
        teeth = m_in * _soft((dym + gap * 0.1) * K)
        cv.mix(r_mouth, m_in, np.tile([[0.22, 0.05, 0.06]], (B, 1)))
        cv.mix(r_mouth, teeth, np.tile([[0.88, 0.85, 0.78]], (B, 1)))
    # nasolabial folds (age, smile)
    fold_w = 0.25 * g.age_w + 0.12 * nz["smile"]
    if fold_w.max() > 0:
        fold = _soft(1.0 - np.abs(np.abs(xm) - 0.14 - 0.35 * (-0.3 - ym)) * K * 0.7)
        fold *= (ym < -0.3) & (ym > _col(g.my + 0.02))
        shade *= 1.0 - fold * fm * _col(fold_w)
    ao[:, r_mouth] *= shade
    return m_lip


def _paint_beard(cv: _Canvas, m_lip: np.ndarray) -> None:
    g, f, nz, x, y, facef, hair, K = cv.g, cv.f, cv.nz, cv.x, cv.y, cv.facef, cv.hair, cv.K
    r_mouth = _mouth_rows(cv.size)
    xm, ym, fm = x[:, r_mouth], y[:, r_mouth], facef[:, r_mouth]
    if nz["beard"].any():
        bstyle = f["beard_style"].astype(int)
        top = _col(g.my + 0.07) + _col((bstyle != 1) * 0.9) * np.maximum(np.abs(xm) - 0.18, 0.0)
        width = _col(np.where(bstyle == 1, 0.24, 5.0))
        dens = np.choose(bstyle, [0.45, 0.92, 0.92]) * nz["beard"]
        m_b = _soft((top - ym) * K) * _soft((width - np.abs(xm)) * K) * fm * (1.0 - m_lip * 0.9)
        m_b *= _col(dens)
        beard = hair * f["beard_darkness"][:, None]
        beard = beard + (np.array([0.75, 0.75, 0.74]) - beard) * g.grey[:, None]
        cv.mix(r_mouth, m_b, beard)


def _paint_moles(cv: _Canvas) -> None:
    f, x, y, facef, ao = cv.f, cv.x, cv.y, cv.facef, cv.ao
    for i in (1, 2):
        msz = f[f"mole{i}_size"]
        if msz.max() > 0:
            d2 = (x - _col(f[f"mole{i}_x"])) ** 2
            d2 += (y - _col(f[f"mole{i}_y"])) ** 2
            m = _soft((_col(msz**2) - d2) * _col(3.0 / np.maximum(msz**2, 1e-6)))
            m *= facef
            m *= -0.7
            m += 1.0
            ao *= m


def _paint_forehead_wrinkles(cv: _Canvas) -> None:
    """Forehead wrinkles (age)."""
    g, f, x, y, facef, ao = cv.g, cv.f, cv.x, cv.y, cv.facef, cv.ao
    H = cv.size
    if g.age_w.max() > 0:
        r_fh = slice(0, int(0.45 * H) + 1)
        yf = y[:, r_fh]
        w = np.sin(yf * 62.0 + x[:, r_fh] ** 2 * 8.0)
        region = (yf > _col(g.ey + f["brow_height"] + 0.06)) & (yf < _col(g.hair_front - 0.04))
        ao[:, r_fh] *= 1.0 - _soft((w - 0.75) * 4.0) * region * facef[:, r_fh] * _col(0.3 * g.age_w)


def _paint_blush(cv: _Canvas) -> None:
    f, xa, y, facef, alb = cv.f, cv.xa, cv.y, cv.facef, cv.alb
    H = cv.size
    r_ch = slice(int(0.4 * H), int(0.85 * H))
    bl2 = (xa[:, r_ch] - 0.36) ** 2
    bl2 += (y[:, r_ch] + 0.22) ** 2
    bl2 *= -22.0
    bl2 += 1.0
    m_bl = _soft(bl2)
    m_bl *= facef[:, r_ch]
    m_bl *= _col(0.1 * f["blush"])
    alb[0][:, r_ch] += m_bl * 0.6
    alb[1][:, r_ch] -= m_bl * 0.3
    alb[2][:, r_ch] -= m_bl * 0.25


def _shade(cv: _Canvas, lam, nh, bgm) -> np.ndarray:
    """Wrapped Lambert + ambient (times ao), a specular lobe on skin, light colour and white
    balance; background pixels get the background pattern. Returns float [3, B, H, W] in [0, 1]."""
    nz, alb, ao, headskin = cv.nz, cv.alb, cv.ao, cv.headskin
    B, H, W = cv.g.B, cv.size, cv.size
    f32 = np.float32
    key = _col(nz["light_intensity"])
    wb = np.stack([nz["white_balance_r"], np.ones(B), nz["white_balance_b"]], -1)
    lc = np.stack([nz["light_r"], nz["light_g"], nz["light_b"]], -1) * wb
    lit = lam > 0
    lam += 0.25
    np.maximum(lam, 0.0, out=lam)
    lam *= key * (1.0 / 1.25)
    lam += _col(nz["ambient"])
    lam *= ao
    diff = lam
    spec = np.maximum(nh, 0.0, out=nh)
    spec *= spec
    spec *= spec
    spec *= spec
    spec *= spec
    gloss = headskin
    gloss *= lit
    spec *= gloss
    spec *= key * _col(nz["specular"])

    pat = _background(nz, B, H, W)
    bg1 = np.stack([nz["bg_r"], nz["bg_g"], nz["bg_b"]], -1) * wb
    bg2 = np.stack([nz["bg2_r"], nz["bg2_g"], nz["bg2_b"]], -1) * wb

    img = np.empty((3, B, H, W), dtype=f32)
    for c in range(3):
        out = img[c]
        np.multiply(alb[c], diff, out=out)
        out += spec
        out *= _col(lc[:, c])
        bgc = pat * _col(bg2[:, c] - bg1[:, c])
        bgc += _col(bg1[:, c])
        np.copyto(out, bgc, where=bgm)
    return img


def _capture(img: np.ndarray, nz, size: int) -> np.ndarray:
    """Lens blur, sensor noise (each image's own noise_seed) and 8-bit quantisation -> [B,H,W,3]."""
    H = W = size
    f32 = np.float32
    sig = np.sqrt(nz["blur"].astype(np.float64) ** 2 + 0.45**2) * (size / 64.0)
    _blur(img, sig)
    bank = _noise_bank()
    npx = H * W
    for i in np.nonzero(nz["noise"] > 0)[0]:
        off = int(nz["noise_seed"][i] % (len(bank) - 3 * npx))
        img[:, i] += bank[off : off + 3 * npx].reshape(3, H, W) * f32(nz["noise"][i])
    img *= 255.0
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    images = np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))
    return images


def _render_info(g: _Geometry, t_best, sel) -> dict:
    """Landmarks (pixels) and their visibility, the face mask and the surface id map."""
    B, H, W = t_best.shape
    lm = g.landmarks_px
    ix = np.clip(np.rint(lm.real).astype(int), 0, W - 1)
    iy = np.clip(np.rint(lm.imag).astype(int), 0, H - 1)
    inside = (lm.real >= 0) & (lm.real <= W - 1) & (lm.imag >= 0) & (lm.imag <= H - 1)
    tb = t_best[np.arange(B)[:, None], iy, ix]
    visible = inside & (tb >= g.landmarks_t - 0.04)
    info = {
        "landmarks": np.stack([lm.real, lm.imag], -1).astype(np.float32),
        "landmark_visible": visible,
        "face_mask": (sel == _CRANIUM) | (sel == _JAW) | (sel == _NOSE) | (sel == _BRIDGE),
        "surface": sel,
    }
    return info


def render_identity_images(
    identities: np.ndarray,
    nuisances: dict[str, np.ndarray],
    size: int = 64,
    batch_size: int = 32,
    return_info: bool = False,
):
    """Render aligned face crops.

    Args:
        identities: float32 [n, D] identity rows, one per image (repeat a row for several photos
            of the same person); columns as in IDENTITY_FIELDS.
        nuisances: dict of [n] arrays with every key of NUISANCE_FIELDS (see sample_nuisances).
        size: output side in pixels (the 5 landmarks land on insightface's template scaled to it).
        batch_size: images per vectorised batch (memory/speed only).
        return_info: also return a dict with "landmarks" float32 [n,5,2] (pixel x, y),
            "landmark_visible" bool [n,5] (not hidden by the head itself), "face_mask" bool
            [n,size,size] (facial skin incl. nose) and "surface" int8 [n,size,size] (surface ids).

    Returns:
        uint8 [n, size, size, 3] RGB, or (images, info) if return_info.
    """
    identities = np.asarray(identities, dtype=np.float32)
    if identities.ndim != 2 or identities.shape[1] != len(IDENTITY_FIELDS):
        raise ValueError(f"identities must be [n, {len(IDENTITY_FIELDS)}], got {identities.shape}")
    n = identities.shape[0]
    missing = [k for k in NUISANCE_FIELDS if k not in nuisances]
    if missing:
        raise ValueError(f"nuisances is missing keys: {missing}")
    for k in NUISANCE_FIELDS:
        if len(nuisances[k]) != n:
            raise ValueError(
                f"nuisances[{k!r}] has {len(nuisances[k])} rows for {n} identities rows"
            )
    if int(size) < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    size = int(size)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    infos: list[dict] = []
    for s in range(0, n, batch_size):
        e = min(n, s + batch_size)
        idc = identity_columns(identities[s:e])
        nz = {k: np.asarray(nuisances[k])[s:e] for k in NUISANCE_FIELDS}
        images[s:e], info = _render_batch(idc, nz, size, return_info)
        if return_info:
            infos.append(info)
    if not return_info:
        return images
    if infos:
        info = {k: np.concatenate([i[k] for i in infos]) for k in infos[0]}
    else:
        info = {
            "landmarks": np.zeros((0, 5, 2), np.float32),
            "landmark_visible": np.zeros((0, 5), bool),
            "face_mask": np.zeros((0, size, size), bool),
            "surface": np.zeros((0, size, size), np.int8),
        }
    return images, info
