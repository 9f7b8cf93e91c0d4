"""Allowed values of the choice parameters, kept free of heavy imports.

`fashiondvc.params` validates ``params.yaml`` in every stage; reading these from here instead of
from the torch-based modules keeps the ingest, augment and split stages from importing torch.
"""

#: ``featurize.precision`` and ``train.precision``.
PRECISIONS = ("bf16", "fp16", "fp32")
#: ``train.optimizer``.
OPTIMIZERS = ("adam", "sgd")
#: Conv layers of VGG-16: ``model.frozen_convs`` is in 0..N_CONVS.
N_CONVS = 13
#: ``model.weights`` keywords (anything else must be a state_dict file).
WEIGHT_CHOICES = ("imagenet", "random")
