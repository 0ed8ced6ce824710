"""CLIP: the model, its dense one-pass encoding with patch severance, and cached text embeddings."""
