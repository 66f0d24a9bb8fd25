"""Inference loops with caches: image/video generation, text decoding, interleaved generation, pipeline."""
