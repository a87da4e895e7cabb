"""clip_embedding: a 512-d MobileCLIP-S2 image embedding saved as `output/clip_embedding.npy`."""
