"""exif: a file's metadata by ExifTool tag name (Make, DateTimeOriginal, GPSLatitude...) and typed fields."""
