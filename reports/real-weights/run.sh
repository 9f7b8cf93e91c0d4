#!/usr/bin/env bash
# The real-weights results in this folder, in one command, from a clone with the archive at
# data/raw/ClothingAttributeDataset.zip and the Keras/Caffe ImageNet VGG-16 trunk at $WEIGHTS.
# Each block queues DVC experiments; `dvc queue start` runs them; the report collects them.
#   bash reports/real-weights/run.sh [table|leak|fc12|sweep|recipes|beyond|report] ...
set -euo pipefail
WEIGHTS=${WEIGHTS:-../shared/weights/vgg16_imagenet_features.pth}
REAL=(-S "model.weights=$WEIGHTS")

table() {   # g1..g14 at frozen_convs 13, the paper's 10 epochs, grouped split
  fashiondvc paper queue "${REAL[@]}" -S model.frozen_convs=13
}
leak() {    # g2, g7 and g8 on the paper's per-image split (copies of a photo on both sides)
  fashiondvc paper queue --rows g2,g7,g8 --suffix=-leak "${REAL[@]}" -S model.frozen_convs=13 \
    -S split.group_by_source=false
}
fc12() {    # g2 and g8 at the paper's own setting: conv5_3 trained with the head
  fashiondvc paper queue --rows g8 --suffix=-fc12 "${REAL[@]}" -S model.frozen_convs=12 \
    -S train.precision=bf16
  fashiondvc paper queue --rows g2 --suffix=-fc12 "${REAL[@]}" -S model.frozen_convs=12 \
    -S train.precision=bf16
}
sweep() {   # beyond the paper: every recipe on validation photos (15%), best epoch by val mAP
  local common=("${REAL[@]}" -S model.frozen_convs=13 -S split.val_size=0.15
                -S train.select=best -S train.epochs=20 -S evaluate.thresholds=tuned -S k=1)
  for labels in attrs20 colors11; do
    q() { local name=$1; shift; dvc exp run --queue -n "sweep-$labels-$name" \
            -S "labels=$labels" "${common[@]}" "$@" evaluate; }
    q flatten       -S lr=1e-4
    q gap           -S lr=1e-3 -S model.head=gap
    q multi         -S lr=1e-3 -S model.head=multiscale
    q multi-focal   -S lr=1e-3 -S model.head=multiscale -S train.loss=focal
    q multi-asl     -S lr=1e-3 -S model.head=multiscale -S train.loss=asl -S train.gamma=4
    q multi-freq    -S lr=1e-3 -S model.head=multiscale -S train.pos_weight=frequency
    q multi-pca     -S lr=1e-3 -S model.head=multiscale -S train.label_pca=8
  done
}
recipes() { # issue 20: colour histograms, region pooling, flip TTA, on top of the last recipe
  local common=("${REAL[@]}" -S model.frozen_convs=13 -S featurize.mirror=true
                -S split.val_size=0.15 -S train.select=best -S train.epochs=20
                -S evaluate.thresholds=tuned -S k=1 -S lr=1e-3 -S train.loss=asl
                -S train.gamma=4 -S train.pos_weight=frequency)
  for labels in attrs20 colors11; do
    q() { local name=$1; shift; dvc exp run --queue -n "recipe-$labels-$name" \
            -S "labels=$labels" "${common[@]}" "$@" evaluate; }
    q side          -S model.head=multiscale -S "model.inputs=[trunk,side]"
    q colour        -S model.head=multiscale -S "model.inputs=[trunk,side,colour]"
    q regions       -S model.head=regions -S "model.inputs=[trunk,side,colour]"
    q regions-flip  -S model.head=regions -S "model.inputs=[trunk,side,colour]" \
                    -S evaluate.tta=flip
    q colour-flip   -S model.head=multiscale -S "model.inputs=[trunk,side,colour]" \
                    -S evaluate.tta=flip
  done
}
beyond() {  # the recipe chosen on validation (fashiondvc/paper.py BEYOND), 3 seeds, judged once on test
  fashiondvc paper queue --beyond --seeds 3 "${REAL[@]}"
}
report() {
  fashiondvc paper report --out reports/real-weights
}

for step in "${@:-table}"; do "$step"; done
echo "now: dvc queue start -j 1 && dvc queue status; then: bash $0 report"
