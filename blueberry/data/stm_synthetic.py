"""Synthetic constant-current STM images of H:Si(100)-(2x1) for the scanline task.

The real labelled scans (Gordon, Junqueira, Moriarty, Mach. Learn.: Sci. Technol. 1 (2020) 015001)
are private, so the toolkit ships this stand-in. The four classes are tip states, and what
separates them is lattice contrast that a single 128-point line shows only partly:

- atoms: two peaks per dimer (the H atoms resolved across the row);
- asymmetries: one bump per dimer, some dimers buckled (bump shifted and brighter);
- rows: smooth corrugation across the dimer rows, nothing along them;
- defects: a poor tip: blur, smear along the fast scan, blobs, ghosts, streaky lines.

Lattice patterns are sums of periodic Gaussian trains written as truncated Fourier series, so the
tip (and pixel) blur is applied exactly by damping each harmonic: at large scan sizes the dimer
and atom contrast fades instead of aliasing into moire, as in a real scan. Lines run along x
(fast scan); when the rows run across x a line shows the row period in every class and the dimer
contrast appears only from line to line, which is one reason a window of lines says more than a
line. Surface point defects, step edges (rows turn 90 degrees on alternate terraces), a tip
change at a random line (contrast jumps and the rest of the image may change class), double-tip
ghosts, white and 1/f noise, line offsets, mid-line jumps and spikes make it messy; all of these
artefacts scale with noise_level, while the defect class's own features do not.

Heights are in nm and not normalised. Vectorised numpy, rendered in fixed-size chunks of images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Part of the scanline cache key: bump it whenever the generator's output changes.
VERSION = 3

CLASS_NAMES = ("atoms", "asymmetries", "rows", "defects")
DEFAULT_SHARES = (0.088, 0.439, 0.169, 0.304)

ROW_NM = 0.77          # dimer-row spacing (across rows)
DIMER_NM = 0.384       # dimer spacing along a row
STEP_NM = 0.136        # monatomic step height of Si(100)
H_OFFSET_NM = 0.16     # each H atom sits this far from the row centre (atoms class)

# log-uniform scan-size range per class (nm): operators zoom in when the tip resolves atoms, so
# the ranges differ, but they overlap so that the row period in pixels is no label by itself.
SCAN_RANGE_NM = ((3.0, 12.0), (3.0, 20.0), (4.0, 60.0), (3.0, 80.0))
# tip blur per class (nm, uniform range); the defect class adds heavy blur on some images
TIP_SIGMA_NM = ((0.02, 0.05), (0.04, 0.08), (0.05, 0.12), (0.06, 0.12))

_CHUNK = 32   # images per rendering chunk: bounds memory; fixed, so output does not depend on it


def generate_stm(n_images: int, seed: int, image_size: int = 128,
                 class_shares: Sequence[float] = DEFAULT_SHARES,
                 noise_level: float = 1.0) -> dict[str, np.ndarray]:
    """`n_images` synthetic scans, deterministic by `seed`; see the module docstring.

    Returns images float32 [N,H,W] (nm), labels int64 [N] (the class of the majority of lines),
    line_labels int64 [N,H], class_names [4] str, image_id int64 [N], scan_size_nm float32 [N].
    Class counts follow `class_shares` exactly (largest remainder), in a random order.
    """
    shares = np.asarray(class_shares, dtype=np.float64)
    if shares.shape != (len(CLASS_NAMES),) or (shares < 0).any() or not shares.sum() > 0:
        raise ValueError(f"class_shares must be {len(CLASS_NAMES)} non-negative numbers, not {class_shares}")
    if n_images < 1 or image_size < 8 or noise_level < 0:
        raise ValueError("need n_images >= 1, image_size >= 8 and noise_level >= 0")
    shares = shares / shares.sum()
    rng = np.random.default_rng(seed)
    params = _draw_image_params(rng, n_images, image_size, shares, noise_level)
    images = np.empty((n_images, image_size, image_size), dtype=np.float32)
    for start in range(0, n_images, _CHUNK):
        part = slice(start, min(start + _CHUNK, n_images))
        images[part] = _render(rng, {k: v[part] for k, v in params.items()}, image_size, noise_level)
    return {"images": images, "labels": params["label"].astype(np.int64),
            "line_labels": params["line_class"].astype(np.int64),
            "class_names": np.array(CLASS_NAMES), "image_id": np.arange(n_images, dtype=np.int64),
            "scan_size_nm": params["scan_nm"].astype(np.float32)}


def exact_counts(shares: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n, proportional to shares (largest remainder)."""
    raw = shares * n
    counts = np.floor(raw).astype(np.int64)
    counts[np.argsort(-(raw - counts), kind="stable")[:n - counts.sum()]] += 1
    return counts


