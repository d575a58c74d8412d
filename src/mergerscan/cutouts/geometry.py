"""Sky geometry of a stamp cut from frames: the north-up TAN grid of a stamp, its WCS nodes, and
bilinear sampling of a frame at float pixel coordinates."""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from .preprocess import PreprocessSpec

N_NODES = 9  # exact WCS nodes per stamp side


def make_wcs(cards: dict) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        return WCS(fits.Header(cards))


def unit(ra, dec):
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def stamp_nodes(ra0, dec0, spec: PreprocessSpec, n: int = N_NODES):
    """Sky coords (deg) of an n x n grid of nodes spanning the stamp's pixel centres, for each
    object: north-up (row 0 = north), east-left TAN grid centred at pixel ((S-1)/2, (S-1)/2)."""
    s = spec.stamp_pixels
    t = np.linspace(0, s - 1, n) - (s - 1) / 2
    scale = np.radians(spec.pixel_scale / 3600)
    xi = (-t * scale)[None, None, :]  # east = +xi = towards column 0
    eta = (-t * scale)[None, :, None]  # north = +eta = towards row 0
    a0 = np.radians(np.asarray(ra0, float))[:, None, None]
    d0 = np.radians(np.asarray(dec0, float))[:, None, None]
    den = np.cos(d0) - eta * np.sin(d0)  # inverse gnomonic projection
    ra = np.degrees(a0 + np.arctan2(xi, den)) % 360
    dec = np.degrees(np.arctan2(np.sin(d0) + eta * np.cos(d0), np.hypot(xi, den)))
    return ra, dec  # (k, n, n) each


def node_weights(s: int, n: int):
    """Linear interpolation from n equally spaced nodes to s pixels: left node j and weight f."""
    u = np.arange(s) * (n - 1) / (s - 1)
    j = np.minimum(np.floor(u).astype(int), n - 2)
    return j, (u - j).astype(np.float32)


def bilinear(img: np.ndarray, px: np.ndarray, py: np.ndarray, check: bool = True, origin=(0, 0)):
    """Bilinear samples of img at float32 (px, py) (0-based, relative to the integer pixel
    ``origin`` of img; modified in place).  With ``check``, points without all 4 neighbours in img
    are 0 and ``valid`` says which; without, the caller guarantees every point is inside.  Returns
    (values, valid or None).  The fractions depend only on (px, py), not on where img starts, so
    a frame cut into overlapping sub-frames samples to the same bits."""
    h, w = img.shape
    x0, y0 = np.floor(px), np.floor(py)
    px -= x0
    py -= y0  # now the fractions
    ix, iy = x0.astype(np.int32), y0.astype(np.int32)
    ix += np.int32(origin[0])
    iy += np.int32(origin[1])
    valid = None
    if check:
        valid = (ix >= 0) & (ix < w - 1) & (iy >= 0) & (iy < h - 1)
        if h < 2 or w < 2:
            return np.zeros(px.shape, np.float32), valid
    iy *= np.int32(w)
    iy += ix
    if check:
        iy *= valid  # outside -> pixel 0 (zeroed below)
    flat = img.ravel()
    a, b, c, d = flat.take(iy), flat[1:].take(iy), flat[w:].take(iy), flat[w + 1 :].take(iy)  # 4 neighbours
    # in place: top row a += (b - a) px, bottom row c += (d - c) px, then a += (c - a) py
    b -= a
    b *= px
    a += b
    d -= c
    d *= px
    c += d
    c -= a
    c *= py
    a += c
    if check:
        a *= valid
    return a, valid


