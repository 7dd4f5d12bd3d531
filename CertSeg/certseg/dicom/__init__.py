"""DICOM in and out: reading radiographs, writing SEG and SR, the coded vocabulary.  Never imports torch."""
