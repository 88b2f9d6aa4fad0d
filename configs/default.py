"""Defaults for every field; the per-network configs import this and override the paper's settings.

  python -m anatomy_jax.main --config=configs/proposed.py --workdir=/tmp/proposed

Any field can be overridden on the command line, e.g. `--config.num_epochs=5`; an unknown field is an error.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # Network and data.
  c.model = 'proposed'  # Network name: lenet, alexnet, googlenet or proposed (anatomy_jax.models.MODELS).
  c.model_kwargs = ml_collections.ConfigDict()  # Extra module fields, e.g. the proposed CNN's open choices.
  c.dtype = 'float32'  # Compute dtype (float32 or bfloat16); parameters and optimizer state stay float32.
  c.dataset = 'mednist'  # Dataset name: mednist or folder (a user's class folders in manual_dir).
  c.data_dir = ''  # Where TFDS writes the prepared dataset ('' = ~/tensorflow_datasets).
  c.manual_dir = ''  # Folder holding MedNIST.tar.gz (offline) or, for dataset=folder, the user's images.
  c.allow_download = True  # Download MedNIST when manual_dir does not hold it.
  c.train_fraction = 1.0  # Fraction of the training split used (stratified, fixed by seed): learning curves.
  # Folder datasets (dataset=folder); see anatomy_jax/datasets/folder.py.
  c.folder = ml_collections.ConfigDict()
  c.folder.image_size = 256  # Stored square side: images are fitted inside it, aspect kept, padded.
  c.folder.channels = 1  # 1: greyscale (colour images converted), 3: RGB (greyscale images repeated).
  c.folder.group_csv = ''  # Optional CSV `path,group` keeping each patient/case in one split.
  c.folder.group_regex = ''  # Optional regex on the relative path; its first group (or match) names the group.
  c.folder.test_fraction = 0.1  # Share of images in test when the folder has no test/ subfolder.
  c.folder.val_fraction = 0.2  # Share of the remaining images in validation when there is no val/ subfolder.
  # Preprocessing, as DIGITS does it (done on the device inside the jitted step).
  c.image_size = 256  # Images are resized to this square before cropping (DIGITS stores 256x256).
  c.crop_size = 227  # Random crop in training, centre crop in evaluation; must equal the network's input size.
  c.mirror = True  # Random horizontal flips in training.
  c.mean_subtraction = 'image'  # Subtract the training set's mean 'image', its mean 'pixel', or 'none'.
  c.scale = 1.0  # Multiply pixels by this after mean subtraction (LeNet: 0.0125).
  # Solver: Caffe SGD as DIGITS runs it.
  c.num_epochs = 30  # Training epochs.
  c.batch_size = 100  # Global training batch, split over all devices of all processes.
  c.eval_batch_size = 100  # Global evaluation batch (padded and masked: every example counts once).
  c.learning_rate = 0.01  # Base learning rate.
  c.lr_step_fraction = 0.33  # DIGITS' step-down schedule: multiply by lr_gamma every this fraction of training.
  c.lr_gamma = 0.1  # Step-down factor.
  c.momentum = 0.9  # SGD momentum.
  c.weight_decay = 5e-4  # L2 weight decay on weights (Caffe's weight_decay).
  c.bias_lr_mult = 2.0  # Biases learn at this multiple of the rate (Caffe lr_mult: 2).
  c.bias_decay_mult = 0.0  # Biases' weight decay multiple (Caffe decay_mult: 0).
  c.aux_loss_weight = 0.3  # GoogLeNet's auxiliary heads' loss weight.
  c.seed = 0  # Seeds initialisation, data order, augmentation and dropout.
  # Running.
  c.parallelism = 'jit'  # 'jit' (mesh + shardings) or 'pmap'.
  c.data_on_device = 'auto'  # Keep the dataset on the accelerator: 'auto' (when it fits), 'yes' or 'no'.
  c.checkpoint_every_steps = 0  # Also checkpoint every this many steps inside an epoch (0: epoch ends only).
  c.keep_checkpoints = 3  # Latest checkpoints kept (the best-by-validation one is kept besides).
  c.log_every_steps = 50  # Progress line (images/s, ETA) every this many steps.
  c.plots = True  # Write training-curve PNGs at the end of the run.
  return c


def tiny(c):
  """A smoke-test variant of any config: 2 epochs of batch 8 (select with `--config=configs/X.py:tiny`)."""
  c.num_epochs = 2
  c.batch_size = 8
  c.eval_batch_size = 8
  c.log_every_steps = 1
  return c
