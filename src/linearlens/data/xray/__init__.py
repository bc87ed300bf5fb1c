"""Chest X-ray data: loaders for NIH ChestX-ray14, RSNA Pneumonia and VinBigData / VinDr-CXR, the real NIH
subset (shared folder or embedded copy), patient-level splits, box-consistent augmentation and oversampling.
"""

from linearlens.data.xray.augment import AugmentedXrays, LightAugmentation, MinorityOversampler, augment_sample
from linearlens.data.xray.dataset import XraySet, assemble, load_nih, load_rsna, load_vindr
from linearlens.data.xray.nih import NIH_FINDINGS, read_nih
from linearlens.data.xray.pixels import read_dicom, read_png, read_radiograph
from linearlens.data.xray.records import Box, ImageRecord, XrayFormatError
from linearlens.data.xray.rsna import RSNA_FINDINGS, read_rsna
from linearlens.data.xray.splits import PatientFold, cross_validation, patient_folds
from linearlens.data.xray.subset import load_xray_subset, read_subset_table
from linearlens.data.xray.vindr import MERGE_POLICIES, VINDR_FINDINGS, read_vindr

__all__ = [
    "XraySet", "assemble", "load_nih", "load_rsna", "load_vindr", "NIH_FINDINGS", "RSNA_FINDINGS",
    "VINDR_FINDINGS", "MERGE_POLICIES", "read_nih", "read_rsna", "read_vindr", "read_dicom", "read_png",
    "read_radiograph", "Box", "ImageRecord", "XrayFormatError", "load_xray_subset", "read_subset_table",
    "PatientFold", "cross_validation", "patient_folds", "AugmentedXrays", "LightAugmentation",
    "MinorityOversampler", "augment_sample",
]