class StampGrid:
    """The S x S pixel grid of a stamp and the resampling of a frame onto it: the band pixel
    coordinates are computed exactly (SIP-aware ``all_world2pix``) on an N_NODES^2 grid of nodes;
    the full grid is the affine map fitted to them when that reproduces every node to 1e-3 px
    (always for pure TAN), else linear interpolation between the nodes; then bilinear sampling."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        n = spec.stamp_pixels
        t = np.linspace(0, n - 1, N_NODES)
        self.design = np.stack([np.tile(t, N_NODES), np.repeat(t, N_NODES), np.ones(N_NODES**2)])
        self.pinv = np.linalg.pinv(self.design)  # (n*n, 3)
        self.pix = np.arange(n, dtype=np.float64)
        self.corners = np.array([[0, n - 1, 0, n - 1], [0, 0, n - 1, n - 1], [1, 1, 1, 1]], float)
        self.nodew = node_weights(n, N_NODES)

    def resample(self, wcs_list, images, ra, dec):
        """Band stamps (B, k, S, S) float32 of k objects from one field's band images (each with
        its own WCS), and ``covered`` (B, k, S, S) bool: which pixels had all 4 neighbours in the
        band's frame (the others are 0)."""
        k, s = len(ra), self.spec.stamp_pixels
        nra, ndec = stamp_nodes(ra, dec, self.spec)
        out = np.empty((len(images), k, s, s), np.float32)
        covered = np.ones((len(images), k, s, s), bool)
        for b, (w, img) in enumerate(zip(wcs_list, images)):
            px, py = w.all_world2pix(nra.ravel(), ndec.ravel(), 0, quiet=True)  # SIP-aware
            for j, (nx, ny) in enumerate(zip(px.reshape(k, -1), py.reshape(k, -1))):
                out[b, j], valid = self.sample(img, nx, ny)
                if valid is not None:
                    covered[b, j] = valid
        return out, covered

    def sample(self, img, nx, ny):
        """One band's (S, S) stamp from the exact pixel coords (nx, ny) of the N_NODES^2 nodes, and
        which pixels lie inside the frame (None: all, known without checking each)."""
        h, w = img.shape
        nodes = np.stack([nx, ny])
        coef = np.einsum("cn,nk->ck", nodes, self.pinv)  # (2, 3): col, row, 1
        affine = np.abs(coef @ self.design - nodes).max() < 1e-3
        ext = coef @ self.corners if affine else nodes  # stamp corners / nodes: the hull
        lo, hi = np.floor(ext.min(1)) - 1, np.floor(ext.max(1)) + 3  # 1 px margin for float32 rounding
        inside = affine and lo[0] >= 0 and lo[1] >= 0 and hi[0] <= w and hi[1] <= h
        x0, y0 = int(min(max(lo[0], 0), w)), int(min(max(lo[1], 0), h))
        x1, y1 = int(min(max(hi[0], x0), w)), int(min(max(hi[1], y0), h))
        win = np.ascontiguousarray(img[y0:y1, x0:x1])  # compact: cache/TLB-friendly
        t = self.pix
        ox, oy = np.floor(nodes[:, 0])  # float32 coords relative to the first node's pixel: the
        if affine:  # same bits wherever the frame starts (sub-frames of one frame agree exactly)
            cx, cy = (coef[0, 0] * t).astype(np.float32), (coef[1, 0] * t).astype(np.float32)
            bx = cx[None, :] + (coef[0, 1] * t + (coef[0, 2] - ox)).astype(np.float32)[:, None]
            by = cy[None, :] + (coef[1, 1] * t + (coef[1, 2] - oy)).astype(np.float32)[:, None]
        else:
            j, f = self.nodew
            rel = (nodes.reshape(2, N_NODES, N_NODES) - np.array([ox, oy])[:, None, None]).astype(np.float32)
            cols = (c[:, j] * (1 - f) + c[:, j + 1] * f for c in rel)  # along each node row, then rows
            bx, by = (c[j] * (1 - f)[:, None] + c[j + 1] * f[:, None] for c in cols)
        v, valid = bilinear(win, bx, by, check=not inside, origin=(ox - x0, oy - y0))
        return v, None if inside or valid.all() else valid


def quad_meets_rect(qx: np.ndarray, qy: np.ndarray, w: float, h: float) -> np.ndarray:
    """Whether each convex quadrilateral (k, 4) corners, in order around it) meets the rectangle
    [0, w] x [0, h]: separating-axis test on the rectangle's axes and the quad's edge normals."""
    apart = (qx.max(1) < 0) | (qx.min(1) > w) | (qy.max(1) < 0) | (qy.min(1) > h)
    rx, ry = np.array([0.0, w, w, 0.0]), np.array([0.0, 0.0, h, h])
    for e in range(4):
        nx = -(qy[:, (e + 1) % 4] - qy[:, e])[:, None]
        ny = (qx[:, (e + 1) % 4] - qx[:, e])[:, None]
        pq, pr = nx * qx + ny * qy, nx * rx + ny * ry
        apart |= (pq.max(1) < pr.min(1)) | (pq.min(1) > pr.max(1))
    return ~apart
