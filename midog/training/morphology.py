"""Nuclear morphology of a detection, from the haematoxylin channel around it.

The nucleus is segmented by thresholding the haematoxylin (H) concentration of
a small window centred on the detection, after colour deconvolution
(``midog.training.augment.hed_from_rgb``), and described by six numbers:
area, eccentricity, solidity, mean H optical density and two texture measures
of H inside the nucleus. Mining groups candidate false positives by these
numbers (``midog.training.mining``).
"""

from __future__ import annotations

import logging

import numpy as np
from numpy.typing import NDArray

from midog.training.augment import hed_from_rgb

__all__ = ["FEATURE_NAMES", "nucleus_features", "segment_nucleus"]

logger = logging.getLogger(__name__)

FEATURE_NAMES: tuple[str, ...] = (
    "area_um2",
    "eccentricity",
    "solidity",
    "h_od_mean",
    "h_od_std",
    "h_od_gradient",
)
# Otsu's threshold is raised to at least this H optical density, so a window of
# pale stroma does not split into "nucleus" and "background" at noise level.
MIN_H_THRESHOLD_OD = 0.15
# A component counts as the detection's nucleus when it covers the centre
# pixel, or failing that when it comes within this many µm of it.
CENTRE_SEARCH_UM = 3.0


def segment_nucleus(h_od: NDArray[np.floating], mpp: float) -> NDArray[np.bool_]:
    """Segment the nucleus at the centre of a haematoxylin window.

    Args:
        h_od: ``(H, W)`` float haematoxylin concentration in optical density
            units; the detection is at the centre pixel ``(H // 2, W // 2)``.
        mpp: resolution of the window in µm/px.

    Returns:
        ``(H, W)`` bool mask of the connected component, holes filled, that
        covers the centre or lies nearest to it within ``CENTRE_SEARCH_UM``;
        all False when no component is near.
    """
    from scipy import ndimage
    from skimage.filters import gaussian, threshold_otsu

    smooth = gaussian(np.asarray(h_od, dtype=np.float64), sigma=1.0, preserve_range=True)
    threshold = MIN_H_THRESHOLD_OD
    if np.ptp(smooth) > 1e-6:
        threshold = max(float(threshold_otsu(smooth)), MIN_H_THRESHOLD_OD)
    labels, num_labels = ndimage.label(smooth > threshold)
    if num_labels == 0:
        return np.zeros(smooth.shape, dtype=bool)

    centre_y, centre_x = smooth.shape[0] // 2, smooth.shape[1] // 2
    label = int(labels[centre_y, centre_x])
    if label == 0:
        # Distance of every pixel to the centre, and the nearest labelled pixel within reach.
        yy, xx = np.indices(smooth.shape)
        distance_px = np.hypot(yy - centre_y, xx - centre_x)
        distance_px[labels == 0] = np.inf
        nearest = np.unravel_index(int(np.argmin(distance_px)), distance_px.shape)
        if distance_px[nearest] * mpp > CENTRE_SEARCH_UM:
            return np.zeros(smooth.shape, dtype=bool)
        label = int(labels[nearest])
    return ndimage.binary_fill_holes(labels == label)


def nucleus_features(rgb: NDArray[np.uint8], mpp: float) -> NDArray[np.float64]:
    """Describe the nucleus at the centre of an RGB window.

    Args:
        rgb: ``(H, W, 3)`` uint8 RGB window centred on a detection, about
            16 µm wide (64 px at 0.25 µm/px).
        mpp: resolution of the window in µm/px.

    Returns:
        ``(6,)`` float64 in the order of ``FEATURE_NAMES``: nuclear area in
        µm², eccentricity (0 for a circle, towards 1 for a line), solidity
        (area over convex hull area), and the mean, standard deviation and
        mean gradient magnitude (per µm) of H optical density inside the
        nucleus. When no nucleus is found, the shape values are 0 and the H
        values describe a disc of ``CENTRE_SEARCH_UM`` radius at the centre.
    """
    from skimage.filters import sobel
    from skimage.measure import regionprops

    h_od = hed_from_rgb(np.ascontiguousarray(rgb))[..., 0].astype(np.float64)
    mask = segment_nucleus(h_od, mpp)
    # Sobel responses are per pixel; dividing by mpp makes them per µm.
    gradient = sobel(h_od) / mpp

    if mask.any():
        (region,) = regionprops(mask.astype(np.uint8))
        area_um2 = float(region.area) * mpp**2
        eccentricity = float(region.eccentricity)
        solidity = float(region.solidity)
        inside = mask
    else:
        area_um2 = eccentricity = solidity = 0.0
        yy, xx = np.indices(h_od.shape)
        radius_px = CENTRE_SEARCH_UM / mpp
        inside = np.hypot(yy - h_od.shape[0] // 2, xx - h_od.shape[1] // 2) <= radius_px
    values = h_od[inside]
    return np.array(
        [area_um2, eccentricity, solidity, values.mean(), values.std(), gradient[inside].mean()],
        dtype=np.float64,
    )
