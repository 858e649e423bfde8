"""Key names and defaults shared by the whole package."""

from __future__ import annotations

from typing import Final


class Key:
    """Names of the AnnData slots that st-hist2st reads and writes."""

    spatial: Final = "spatial"
    connectivities: Final = "spatial_connectivities"
    library: Final = "library_id"
    array_row: Final = "array_row"
    array_col: Final = "array_col"
    highly_variable: Final = "highly_variable"
    prediction: Final = "hist2st"
    images: Final = "images"
    scalefactors: Final = "scalefactors"


#: Side of the square patch the model sees, in pixels (the paper's ``fig_size``).
PATCH_SIZE: Final = 112
#: Fill value for the parts of a patch that fall outside the image (white glass).
PAD_VALUE: Final = 255
#: Fraction of padding above which a patch counts as mostly padding.
MOSTLY_PADDED: Final = 0.5
#: Environment variable that points at the her2st data.
DATA_ENV: Final = "HIST2ST_DATA"
#: Spots per window of prediction, and most spots per training step; chosen by measurement (see the
#: documentation page on large sections).
DEFAULT_MAX_SPOTS: Final = 1024
