"""image_resize: an image scaled to fit inside, or exactly to, a requested width x height."""
