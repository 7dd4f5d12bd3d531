"""Images that are not chest radiographs, for the input-check tests and benchmark: the research layer's
synthetic negatives (certseg.research.negatives) under the names the tests use."""

from certseg.research.negatives import (SYNTHETIC, abdomen_view, ct_slice, inverted, model_space,  # noqa: F401
                                        natural_texture, pure_noise)

OUT_OF_DOMAIN = SYNTHETIC
