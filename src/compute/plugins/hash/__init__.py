"""hash: a file's digest (sha512 or md5) and, for images, perceptual hashes (phash, dhash, ahash, whash)."""
