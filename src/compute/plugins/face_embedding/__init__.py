"""face_embedding: a 512-d ArcFace embedding of a face crop saved as `output/face_embedding.npy`,
with a sharpness `quality_score`."""
