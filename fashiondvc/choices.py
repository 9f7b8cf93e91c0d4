"""Allowed values of the choice parameters, kept free of heavy imports.

`fashiondvc.params` validates ``params.yaml`` in every stage; reading these from here instead of
from the torch-based modules keeps the ingest, augment and split stages from importing torch.
"""

#: ``train.precision``.
PRECISIONS = ("bf16", "fp16", "fp32")
#: ``featurize.precision``: those, or the int8 frozen trunk (`fashiondvc.quantize`).
FEATURIZE_PRECISIONS = (*PRECISIONS, "int8")
#: ``train.optimizer``.
OPTIMIZERS = ("adam", "sgd")
#: ``model.backbone`` -> ``(knob, units)``: the parameter that says where its frozen part ends,
#: and how many units (conv layers for VGG-16, stages for the others) it can freeze. The
#: networks themselves live in `fashiondvc.backbones`, one entry each.
BACKBONES = {
    "vgg16": ("model.frozen_convs", 13),        # the paper's: conv1_1 .. conv5_3
    "resnet50": ("model.frozen_stages", 5),     # stem, layer1 .. layer4
    "convnext_tiny": ("model.frozen_stages", 5),  # stem, stage1 .. stage4
}
#: Conv layers of VGG-16: ``model.frozen_convs`` is in 0..N_CONVS.
N_CONVS = BACKBONES["vgg16"][1]
#: ``model.weights`` keywords (anything else must be a state_dict file).
WEIGHT_CHOICES = ("imagenet", "random")
#: ``model.head``: the paper's flatten head, global-average-pooled, pooled at every scale, or
#: that plus pooled regions (bands, quadrants, a centre prior: the person over the background).
HEADS = ("flatten", "gap", "multiscale", "regions")
#: Named features the feature extractor returns (`fashiondvc.features.FEATURE_KINDS`);
#: ``model.inputs`` picks the ones a head takes (``trunk`` always).
FEATURE_KINDS = ("trunk", "side", "colour")
#: ``train.loss``: weighted binary cross-entropy (the paper), focal, asymmetric.
LOSSES = ("wbce", "focal", "asl")
#: ``train.pos_weight``: ``k`` for every label (the paper), or per label from its frequency.
POS_WEIGHTS = ("k", "frequency")
#: ``train.select``: the last epoch (the paper), or the best by validation mAP.
SELECTIONS = ("last", "best")
#: ``evaluate.thresholds``: ``evaluate.threshold`` for every label, or tuned per label.
THRESHOLDS = ("fixed", "tuned")
#: ``evaluate.tta``: no test-time augmentation, or the mean over each image and its mirror.
TTAS = ("none", "flip")
#: ``search.embedding``: what search ranks by: the head's hidden layer, or the predicted
#: attributes (probabilities centred on 0.5).
EMBEDDINGS = ("hidden", "attributes")
