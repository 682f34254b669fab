"""Metrics for generated images (paper Sec. 4.2): FID, KID, PSNR, SSIM and the segmentation score.

All metric functions take plain tensors, so they work with any data; :mod:`.samples` adapts the
project's sample-dict batches, and :class:`GenerationEvaluator` accumulates everything over an
evaluation loop. See ``docs/evaluation.md`` for the protocol and what is comparable with
published numbers.

Modules:
    statistics: streaming float64 mean/covariance (:class:`FeatureStatistics`).
    frechet: Frechet distance between Gaussians (FID's formula).
    kid: Kernel Inception Distance (unbiased MMD^2, cubic polynomial kernel).
    inception: the FID InceptionV3 (pytorch-fid weight names), loaded from a local file.
    features: :class:`FeatureExtractor` (standard Inception or any user network).
    image_quality: PSNR and SSIM.
    segmentation: confusion matrix, mIoU and pixel accuracy.
    segmenter: :class:`SmallSegmenter`, its training and safetensors I/O.
    network_files: the safetensors format and cache file names the small networks share.
    samples: helpers for sample-dict batches.
    evaluate: :func:`compute_fid` and :class:`GenerationEvaluator`.
    estimator: label estimators (:class:`LabelEstimator`, :class:`CannyEdgeEstimator`) and their protocol.
    estimator_training: training and caching the :class:`LabelEstimator` on the synthetic scenes.
    controllability: per-label consistency of generated images, where given and where missing.
"""

from .controllability import ConsistencyAccumulator, flatten_consistency, label_consistency
from .estimator import (
    CannyEdgeEstimator,
    LabelEstimator,
    LabelEstimatorProtocol,
    combine_estimators,
    load_label_estimator,
    save_label_estimator,
)
from .estimator_training import EstimatorRecipe, obtain_label_estimator, train_label_estimator
from .evaluate import FIDResult, GenerationEvaluator, compute_fid
from .features import FeatureExtractor, compute_statistics, fid_inception_extractor
from .frechet import fid_from_statistics, frechet_distance
from .image_quality import gaussian_window, psnr, ssim
from .inception import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILENAME,
    FID_WEIGHTS_URL,
    FIDInceptionV3,
    load_fid_inception,
    resolve_fid_weights,
)
from .kid import KIDResult, kernel_inception_distance, polynomial_kernel, unbiased_mmd2
from .samples import image_and_label_collate, split_batch
from .segmentation import ConfusionMatrix, SegmentationScore, predict_classes, segmentation_score
from .segmenter import SegmenterTraining, SmallSegmenter, load_segmenter, save_segmenter, train_segmenter
from .statistics import FeatureStatistics

__all__ = [
    "FeatureStatistics",
    "frechet_distance",
    "fid_from_statistics",
    "KIDResult",
    "kernel_inception_distance",
    "polynomial_kernel",
    "unbiased_mmd2",
    "FIDInceptionV3",
    "load_fid_inception",
    "resolve_fid_weights",
    "FID_WEIGHTS_FILENAME",
    "FID_WEIGHTS_URL",
    "FID_WEIGHTS_ENV",
    "FeatureExtractor",
    "fid_inception_extractor",
    "compute_statistics",
    "psnr",
    "ssim",
    "gaussian_window",
    "ConfusionMatrix",
    "SegmentationScore",
    "predict_classes",
    "segmentation_score",
    "SmallSegmenter",
    "SegmenterTraining",
    "train_segmenter",
    "save_segmenter",
    "load_segmenter",
    "split_batch",
    "image_and_label_collate",
    "FIDResult",
    "compute_fid",
    "GenerationEvaluator",
    "ConsistencyAccumulator",
    "label_consistency",
    "flatten_consistency",
    "LabelEstimator",
    "LabelEstimatorProtocol",
    "CannyEdgeEstimator",
    "combine_estimators",
    "save_label_estimator",
    "load_label_estimator",
    "EstimatorRecipe",
    "train_label_estimator",
    "obtain_label_estimator",
]
