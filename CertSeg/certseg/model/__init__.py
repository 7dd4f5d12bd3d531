"""The networks as they are stored, checked and run: model cards, segmenter, denoiser, execution, OOD detector."""
