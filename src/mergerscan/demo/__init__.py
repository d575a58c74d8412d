"""A synthetic SDSS-like field for the demo (``make demo``) and tests that need frames.

:func:`make_demo_field` writes, per field, ``frame-[gri]-RRRRRR-C-FFFF.fits.bz2`` files that
imitate SDSS DR17 corrected frames (HDU0 float32 nanomaggies, rotated TAN WCS, each band with its
own slightly offset WCS, double-Gaussian PSF with wings, sky + shot noise, floats truncated like
SDSS FLOATCOMPRESS) and ``demo-catalog.fits`` (objid, ra, dec, truth, mag_r, redshift).  The sky
holds stars, bulge+disc galaxies, faint background sources and merging pairs whose discs are test
particles of a restricted three-body encounter (Toomre & Toomre 1972), so tails, bridges and
lopsided discs arise from the dynamics.  Consecutive fields of the made-up run overlap by
``OVERLAP`` rows, and 5 catalog rows lie outside every frame.  Deterministic given ``seed``.

    python -m mergerscan.demo OUT_DIR

Modules: :mod:`.sky` (the sky model), :mod:`.nbody` (the encounter integrator), :mod:`.render`
(the made-up survey, PSF and frame rendering), :mod:`.field` (writing the files), ``__main__``.
"""

from __future__ import annotations

from .field import make_demo_field
from .render import BANDS, CAMCOL, FIELD0, OBJID0, OVERLAP, PIXSCALE, RUN, SHAPE

__all__ = ["BANDS", "CAMCOL", "FIELD0", "OBJID0", "OVERLAP", "PIXSCALE", "RUN", "SHAPE", "make_demo_field"]
