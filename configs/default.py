"""Defaults for every field; the per-network configs import this and override the paper's settings.

  python -m anatomy_jax.main --config=configs/proposed.py --workdir=workdirs/proposed

Any field can be overridden on the command line, e.g. `--config.num_epochs=5`; an unknown field is an error.
Every config takes two variants: `:quick` (2 epochs on 5% of the training images: see it work on a CPU in a few
minutes) and `:tiny` (2 epochs of batch 8, for small test folders), e.g. `--config=configs/proposed.py:quick`.
Fields are checked before anything is loaded (anatomy_jax/core/config.py).
"""

import ml_collections

VARIANTS = {'quick': '2 epochs on 5% of the training images: a first run on a CPU in a few minutes',
            'tiny': '2 epochs of batch 8, progress every step: a smoke test for small folders'}


def get_config(variant_name: str = ''):
  """Every field's default (a network's own config file overrides the paper's settings)."""
  c = ml_collections.ConfigDict()
  # Network and data.
  c.model = 'proposed'  # Network name: lenet, alexnet, googlenet or proposed (anatomy_jax.models.MODELS).
  c.model_kwargs = ml_collections.ConfigDict()  # The network's own options, e.g. the proposed CNN's open choices.
  c.dtype = 'float32'  # Compute dtype (float32 or bfloat16); parameters and optimizer state stay float32.
  c.dataset = 'mednist'  # Dataset name: mednist or folder (a user's class folders in manual_dir).
  c.data_dir = ''  # Where TFDS keeps prepared datasets ('' = ~/tensorflow_datasets).
  c.manual_dir = ''  # Folder holding MedNIST.tar.gz (offline) or, for dataset=folder, the user's images.
  c.allow_download = True  # Download MedNIST when manual_dir does not hold it.
  c.train_fraction = 1.0  # Fraction of the training split used (stratified, fixed by seed): learning curves.
  # Folder datasets (dataset=folder); see anatomy_jax/data/folder.py (cases: anatomy_jax/data/cases.py).
  c.folder = ml_collections.ConfigDict()
  c.folder.image_size = 256  # Stored square side: images are fitted inside it, aspect kept, padded.
  c.folder.channels = 1  # 1: greyscale (colour images converted), 3: RGB (greyscale images repeated).
  c.folder.group_csv = ''  # Optional CSV `path,group` keeping each patient/case in one split.
  c.folder.group_regex = ''  # Optional regex on the relative path; its first group (or match) names the group.
  c.folder.group_by = ''  # Or 'subfolder' (<class>/<case>/<files>) or 'filename' (the name without its number).
  c.folder.test_fraction = 0.1  # Share of images in test when the folder has no test/ subfolder.
  c.folder.val_fraction = 0.2  # Share of the remaining images in validation when there is no val/ subfolder.
  c.folder.max_pixels = 100_000_000  # Larger images (width x height) are skipped and reported, not decoded.
  c.folder.num_folds = 0  # K-fold cross-validation by case (0: off): test = fold `fold`; see experiments/cross_validate.
  c.folder.fold = 0  # Which of the num_folds folds is the test split (0 .. num_folds - 1).
  c.folder.fold_seed = 0  # Seeds how cases are dealt into folds (the same folds for every training seed).
  # Preprocessing, as DIGITS does it (done on the device inside the jitted step).
  c.image_size = 256  # Images are resized to this square before cropping (DIGITS stores 256x256).
  c.crop_size = 227  # Random crop in training, centre crop in evaluation; must equal the network's input size.
  c.mirror = True  # Random horizontal flips in training.
  c.mean_subtraction = 'image'  # Subtract the training set's mean 'image', its mean 'pixel', or 'none'.
  c.scale = 1.0  # Multiply pixels by this after mean subtraction (LeNet: 0.0125).
  # Extra augmentation for small datasets (all off in the paper's protocol; see configs/proposed_finetune.py).
  c.augment = ml_collections.ConfigDict()
  c.augment.resized_crop = 0.0  # > 0: random crops of this to 100% of the image area (aspect 3:4-4:3), resized.
  c.augment.rotation = 0.0  # Random rotations of up to this many degrees either way.
  c.augment.brightness = 0.0  # Random brightness shifts of up to this fraction of the pixel range.
  c.augment.contrast = 0.0  # Random contrast factors in [1 - this, 1 + this].
  c.augment.zoom = (1.0, 1.0)  # Random magnification in [lo, hi], log-uniform; lo < 1 zooms out (pads with the mean).
  c.augment.shift = 0.0  # Random translation of up to this fraction of the image side, each axis, either way.
  c.augment.mixup = 0.0  # > 0: blend neighbouring training images and their targets, weight ~ Beta(this, this).
  # Solver: Caffe SGD as DIGITS runs it (or AdamW).
  c.optimizer = 'sgd'  # 'sgd' (Caffe's SGD with momentum, below) or 'adamw' (optax; decoupled decay on kernels).
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
  c.lr_schedule = 'step'  # 'step' (DIGITS' step-down, above) or 'cosine' (to 0 at the end, after warm-up).
  c.warmup_epochs = 0.0  # Linear warm-up from 0 over this many epochs (both schedules).
  c.label_smoothing = 0.0  # Mix this much of a uniform distribution into the training targets.
  c.class_weights = 'none'  # 'balanced': weight each class's loss by 1 / its share of the training images.
  c.early_stopping_epochs = 0  # Stop when validation accuracy has not improved for this many epochs (0: never).
  # Starting from a trained run (fine-tuning).
  c.init_from = ''  # A training run's workdir (its best checkpoint) or a checkpoints/best|latest directory.
  c.body_lr_mult = 1.0  # Learning-rate multiple for everything but the classifier(s), with init_from.
  c.freeze_body_epochs = 0.0  # Train only the classifier(s) for this many epochs first, with init_from.
  c.seed = 0  # Seeds initialisation, data order, augmentation and dropout.
  # Running.
  c.parallelism = 'jit'  # 'jit' (mesh + shardings) or 'pmap'.
  c.data_on_device = 'auto'  # Keep the dataset on the accelerator: 'auto' (when it fits), 'yes' or 'no'.
  c.steps_per_dispatch = 0  # Training steps per compiled call (same results); 0: 1 on CPUs, 8 on accelerators.
  c.compilation_cache_dir = ''  # JAX's persistent compilation cache: '' = ~/.cache/anatomy_jax/jax, 'off' = none.
  c.checkpoint_every_minutes = 10.0  # Also checkpoint this often inside an epoch (0: only at epoch ends).
  # Also checkpoint every this many steps inside an epoch (0: never); with steps_per_dispatch k > 1, at the end of
  # the first dispatch that reaches or passes each multiple (k=8, 10: steps 16, 24, 32, 40, ...), on every process.
  c.checkpoint_every_steps = 0
  c.keep_checkpoints = 3  # Latest checkpoints kept, at least 1 (the best-by-validation one is kept besides).
  # Progress line (loss, images/s, ETA) every this many steps (with k > 1 steps per dispatch: after the dispatch
  # that reaches or passes each multiple; several processes agree on decisions there and at epoch ends)...
  c.log_every_steps = 50
  c.log_every_seconds = 30.0  # ...or after this many seconds, whichever comes first.
  c.plots = True  # Write training-curve PNGs at the end of the run.
  # Resuming with settings that change what is computed (learning rate, preprocessing, ...) is refused unless
  # this is True; accepted changes are recorded in results.json with the step they took effect.
  c.accept_config_changes = False
  return variant(c, variant_name)


def variant(c, name: str):
  """Apply a named variant (see VARIANTS); an unknown name is an error listing the valid ones."""
  if not name:
    return c
  if name not in VARIANTS:
    raise ValueError(f'unknown config variant {name!r}; valid: {", ".join(VARIANTS)}')
  if name == 'quick':
    c.num_epochs = 2
    c.train_fraction = 0.05
    c.log_every_steps = 5
  else:
    c.num_epochs = 2
    c.batch_size = 8
    c.eval_batch_size = 8
    c.log_every_steps = 1
  return c
