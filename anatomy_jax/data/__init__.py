"""Datasets and batches: TFDS builders and image readers, leakage-free splits and case groups, the order of
examples and batches, and the preprocessing and augmentation that run on the device.

  dataset     `load_dataset(config)`: a dataset by name, read into host memory as uint8 arrays
  mednist     the MedNIST builder;  folder: a user's class folders;  images: PNG/JPEG/.../DICOM reading
  splits      deterministic, content- and group-disjoint train/validation/test splits
  cases       which images form one case (patient, study), and the warning when that is unknown
  pipeline    training subsets, epoch order, evaluation batches, background prefetch
  preprocess  DIGITS' transform, the training augmentations and test-time views (on the device)
"""

MAY_IMPORT = ('core',)

from anatomy_jax.data.dataset import BUILDERS, Dataset, Split, check_outside, load_dataset  # noqa: E402

__all__ = ['BUILDERS', 'Dataset', 'Split', 'check_outside', 'load_dataset']
