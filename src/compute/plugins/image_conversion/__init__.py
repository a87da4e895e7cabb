"""image_conversion: an image in another format (CL Server's `params.output_path` / `params.format`)."""
