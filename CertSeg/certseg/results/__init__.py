"""The files of a result folder besides DICOM: .seg.nrrd, the radius map, the preview, certificate arrays."""
