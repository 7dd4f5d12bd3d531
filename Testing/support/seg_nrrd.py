"""Reading a `.seg.nrrd` that slicerio returned, whether its segments share one layer or overlap in several."""

import numpy as np


def segment_mask(segmentation: dict, name: str) -> np.ndarray:
    """(I, J) mask of the named segment; slicerio puts the layer axis first when segments overlap."""
    segment = next(s for s in segmentation["segments"] if s["name"] == name)
    voxels = segmentation["voxels"]
    layer = voxels[segment.get("layer", 0)] if voxels.ndim == 4 else voxels
    return layer[:, :, 0] == segment["labelValue"]