def _draw_image_params(rng: np.random.Generator, n: int, size: int, shares: np.ndarray,
                       eta: float) -> dict[str, np.ndarray]:
    """Everything per image (and per tip-state segment) that the renderer needs."""
    label = rng.permutation(np.repeat(np.arange(4), exact_counts(shares, n)))
    lo, hi = np.log(np.array(SCAN_RANGE_NM)[label]).T
    scan_nm = np.exp(rng.uniform(lo, hi))

    # Tip change: lines from `change_line` on belong to segment 1. The minority part (fewer
    # lines) may take another class, so the image label stays the majority class.
    has_change = (rng.random(n) < min(0.9, 0.35 * eta))
    change_line = np.where(has_change, rng.integers(size // 10, size - size // 10, n), size)
    other_p = np.tile(shares, (n, 1))
    other_p[np.arange(n), label] = 0.0
    total = other_p.sum(1)
    drawn = (np.cumsum(other_p, 1) < rng.random(n)[:, None] * total[:, None]).sum(1)
    other = np.where((total > 0) & (rng.random(n) < 0.6) & has_change, np.minimum(drawn, 3), label)
    early = change_line < size / 2
    seg_class = np.stack([np.where(early, other, label), np.where(early, label, other)], 1)
    line_class = np.where(np.arange(size)[None, :] < change_line[:, None], seg_class[:, :1], seg_class[:, 1:])

    # defect-class features: blur, smear, blobs, ghost, streaks; every defect image has smear,
    # blobs or streaks (a blurred or double tip alone can pass for another class on large scans)
    feats = rng.random((n, 5)) < 0.45
    feats[np.arange(n), rng.choice([1, 2, 4], n)] |= ~feats[:, [1, 2, 4]].any(1)
    # an unstable tip misbehaves in runs of lines (a two-state Markov chain): smear and streaks
    # hit those lines only, so one clean-looking line of a defect image says little
    bad_frac, leave = rng.uniform(0.4, 0.85, n), 1 / rng.uniform(2, 6, n)
    enter = leave * bad_frac / (1 - bad_frac)
    draws = rng.random((n, size))
    bad_line = np.empty((n, size), dtype=bool)
    state = draws[:, 0] < bad_frac        # line 0 from the chain's long-run share, then its transitions
    bad_line[:, 0] = state
    for i in range(1, size):
        state = np.where(state, draws[:, i] >= leave, draws[:, i] < enter)
        bad_line[:, i] = state
    lo_t, hi_t = np.array(TIP_SIGMA_NM)[seg_class].transpose(2, 0, 1)
    tip_nm = rng.uniform(lo_t, hi_t)
    tip_nm = np.where((seg_class == 3) & feats[:, :1], rng.uniform(0.15, 0.45, (n, 2)), tip_nm)
    amp = 0.05 * np.exp(rng.normal(0, 0.3, n))
    # a tip change moves the apparent corrugation by a random factor
    seg_amp = amp[:, None] * np.stack([np.ones(n), np.where(has_change, np.exp(rng.normal(0, 0.45 * min(eta, 2.0), n)), 1.0)], 1)

    ghost = rng.random(n) < np.where(label == 3, 0.0, min(0.9, 0.12 * eta))
    ghost_gain = np.where(ghost, rng.uniform(0.15, 0.4, n) * min(eta, 2.0), 0.0)
    strong = feats[:, 3] & (seg_class == 3).any(1)
    ghost_gain = np.where(strong, rng.uniform(0.35, 0.8, n), ghost_gain)
    ghost_shift = rng.integers(2, 9, (n, 2)) * rng.choice([-1, 1], (n, 2))

    return dict(
        label=label, scan_nm=scan_nm, line_class=line_class, seg_class=seg_class,
        change_line=change_line, has_change=has_change, feats=feats, tip_nm=tip_nm, seg_amp=seg_amp,
        # row orientation: along or across the fast scan, plus a small misalignment
        theta=rng.integers(0, 2, n) * (np.pi / 2) + np.deg2rad(rng.normal(0, 3.0, n)),
        phase=rng.uniform(0, 1, (n, 4)),
        base_pattern=rng.integers(1, 3, n),          # what a defect tip still shows: dimers or rows
        buckled=rng.uniform(0.1, 0.5, n),
        hash_seed=rng.integers(0, 2**20, n),
        # steps: more likely on larger scans; a vicinal staircase of roughly parallel edges
        n_steps=np.where(rng.random(n) < np.clip(scan_nm / 60, 0.03, 0.8), rng.integers(1, 4, n), 0),
        step_dir=rng.uniform(0, 2 * np.pi, n), step_jitter=rng.normal(0, 0.15, (n, 3)),
        step_pos=np.sort(rng.uniform(-0.35, 0.35, (n, 3)), 1), step_meander=rng.uniform(0, 0.05, (n, 3)),
        step_wave=rng.uniform(0.2, 1.0, (n, 3)), step_wphase=rng.uniform(0, 2 * np.pi, (n, 3)),
        db_density=rng.uniform(0, 0.012, n), vac_density=rng.uniform(0, 0.008, n),
        blob_count=np.where(feats[:, 2], 2 + rng.poisson(5, n), 0), blob_px=rng.uniform(1.5, 6.0, n),
        smear_px=rng.uniform(3.0, 12.0, n), lag_px=rng.uniform(0.1, 0.6, n) * eta,
        streak_p=rng.uniform(0.3, 0.8, n), bad_line=bad_line,
        ghost_gain=ghost_gain, ghost_shift=ghost_shift,
        white=rng.uniform(0.02, 0.12, (n, 2)) * eta, pink=rng.uniform(0.03, 0.15, n) * eta,
        pink_alpha=rng.uniform(0.8, 1.3, n),
        tilt=rng.normal(0, 0.0015, (n, 2)) * eta, skew=rng.normal(0, 0.015, n) * eta,
        creep=rng.uniform(0, 2, n) * eta, creep_lines=rng.uniform(5, 30, n),
    )


def _gauss_train(t: np.ndarray, period: float, width: float, blur: np.ndarray) -> np.ndarray:
    """Periodic train of unit-height Gaussians (std `width`, peaks at t = k*period) convolved with
    a normalised Gaussian of std `blur`, as a Fourier series (exact up to truncation)."""
    total2 = width ** 2 + blur ** 2
    damp = -2 * np.pi ** 2 * total2 / period ** 2
    n_harm = int(np.ceil(np.sqrt(9.2 / max(-float(damp.max()), 1e-9))))   # drop terms below 1e-4
    n_harm = min(max(n_harm, 1), 16)
    c1 = np.cos((2 * np.pi) * np.mod(t / period, 1.0)).astype(np.float32)
    out = np.ones_like(c1)
    prev, cur = np.ones_like(c1), c1
    for k in range(1, n_harm + 1):
        out += (2 * np.exp(damp * k * k)).astype(np.float32) * cur
        prev, cur = cur, 2 * c1 * cur - prev   # Chebyshev recurrence: cos((k+1)x)
    return out * np.float32(width * np.sqrt(2 * np.pi) / period)


def _cell_random(iu: np.ndarray, iv: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """A uniform [0,1) number per lattice cell, without storing a per-cell array."""
    h = (iu.astype(np.int64) * 73856093) ^ (iv.astype(np.int64) * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _lattice(cls: int, u: np.ndarray, v: np.ndarray, blur: np.ndarray, p: dict, idx: np.ndarray) -> np.ndarray:
    """Unit-amplitude lattice contrast of class `cls` (0 atoms, 1 dimers, 2 rows) at (u, v) nm."""
    if cls == 2:
        return _gauss_train(u, ROW_NM, 0.18, blur)
    along = _gauss_train(v, DIMER_NM, 0.07 if cls == 0 else 0.09, blur)
    if cls == 0:
        return (_gauss_train(u - H_OFFSET_NM, ROW_NM, 0.07, blur)
                + _gauss_train(u + H_OFFSET_NM, ROW_NM, 0.07, blur)) * along
    # buckled dimers: a zig-zag along the row (c(4x2)-like), present on a random subset of cells
    iu, iv = np.rint(u / ROW_NM), np.rint(v / DIMER_NM)
    hit = _cell_random(iu, iv, p["hash_seed"][idx, None, None]) < p["buckled"][idx, None, None]
    sign = np.where(hit, np.where((iu + iv) % 2 == 0, 1.0, -1.0), 0.0).astype(np.float32)
    bumps = _gauss_train(u - np.float32(0.12) * sign, ROW_NM, 0.15, blur)
    return bumps * (1 + np.float32(0.35) * np.abs(sign)) * along + np.float32(0.3) * _gauss_train(u, ROW_NM, 0.2, blur)


def _render(rng: np.random.Generator, p: dict, size: int, eta: float) -> np.ndarray:
    n = len(p["label"])
    f32 = np.float32
    px_nm = p["scan_nm"] / size
    rows = np.arange(size, dtype=f32)[None, :, None]
    cols = np.arange(size, dtype=f32)[None, None, :]
    pxv = px_nm[:, None, None].astype(f32)
    # thermal drift shears the frame; piezo creep bends the first lines
    shift = (p["skew"][:, None] * np.arange(size)[None, :]
             + p["creep"][:, None] * np.exp(-np.arange(size)[None, :] / p["creep_lines"][:, None]))
    x = (cols + shift[:, :, None].astype(f32)) * pxv
    y = np.broadcast_to(rows * pxv, x.shape)

    # terraces: count the step edges below each pixel (a staircase going up)
    terrace = np.zeros((n, size, size), dtype=np.int8)
    half = (size * px_nm / 2)[:, None, None].astype(f32)
    for k in range(3):
        idx = np.flatnonzero(p["n_steps"] > k)
        if not len(idx):
            continue
        d = p["step_dir"][idx] + p["step_jitter"][idx, k]
        nx, ny = np.cos(d)[:, None, None].astype(f32), np.sin(d)[:, None, None].astype(f32)
        xs, ys, hs = x[idx] - half[idx], y[idx] - half[idx], half[idx]
        along = ys * nx - xs * ny
        wave = (p["step_wave"][idx, k, None, None] * 2 * hs).astype(f32)
        meander = (p["step_meander"][idx, k, None, None] * 2 * hs).astype(f32) * np.sin(
            (2 * np.pi) * along / wave + p["step_wphase"][idx, k, None, None].astype(f32))
        edge = (p["step_pos"][idx, k, None, None] * 2 * hs).astype(f32)
        terrace[idx] += (xs * nx + ys * ny + meander > edge)
    odd = (terrace % 2).astype(f32)
    # rows turn 90 degrees on odd terraces: (u, v) -> (v, -u) there
    c, s = np.cos(p["theta"])[:, None, None].astype(f32), np.sin(p["theta"])[:, None, None].astype(f32)
    u0, v0 = x * c + y * s, y * c - x * s
    u = u0 + odd * (v0 - u0) + ((p["phase"][:, 0, None, None] + terrace * p["phase"][:, 2, None, None]) * ROW_NM).astype(f32)
    v = v0 - odd * (u0 + v0) + ((p["phase"][:, 1, None, None] + terrace * p["phase"][:, 3, None, None]) * DIMER_NM).astype(f32)

    # lattice: each line rendered with its segment's tip; defect lines show the base pattern blurred
    seg = (np.arange(size)[None, :] >= p["change_line"][:, None]).astype(np.int64)
    line_tip = np.take_along_axis(p["tip_nm"], seg, 1)
    line_amp = np.take_along_axis(p["seg_amp"], seg, 1)
    render_cls = np.where(p["line_class"] == 3, p["base_pattern"][:, None], p["line_class"])
    blur = np.sqrt(line_tip ** 2 + (0.3 * px_nm[:, None]) ** 2)[:, :, None]
    z = np.zeros((n, size, size), dtype=f32)
    for cls in range(3):
        idx = np.flatnonzero((render_cls == cls).any(1))
        if len(idx):
            pat = _lattice(cls, u[idx], v[idx], blur[idx], p, idx)
            z[idx] = np.where((render_cls[idx] == cls)[:, :, None], pat, z[idx])
    z *= line_amp[:, :, None].astype(f32)
    amp = p["seg_amp"][:, 0, None, None].astype(f32)

    # point defects on the surface (dangling bonds bright, vacancies dark), tip-blurred
    area = p["scan_nm"] ** 2
    n_db = np.minimum(rng.poisson(p["db_density"] * area), 80)
    n_vac = np.minimum(rng.poisson(p["vac_density"] * area), 80)
    sig = np.maximum(np.sqrt(0.3 ** 2 + p["tip_nm"][:, 0] ** 2) / px_nm, 0.6)
    z += _blobs(rng, n_db, n_vac, sig, size) * amp
    # defect tip: clusters picked up or dropped by the tip, on the defect lines only
    defect_lines = (p["line_class"] == 3)[:, :, None]
    if p["blob_count"].any():
        z += np.where(defect_lines, _blobs(rng, p["blob_count"], 0 * p["blob_count"], p["blob_px"], size,
                                           (2.0, 8.0)) * amp, f32(0))
    z += terrace.astype(f32) * f32(STEP_NM)

    # double tip: a shifted, weaker copy of everything the tip images
    gain = p["ghost_gain"]
    idx = np.flatnonzero(gain > 0)
    if len(idx):
        iy = np.clip(np.arange(size)[None, :] + p["ghost_shift"][idx, :1], 0, size - 1)
        ix = np.clip(np.arange(size)[None, :] + p["ghost_shift"][idx, 1:], 0, size - 1)
        ghost = z[idx[:, None, None], iy[:, :, None], ix[:, None, :]]
        z[idx] += gain[idx, None, None].astype(f32) * ghost

    # feedback lag along the fast scan (first-order low-pass); a defect tip smears much more
    lag = np.where(defect_lines[:, :, 0] & p["bad_line"] & p["feats"][:, 1:2], p["smear_px"][:, None], p["lag_px"][:, None])
    keep = np.exp(-1.0 / np.maximum(lag, 1e-3)).astype(f32)
    zt = np.ascontiguousarray(z.transpose(2, 0, 1))
    for j in range(1, size):
        zt[j] = keep * zt[j - 1] + (1 - keep) * zt[j]
    z = np.ascontiguousarray(zt.transpose(1, 2, 0))

    # measurement noise: white (changes with the tip), 1/f in scan (raster) order
    white = np.take_along_axis(p["white"], seg, 1)[:, :, None].astype(f32) * amp
    z += rng.standard_normal((n, size, size), dtype=f32) * white
    z += (_pink(rng, n, size * size, p["pink_alpha"]).reshape(n, size, size)
          * (p["pink"][:, None, None] * amp)).astype(f32)
    # streaky lines of a defect tip: noise bursts over part of a line
    streak = defect_lines[:, :, 0] & p["bad_line"] & p["feats"][:, 4:5] & (rng.random((n, size)) < p["streak_p"][:, None])
    li, lj = np.nonzero(streak)
    if len(li):
        start, length = rng.integers(0, size, len(li)), rng.integers(size // 8, size, len(li))
        burst = (cols[0, 0] >= start[:, None]) & (cols[0, 0] < (start + length)[:, None])
        noise = rng.standard_normal((len(li), size), dtype=f32) * rng.uniform(1, 3, (len(li), 1)).astype(f32)
        z[li, lj] += np.where(burst, noise, 0) * amp[li, 0]

    # line artefacts: offset jumps that persist, per-line offsets, jumps in the middle of a line
    jumps = rng.random((n, size)) < 0.03 * eta
    offsets = np.cumsum(jumps * rng.normal(0, 3, (n, size)), 1) + rng.normal(0, 0.5 * eta, (n, size))
    z += offsets[:, :, None].astype(f32) * amp
    li, lj = np.nonzero(rng.random((n, size)) < 0.02 * eta)
    if len(li):
        where, height = rng.integers(1, size, len(li)), rng.normal(0, 2, len(li))
        z[li, lj] += np.where(cols[0, 0] >= where[:, None], height[:, None], 0).astype(f32) * amp[li, 0]
    # spikes: a few pixels far off the surface
    counts = rng.poisson(1.5e-4 * eta * size * size, n)
    img = np.repeat(np.arange(n), counts)
    sy, sx = rng.integers(0, size, (2, len(img)))
    z[img, sy, sx] += (rng.choice([-1, 1], len(img)) * rng.uniform(1.5, 4, len(img)) * amp[img, 0, 0]).astype(f32)
    # residual plane after imperfect levelling
    z += (p["tilt"][:, 0, None, None] * cols + p["tilt"][:, 1, None, None] * rows).astype(f32) * amp
    return z


def _blobs(rng: np.random.Generator, n_pos: np.ndarray, n_neg: np.ndarray, sigma_px: np.ndarray,
           size: int, heights: tuple[float, float] = (1.5, 3.0)) -> np.ndarray:
    """Gaussian blobs (std in pixels per image) at random places: n_pos bright, n_neg dark
    (height -heights/1.5); drawn as impulses convolved by FFT on a grid padded against wrap."""
    out = np.zeros((len(n_pos), size, size), dtype=np.float32)
    idx = np.flatnonzero(n_pos + n_neg)
    if not len(idx):
        return out
    pad = size // 2
    grid = np.zeros((len(idx), size + pad, size + pad), dtype=np.float32)
    for counts, sign in ((n_pos[idx], 1.0), (n_neg[idx], -1 / 1.5)):
        img = np.repeat(np.arange(len(idx)), counts)
        ys, xs = rng.integers(0, size, (2, len(img)))
        np.add.at(grid, (img, ys, xs), sign * rng.uniform(*heights, len(img)).astype(np.float32))
    fy = np.fft.fftfreq(grid.shape[1]).astype(np.float32)[None, :, None]
    fx = np.fft.rfftfreq(grid.shape[2]).astype(np.float32)[None, None, :]
    kernel = np.exp(-2 * np.pi ** 2 * sigma_px[idx, None, None].astype(np.float32) ** 2 * (fy ** 2 + fx ** 2))
    out[idx] = np.fft.irfft2(np.fft.rfft2(grid) * kernel, s=grid.shape[1:])[:, :size, :size]
    return out


def _pink(rng: np.random.Generator, n: int, length: int, alpha: np.ndarray) -> np.ndarray:
    """Unit-std 1/f^alpha noise series [n, length]."""
    f = np.fft.rfftfreq(length)
    f[0] = f[1]
    spec = (rng.standard_normal((n, len(f))) + 1j * rng.standard_normal((n, len(f)))) * f[None, :] ** (-alpha[:, None] / 2)
    spec[:, 0] = 0
    out = np.fft.irfft(spec, n=length)
    return out / out.std(1, keepdims=True)
