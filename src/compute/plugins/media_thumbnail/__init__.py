"""media_thumbnail: an image made small, or a 4x4 sheet of a video's keyframes (`output/thumbnail.jpg`)."""
