"""dino_embedding: a 384-d DINOv2 ViT-S/14 image embedding saved as `output/dino_embedding.npy`."""
